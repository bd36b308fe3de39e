"""``auxilia scale``: the compound-scaling grid (alpha * beta^2 * gamma^2 ~ 2) trained as an
``auxilia compare`` sweep at a tiny budget, resumed, and reported as a grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from auxilia.cli import main as cli
from auxilia.compare.collect import collect
from auxilia.compare.runner import run_sweep
from auxilia.compare.scale_search import (
    BASELINE,
    Candidate,
    candidates,
    grid_table,
    parse_budget,
    scale_sweep,
)
from auxilia.compare.spec import SweepError, plan_sweep

TINY = ["data.source=digits", "model.name=resnet8", "data.train_subset=200",
        "run.tensorboard=false", "run.plot=false", "train.eval_every=10"]


def test_the_grid_keeps_the_constraint() -> None:
    grid = candidates(step=0.05, target=2.0, tolerance=0.1)
    assert all(abs(c.flops - 2.0) <= 0.1 + 1e-9 for c in grid)
    assert all(min(c.alpha, c.beta, c.gamma) >= 1 for c in grid)
    assert Candidate(1.2, 1.1, 1.15) in grid  # the paper's point
    assert len({c.label for c in grid}) == len(grid)
    assert len(candidates(step=0.1, tolerance=0.05)) < len(candidates(step=0.1, tolerance=0.1))
    with pytest.raises(SweepError, match="finer --step"):
        candidates(step=0.5, target=2.2, tolerance=0.01)


def test_budget_is_parsed_as_a_sweep_budget() -> None:
    assert parse_budget("steps=20") == {"steps": 20}
    assert parse_budget("time=120s") == {"time": "2m"}
    for bad in ("20", "lr=0.1", "steps=0"):
        with pytest.raises(SweepError, match="--budget"):
            parse_budget(bad)


def test_the_sweep_has_a_baseline_and_one_variant_per_candidate(tmp_path: Path) -> None:
    grid = [Candidate(1.2, 1.1, 1.15), Candidate(2.0, 1.0, 1.0)]
    sweep = scale_sweep(None, phi=1, budget={"steps": 2}, grid=grid,
                        overrides=[f"run.dir={tmp_path}", *TINY])
    assert [v.label for v in sweep.variants] == [BASELINE, *(c.label for c in grid)]
    assert sweep.baseline == BASELINE
    scales = [p.config.model.scale for p in plan_sweep(sweep)]
    assert [(s.phi, s.alpha, s.beta, s.gamma) for s in scales] == [
        (0, 1.2, 1.1, 1.15), (1, 1.2, 1.1, 1.15), (1, 2.0, 1.0, 1.0)]
    with pytest.raises(SweepError, match="--budget"):
        scale_sweep(None, budget={}, grid=grid)


def test_a_tiny_search_trains_resumes_and_reports_its_grid(tmp_path: Path) -> None:
    grid = [Candidate(2.0, 1.0, 1.0), Candidate(1.0, 1.4, 1.0)]
    sweep = scale_sweep(None, phi=1, budget={"steps": 2}, grid=grid, name="tiny",
                        overrides=[f"run.dir={tmp_path}", *TINY])
    outcome = run_sweep(sweep, display=False)
    assert len(outcome.finished) == 3 and not outcome.failed
    rows, table = grid_table(collect([outcome.folder]), grid)
    assert {r.label for r in rows} == {BASELINE, *(c.label for c in grid)}
    flops = {r.label: r.flops.mean for r in rows}
    assert flops[grid[0].label] > flops[BASELINE]  # twice the blocks: more FLOPs measured
    assert table.count("**best**") == 1 and "| phi=0 |" in table
    again = run_sweep(sweep, display=False)  # compare's resume: nothing trains twice
    assert not again.finished and len(again.skipped) == 3


def test_the_command_writes_the_grid_beside_compares_report(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    code = cli(["scale", "-", "--budget", "steps=2", "--step", "0.5", "--tolerance", "0.1",
                "--name", "cli", f"run.dir={tmp_path}", *TINY])
    assert code == 0
    results = tmp_path / "cli" / "results"
    assert (results / "results.md").is_file()
    grid = (results / "scale_grid.md").read_text()
    assert grid in capsys.readouterr().out
    assert "a=2 b=1 g=1" in grid and "| phi=0 |" in grid
