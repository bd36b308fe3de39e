from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from auxilia.config import ConfigError, load_config, parse_config


def test_defaults_are_a_supervised_digits_run() -> None:
    config = load_config()
    assert config.data.source == "digits"
    assert [m.name for m in config.method] == ["supervised"]
    assert (config.model.name, config.data.image_size) == ("auto", "auto")
    from auxilia.engine.auto import resolve

    resolved, _ = resolve(config)  # the name is fixed when auto is resolved, as a run does
    assert resolved.run_name() == "digits-small_cnn-supervised-s0"


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 0.2}\nmethod: deep_supervision\n")
    config = load_config(path, ["optim.lr=1e-3", "method=[{name: deep_supervision, "
                                "exits: {s1: 0.5}}]", "schedule.milestones=[10, 20]"])
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.method[0].exits == {"s1": 0.5}
    assert config.schedule.milestones == [10, 20]


def test_unknown_key_names_the_nearest_valid_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.batchsize=3"])
    assert "data.batchsize" in str(err.value)
    assert "did you mean 'batch_size'" in str(err.value)


def test_unknown_section_is_refused() -> None:
    with pytest.raises(ConfigError, match="optimizer: unknown key.*did you mean 'optim'"):
        parse_config({"optimizer": {"lr": 0.1}})


def test_wrong_type_names_path_and_expected_type() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.lr=fast"])
    message = str(err.value)
    assert "optim.lr" in message and "float" in message and "'fast'" in message


def test_errors_are_collected_together() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epochs=x", "model.nmae=resnet20"])
    assert "train.epochs" in str(err.value) and "model.nmae" in str(err.value)


def test_unknown_method_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown method 'deep_supervison'.*deep_supervision"):
        load_config(None, ["method=deep_supervison"])


def test_method_parameters_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"method\[0\]\.exit: unknown key.*'exits'"):
        load_config(None, ["method=[{name: deep_supervision, exit: {s3: 0.7}}]"])


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_every_shipped_config_validates() -> None:
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        if "rounds:" in path.read_text():  # a pipeline of runs: every round's config validates
            from auxilia.engine.rounds import load_pipeline, plan_pipeline

            assert plan_pipeline(load_pipeline(path))
        else:
            load_config(path)


@pytest.mark.parametrize("tag", ["!!python/name:os.system", "!!python/object/new:os.system "
                                 "['echo pwned']", "!!python/module:os"])
def test_python_tags_are_refused(tmp_path: Path, tag: str) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(f"seed: {tag}\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml: not valid YAML"):
        load_config(path)
    config = load_config(None, [f"data.root={tag}"])  # an override stays a plain string
    assert config.data.root == tag


def _laughs() -> str:
    """Billion laughs in one flow sequence: nine aliases of nine aliases ... (9**10 strings
    once expanded, a few hundred bytes as text)."""
    levels = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return f"[{', '.join(levels)}, [{', '.join(['*a8'] * 9)}]]"


@pytest.mark.parametrize(("key", "yaml_text"), [
    ("seed", "seed: {bomb}"), ("model", "model:\n  kwargs: {{k: {bomb}}}"),
    ("method", "method: {bomb}")])
def test_alias_bomb_is_refused_quickly(tmp_path: Path, key: str, yaml_text: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(yaml_text.format(bomb=_laughs()) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"\n  {key}: the value holds more than 100,000"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"\n  {key}: the value holds more than 100,000"):
        load_config(None, [f"{key}={_laughs()}"])
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("flow", ["[" * 3000 + "]" * 3000, "{a: " * 3000 + "1" + "}" * 3000])
def test_deep_nesting_is_refused(tmp_path: Path, flow: str) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(f"seed: {flow}\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: not valid YAML: nested too deeply"):
        load_config(path)
    with pytest.raises(ConfigError, match="'seed': the value is nested too deeply"):
        load_config(None, [f"seed={flow}"])
    with pytest.raises(ConfigError, match="seed: the value is nested more than 64 levels"):
        load_config(None, ["seed=" + "[" * 80 + "]" * 80])


@pytest.mark.parametrize("value", ["[1]", "{a: 1}", "3"])
def test_a_method_name_that_is_not_a_string_is_named(value: str) -> None:
    with pytest.raises(ConfigError, match=r"method\.name: expected a method name, got"):
        load_config(None, [f"method.name={value}"])
    with pytest.raises(ConfigError, match=r"method\[0\]\.name: expected a method name"):
        load_config(None, [f"method=[{{name: {value}}}]"])


@pytest.mark.parametrize("item", ["optim.lr=.inf", "train.epochs=.inf", "optim.grad_clip=.nan",
                                  "optim.betas=[.nan, 0.9]"])
def test_non_finite_numbers_are_refused(item: str) -> None:
    key = item.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}(\[0\])?: must be a finite number"):
        load_config(None, [item])
