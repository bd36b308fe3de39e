"""Several processes (torchrun, gloo, 2 ranks on this CPU) train like one process on the same
global batch: the same losses, the same weights, banks and EMA models after the same steps;
checkpoints resume across process counts; a NaN or a stop on one rank is decided by all; a
rank that dies ends the job.

The runs are driven by tests/engine/ddp_driver.py (BatchNorm swapped for per-sample GroupNorm
there: BatchNorm's batch statistics differ with the rows a rank holds). Tolerance: 2e-5
absolute on losses and weights after 3 steps (float sums in another order; measured ≤ 1e-6).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from auxilia.engine.checkpoint import load_checkpoint

DRIVER = Path(__file__).with_name("ddp_driver.py")
TOL = 2e-5
BASE = ["run.progress=off", "run.tensorboard=false", "run.plot=false", "train.device=cpu",
        "train.steps=3", "train.eval_every=3", "data.batch_size=16"]
SEMI = ["data.labels_per_class=5"]
METHODS = {"supervised": [], "cds": [], "fixmatch": SEMI, "temporal_ensembling": SEMI,
           "mean_teacher": SEMI, "dml": [], "dogo": []}


def _launch(out: Path, runs: list[dict[str, Any]], ranks: int, timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
    spec = out / f"runs-{len(list(out.glob('runs-*')))}.json"
    spec.write_text(json.dumps(runs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AUXILIA_DIST_TIMEOUT": "60"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={ranks}"] if ranks > 1 else [sys.executable])
    return subprocess.run([*launcher, str(DRIVER), str(out), str(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _run(name: str, runs_dir: Path, *overrides: str, **spec: Any) -> dict[str, Any]:
    return {"name": name, "overrides": [*BASE, f"run.dir={runs_dir}", f"run.name={name}",
                                        *overrides], **spec}


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    one, two = out / "one", out / "two"
    single = [_run(m, one, f"method={m}", *extra) for m, extra in METHODS.items()]
    single += [_run("straight", one, "method=cds", "train.steps=4", "train.eval_every=2"),
               _run("r12", one, "method=cds", "train.steps=4", "train.eval_every=2",
                    stop_at=2)]
    double = [_run(m, two, f"method={m}", *extra) for m, extra in METHODS.items()]
    double += [_run("r21", one, "method=cds", "train.steps=4", "train.eval_every=2",
                    stop_at=2),
               _run("r12", one, "method=cds", "train.steps=4", "train.eval_every=2",
                    resume=True),
               _run("nan", two, "train.on_nonfinite=skip", nan_at=1, rank=1),
               _run("term", two, "train.steps=6", stop_at=2, rank=1)]
    for runs, ranks in ((single, 1), (double, 2), ([_run("r21", one, "method=cds",
                                                         "train.steps=4",
                                                         "train.eval_every=2",
                                                         resume=True)], 1)):
        done = _launch(out, runs, ranks)
        assert done.returncode == 0, done.stderr[-3000:]
    return out


def _record(out: Path, name: str, world: int, rank: int = 0) -> dict[str, Any]:
    return json.loads((out / f"{name}.w{world}.rank{rank}.json").read_text())


def _losses(out: Path, name: str, world: int, rank: int = 0) -> dict[str, dict[str, float]]:
    return _record(out, name, world, rank)["losses"]


def _close(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    for key, tensor in a.items():
        other = b[key]
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            assert torch.allclose(tensor, other, atol=TOL), f"{what}.{key}"
        elif isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, other), f"{what}.{key}"


def _same_state(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["loop"]["step"] == cb["loop"]["step"]
    _close(ca["model"], cb["model"], "model")
    _close(ca["objective"], cb["objective"], "objective")
    assert ca["slots"].keys() == cb["slots"].keys()
    for slot, state in ca["slots"].items():
        _close(state, cb["slots"][slot], slot)
    assert ca["streams"] == cb["streams"]


@pytest.mark.parametrize("method", list(METHODS))
def test_two_ranks_train_like_one_process_on_the_same_global_batch(launched: Path,
                                                                    method: str) -> None:
    one = _losses(launched, method, 1)
    # the two-rank run's files are rank 0's, its losses each rank's share of the batch
    r0, r1 = _losses(launched, method, 2, 0), _losses(launched, method, 2, 1)
    assert r0.keys() == one.keys() == {"1", "2", "3"}
    for step, losses in one.items():
        for key, value in losses.items():
            mean = (r0[step][key] + r1[step][key]) / 2  # DDP averages the ranks' gradients
            assert abs(mean - value) <= TOL * max(1, abs(value)), (step, key)
    assert any(r0[s]["loss"] != r1[s]["loss"] for s in r0)  # each rank had its own rows
    _same_state(launched / "one" / method / "checkpoints" / "last.pt",
                launched / "two" / method / "checkpoints" / "last.pt")
    summaries = [json.loads((launched / w / method / "summary.json").read_text())
                 for w in ("one", "two")]
    assert summaries[0]["train_images"] == summaries[1]["train_images"]  # the global batch


def test_gathered_negatives_are_the_one_process_loss(launched: Path) -> None:
    one, r0, r1 = (_losses(launched, "cds", 1), _losses(launched, "cds", 2, 0),
                   _losses(launched, "cds", 2, 1))
    for key in ("supcon_s1", "supcon_s2", "supcon_s3"):
        # a rank's own anchors against every rank's rows: neither is the whole batch's
        # loss alone, their mean is
        assert r0["1"][key] != one["1"][key] and r1["1"][key] != one["1"][key]
        assert abs((r0["1"][key] + r1["1"][key]) / 2 - one["1"][key]) <= TOL


@pytest.mark.parametrize("name", ["r21", "r12"])
def test_a_checkpoint_resumes_with_another_number_of_processes(launched: Path,
                                                               name: str) -> None:
    first = 2 if name == "r21" else 1  # r21: 2 ranks, then 1; r12: 1, then 2
    assert _record(launched, name, first)["stopped"]
    assert not _record(launched, name, 3 - first)["stopped"]
    _same_state(launched / "one" / name / "checkpoints" / "last.pt",
                launched / "one" / "straight" / "checkpoints" / "last.pt")


def test_a_nan_on_one_rank_skips_the_step_on_both(launched: Path) -> None:
    summary = json.loads((launched / "two" / "nan" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["skipped_steps"] == 1
    last = load_checkpoint(launched / "two" / "nan" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in last["model"].values()
               if t.is_floating_point())


def test_a_sigterm_to_one_rank_stops_both_at_one_step(launched: Path) -> None:
    ranks = [_record(launched, "term", 2, r) for r in (0, 1)]
    assert all(r["stopped"] for r in ranks)
    assert ranks[0]["losses"].keys() == ranks[1]["losses"].keys() == {"1", "2"}
    last = load_checkpoint(launched / "two" / "term" / "checkpoints" / "last.pt")
    assert last["loop"]["step"] == 2
    assert not list((launched / "two" / "term" / "checkpoints").glob("*.tmp*"))


def test_a_dead_rank_ends_the_job_naming_it(tmp_path: Path) -> None:
    done = _launch(tmp_path, [_run("dies", tmp_path / "runs", "train.steps=20",
                                   kill_at=2, rank=1)], 2, timeout=120)
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "rank      : 1" in text and "exitcode  : 9" in text


def test_a_global_batch_that_does_not_split_is_refused(tmp_path: Path) -> None:
    done = _launch(tmp_path, [_run("odd", tmp_path / "runs", "data.batch_size=15")], 2)
    assert done.returncode != 0
    assert "data.batch_size=15 does not split over 2 processes" in done.stderr
