"""Sweep files and the quick form: variants, seeds, one budget, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from auxilia.compare.spec import (
    SweepError,
    load_sweep,
    plan_sweep,
    quick_sweep,
    split_methods,
    sweep_folder,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_split_methods_keeps_combinations_together() -> None:
    assert split_methods("supervised,cds,[cds, deep_supervision]") == [
        "supervised", "cds", "[cds, deep_supervision]"]
    assert split_methods("[{name: cds, weight: 0.5}],byot") == ["[{name: cds, weight: 0.5}]",
                                                               "byot"]
    with pytest.raises(SweepError, match="separated by commas"):
        split_methods("cds,[byot")
    with pytest.raises(SweepError):
        split_methods("cds,,byot")


def test_quick_sweep_plans_seed_major_runs_in_their_folders(tmp_path: Path) -> None:
    sweep = quick_sweep(None, "supervised,[deep_supervision]", 2,
                        [f"run.dir={tmp_path}", "train.epochs=1"], name="q")
    plans = plan_sweep(sweep)
    assert [p.key for p in plans] == ["supervised/seed0", "deep_supervision/seed0",
                                      "supervised/seed1", "deep_supervision/seed1"]
    assert sweep_folder(sweep) == tmp_path / "q"
    assert plans[1].folder.path == tmp_path / "q" / "deep_supervision" / "seed0"
    assert [m.name for m in plans[1].config.method] == ["deep_supervision"]
    assert plans[2].config.seed == 1 and plans[2].config.run.progress == "off"
    assert all(p.status == "trained" for p in plans)


def test_sweep_file_with_budget_and_variant_overrides(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", "train: {epochs: 30}\noptim: {lr: 0.05}\n")
    path = _write(tmp_path / "s.yaml", f"""
name: ablation
base: base.yaml
overrides: [run.dir={tmp_path / 'runs'}]
seeds: 2
budget: {{steps: 7}}
variants:
  - {{label: plain, method: supervised}}
  - label: lower lr
    method: supervised
    overrides: [optim.lr=0.01]
""")
    sweep = load_sweep(path)
    assert sweep.seeds == (0, 1) and sweep.baseline_label == "plain"
    plans = plan_sweep(sweep)
    assert {p.config.train.steps for p in plans} == {7}
    assert [p.config.optim.lr for p in plans[:2]] == [0.05, 0.01]
    assert plans[1].variant.folder == "lower-lr"


@pytest.mark.parametrize(("override", "match"), [
    ("train.epochs=3", "is the budget"),
    ("data.batch_size=8", "is the budget"),
    ("seed=4", "sets the seed"),
    ("run.name=x", "names every run folder"),
])
def test_a_variant_cannot_change_the_budget_the_seed_or_its_folder(tmp_path: Path,
                                                                   override: str,
                                                                   match: str) -> None:
    path = _write(tmp_path / "s.yaml", f"""
name: s
variants:
  - {{label: a, method: supervised, overrides: ["{override}"]}}
""")
    with pytest.raises(SweepError, match=match):
        load_sweep(path)


def test_file_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    bad = _write(tmp_path / "bad.yaml", "name: s\nvariantz: []\n")
    with pytest.raises(SweepError, match="variantz"):
        load_sweep(bad)
    twice = _write(tmp_path / "twice.yaml",
                   "name: s\nvariants: [{label: a}, {label: a}]\n")
    with pytest.raises(SweepError, match="used twice"):
        load_sweep(twice)
    baseline = _write(tmp_path / "b.yaml", "name: s\nbaseline: c\nvariants: [{label: a}]\n")
    with pytest.raises(SweepError, match="baseline 'c' is not a variant"):
        load_sweep(baseline)
    results = _write(tmp_path / "r.yaml", "name: s\nvariants: [{label: results}]\n")
    with pytest.raises(SweepError, match="report folder"):
        load_sweep(results)


def test_a_bad_method_is_refused_before_anything_trains(tmp_path: Path) -> None:
    sweep = quick_sweep(None, "supervised,no_such_method", 1, [f"run.dir={tmp_path}"])
    with pytest.raises(SweepError, match="no_such_method"):
        plan_sweep(sweep)
    assert not (tmp_path / "compare-defaults").exists()
