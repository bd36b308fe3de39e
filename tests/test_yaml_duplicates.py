"""Every YAML auxilia reads refuses a key written twice in one mapping (PyYAML keeps the last
one silently): configs, sweep and pipeline files, ``key=value`` overrides, ``--methods`` items.
Merge keys (``<<:``) still work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from auxilia.cli import main
from auxilia.compare.collect import _read_yaml as read_run_yaml
from auxilia.compare.spec import SweepError, load_sweep, quick_sweep
from auxilia.config import ConfigError, load_config
from auxilia.engine.rounds import load_pipeline
from auxilia.yamlio import DuplicateKeyError, load

SRC = Path(__file__).resolve().parents[1] / "src" / "auxilia"


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_top_level_duplicate_names_the_file_key_and_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "seed: 1\ntrain: {steps: 2}\nseed: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: key 'seed' appears twice in one mapping (line 1 and "
                              "line 3); keep one")


@pytest.mark.parametrize(("text", "key", "where"), [
    ("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n", "lr", "line 2 and line 4"),
    ("model:\n  kwargs:\n    a: {b: 1, b: 2}\n", "b", "line 3, columns 9 and 15"),
    ("method:\n  - name: fixmatch\n    mu: 2\n    mu: 7\n", "mu", "line 3 and line 4"),
    ("data:\n  csv:\n    train: a.csv\n    train: b.csv\n", "train", "line 3 and line 4"),
])
def test_a_nested_duplicate_is_refused(tmp_path: Path, text: str, key: str, where: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(
            f"{path}: key {key!r} appears twice in one mapping ({where}); keep one")):
        load_config(path)


def test_merge_keys_still_work(tmp_path: Path) -> None:
    """An explicit key may override a merged one, and merged maps may share keys; a map that
    is merged somewhere else before it is built itself is not mistaken for a duplicate."""
    path = _write(tmp_path, (
        "defs:\n"
        "  base: &base {lr: 0.1, momentum: 0.5}\n"
        "  nested:\n"
        "    mid: &mid {<<: *base, lr: 0.2}\n"
        "  other: &other {lr: 0.3, nesterov: true}\n"
        "optim:\n"
        "  <<: [*mid, *other]\n"
        "  momentum: 0.8\n"))
    raw = yaml.safe_load(path.read_text())
    assert load(path.read_text()) == raw  # the same result as PyYAML's safe loader
    optim = raw["optim"]
    assert optim == {"lr": 0.2, "momentum": 0.8, "nesterov": True}
    config = load_config(None, [f"optim={optim}"])
    assert (config.optim.lr, config.optim.momentum, config.optim.nesterov) == (0.2, 0.8, True)
    path.write_text("base: &b {x: 1}\nc:\n  <<: *b\n  y: 1\n  y: 2\n")
    with pytest.raises(ConfigError, match=r"key 'y' appears twice in one mapping \(line 4 and "
                                          r"line 5\)"):
        load_config(path)


def test_the_error_is_a_yaml_error_with_a_one_line_message() -> None:
    with pytest.raises(yaml.YAMLError) as err:
        load("a: 1\nb:\n  - {c: 1, c: 2}\n")
    assert isinstance(err.value, DuplicateKeyError) and err.value.key == "c"
    assert str(err.value) == ("key 'c' appears twice in one mapping (line 3, columns 6 and 12); "
                              "keep one")
    with pytest.raises(DuplicateKeyError, match="key 1 appears twice"):
        load("1: a\n0x1: b\n")  # two spellings of one key


@pytest.mark.parametrize(("item", "key"), [("optim={lr: 0.1, lr: 0.2}", "lr"),
                                           ("method={name: fixmatch, mu: 2, mu: 3}", "mu"),
                                           ("data={csv: {train: a, train: b}}", "train")])
def test_a_duplicate_in_an_override_value_is_refused(item: str, key: str) -> None:
    name = item.partition("=")[0]
    with pytest.raises(ConfigError, match=re.escape(f"override {name!r}: key {key!r} appears "
                                                    "twice in one mapping (line 1, columns ")):
        load_config(None, [item])


def test_a_duplicate_in_a_sweep_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, ("name: s\nseeds: 1\nvariants:\n  - label: a\n    method: supervised"
                             "\n    label: b\n"), "sweep.yaml")
    with pytest.raises(ConfigError, match=re.escape(
            f"{path}: key 'label' appears twice in one mapping (line 4 and line 6); keep one")):
        load_sweep(path)


def test_a_duplicate_in_a_pipeline_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, ("name: p\nrounds:\n  - name: teacher\n  - name: student\n"
                             "    overrides: [train.steps=1]\n    name: again\n"), "pipe.yaml")
    with pytest.raises(ConfigError, match=re.escape(
            f"{path}: key 'name' appears twice in one mapping (line 4 and line 6); keep one")):
        load_pipeline(path)


def test_a_duplicate_in_a_methods_item_is_refused() -> None:
    with pytest.raises(SweepError, match=re.escape(
            "--methods item '{name: fixmatch, mu: 2, mu: 3}': key 'mu' appears twice in one "
            "mapping (line 1, columns 18 and 25); keep one")):
        quick_sweep(None, "supervised,{name: fixmatch, mu: 2, mu: 3}", seeds=1)


def test_a_run_folders_config_with_a_duplicate_is_not_read_as_the_last_value(tmp_path: Path
                                                                            ) -> None:
    """``auxilia report`` reads run folders' ``config.yaml`` leniently (unreadable: empty);
    a duplicate is unreadable, not the last value."""
    path = _write(tmp_path, "seed: 1\nseed: 2\n")
    assert read_run_yaml(path) == {}
    assert read_run_yaml(_write(tmp_path, "seed: 2\n")) == {"seed": 2}


def test_cli_reports_a_duplicate_in_one_error_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, f"run: {{dir: {tmp_path / 'runs'}}}\noptim:\n  lr: 0.1\n"
                            "  lr: 0.2\n")
    assert main(["train", str(path)]) == 2
    assert capsys.readouterr().err == (f"error: {path}: key 'lr' appears twice in one mapping "
                                       "(line 3 and line 4); keep one\n")
    assert main(["train", f"run.dir={tmp_path / 'runs'}", "optim={lr: 0.1, lr: 0.2}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: override 'optim': key 'lr' appears twice") and err.count(
        "\n") == 1
    assert not (tmp_path / "runs").exists()


def test_no_reader_parses_yaml_with_another_loader() -> None:
    """Every YAML reader goes through :mod:`auxilia.yamlio` (a new ``yaml.safe_load`` would
    bring back last-one-wins)."""
    pattern = re.compile(r"yaml\.(safe_load|load|full_load|unsafe_load|safe_load_all|load_all)\(")
    offenders = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py") if p.name != "yamlio.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
