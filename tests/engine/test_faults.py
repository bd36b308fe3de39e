"""Fault injection: SIGKILL anywhere, torn checkpoint writes, NaN gradients, a full disk.

The kills run ``fault_driver.py`` in a child process (the monkeypatches live there only) and
resume with the real command line. Kill points are drawn from a seeded generator
(``AUXILIA_FAULT_SEED``, default 0) so that a failure reproduces.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from auxilia.cli import main as cli
from auxilia.config import Config, load_config
from auxilia.engine import NonFiniteLossError, RunResult, checkpoint, run, selection, train
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.engine.runlog import MetricsLog, RunFolder

DRIVER = Path(__file__).with_name("fault_driver.py")
SEED = int(os.environ.get("AUXILIA_FAULT_SEED", "0"))
STEPS, EVERY = 12, 3  # evaluations (and checkpoints) at steps 3, 6, 9, 12


def _overrides(runs: Path, name: str, *extra: str) -> list[str]:
    return [f"run.dir={runs}", f"run.name={name}", "run.progress=off", "run.tensorboard=false",
            "run.plot=false", f"train.steps={STEPS}", f"train.eval_every={EVERY}",
            "data.batch_size=32", *extra]


def _config(runs: Path, name: str, *extra: str) -> Config:
    return load_config(None, _overrides(runs, name, *extra))


def _drive(overrides: list[str], **spec: Any) -> subprocess.CompletedProcess[str]:
    """Run the driver in a child process; it is expected to die of SIGKILL."""
    proc = subprocess.run([sys.executable, str(DRIVER), json.dumps({"overrides": overrides,
                                                                    **spec})],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (spec, proc.returncode, proc.stderr[-2000:])
    return proc


def _temporaries(folder: RunFolder) -> list[Path]:
    return sorted(folder.path.rglob("*.tmp"))


def _evals(folder: RunFolder) -> list[dict[str, Any]]:
    return [r for r in folder.read_records() if "val/final/top1" in r]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), (a.name, name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """The uninterrupted run every interrupted one must reproduce."""
    return train(_config(tmp_path_factory.mktemp("faults") / "runs", "straight"))


# ----------------------------------------------------------------------------- SIGKILL


def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(
        reference: RunResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(SEED)
    overrides = _overrides(tmp_path / "runs", "killed")
    folder = RunFolder(tmp_path / "runs" / "killed")
    ref = RunFolder(reference.run_dir)
    improved, best = set(), None
    for record in _evals(ref):  # which evaluations of the reference wrote best.pt
        if selection.is_better(record, best):
            improved.add(record["step"])
            best = {"val": {k[4:]: v for k, v in record.items() if k.startswith("val/")}}

    # 0. before the first checkpoint: nothing to resume, and the error says what to do
    _drive(overrides, fault="step", at=rng.randint(1, EVERY - 1))
    assert folder.path.is_dir() and not folder.last.exists()
    assert cli(["train", "--resume", str(folder.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and "Traceback" not in err
    assert str(folder.last) in err and "before its first checkpoint" in err
    assert "start it again with --overwrite" in err
    # 1. during a step, after the first checkpoint (started again with --overwrite)
    _drive(overrides, overwrite=True, fault="step", at=rng.randint(EVERY + 1, 2 * EVERY - 1))
    assert load_checkpoint(folder.last)["loop"]["step"] == EVERY
    # 2. half-way through an evaluation (val done, test not) of a resumed run
    round_ = rng.randint(1, 2)
    _drive(overrides, resume=True, fault="eval", at=round_)
    resumed_at = EVERY + EVERY * (round_ - 1)
    assert load_checkpoint(folder.last)["loop"]["step"] == resumed_at
    # 3. during a later checkpoint write: part of the bytes are on disk, then SIGKILL
    file = rng.choice(["last.pt", "best.pt"])
    writes = [s for s in range(resumed_at + EVERY, STEPS + 1, EVERY)
              if file == "last.pt" or s in improved]
    if not writes:
        file, writes = "last.pt", list(range(resumed_at + EVERY, STEPS + 1, EVERY))
    at = rng.randint(1, len(writes))
    before = folder.last.read_bytes()
    _drive(overrides, resume=True, fault="write", at=at, file=file,
           fraction=rng.uniform(0.1, 0.9))
    stale = _temporaries(folder)  # what the killed atomic write left behind
    assert len(stale) == 1 and stale[0].name.startswith(f".{file}."), stale
    if file == "last.pt" and at == 1:  # the torn write never replaced the last good one
        assert folder.last.read_bytes() == before
    killed_at = writes[at - 1]  # last.pt is written before best.pt
    assert load_checkpoint(folder.last)["loop"]["step"] == (
        killed_at if file == "best.pt" else killed_at - EVERY)

    proc = subprocess.run([sys.executable, "-m", "auxilia.cli", "train", "--resume",
                           str(folder.path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _temporaries(folder) == []
    summary = json.loads(folder.summary.read_text())
    assert summary["steps"] == STEPS
    assert summary["last"] == reference.summary["last"]
    assert summary["best_val"] == reference.summary["best_val"]
    _same_weights(folder.last, ref.last)
    _same_weights(folder.best, ref.best)  # best.pt caught up even when its write was torn
    assert load_checkpoint(folder.best)["loop"]["step"] == summary["best_val"]["step"]
    assert _evals(folder) == _evals(ref)


# ----------------------------------------------------------------------------- NaN gradients


def _nan_gradient_at(monkeypatch: pytest.MonkeyPatch, bad_step: int) -> Any:
    """Makes the gradient of the first parameter NaN in step ``bad_step`` (the loss is finite);
    returns the callback that tracks the step."""
    done = [0]
    real = run.build_setup

    def build_setup(config: Config, data: Any = None, **kwargs: Any) -> Any:
        setup = real(config, data, **kwargs)
        param = next(setup.model.parameters())
        param.register_hook(lambda g: g * float("nan") if done[0] == bad_step - 1 else g)
        return setup

    monkeypatch.setattr(run, "build_setup", build_setup)
    return lambda step, losses: done.__setitem__(0, step)


def test_nan_gradient_stops_naming_the_step_without_a_newer_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path / "runs", "nan", "train.steps=9")
    folder = RunFolder(tmp_path / "runs" / "nan")
    track = _nan_gradient_at(monkeypatch, bad_step=8)
    with pytest.raises(NonFiniteLossError) as err:
        train(config, callbacks=[track])
    message = str(err.value)
    # the step's check reads no extra pass over the gradients (no clipping here): the NaN
    # gradient of step 8 made the weights, so the loss of step 9, non-finite
    assert "loss is nan at step 9" in message
    assert f"Last good checkpoint: {folder.last}" in message
    assert load_checkpoint(folder.last)["loop"]["step"] == 6
    assert load_checkpoint(folder.best)["loop"]["step"] <= 6
    assert not folder.summary.exists() and _temporaries(folder) == []
    weights = load_checkpoint(folder.last)["model"].values()
    assert all(torch.isfinite(w).all() for w in weights if w.is_floating_point())


def test_nan_gradient_is_skipped_when_asked(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path / "runs", "skip", "train.steps=6", "train.on_nonfinite=skip")
    track = _nan_gradient_at(monkeypatch, bad_step=5)
    result = train(config, callbacks=[track])
    assert result.summary["steps"] == 6 and result.summary["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


# ----------------------------------------------------------------------------- full disk


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(("where", "file"), [("write", "last.pt"), ("fsync", "last.pt"),
                                           ("write", "best.pt")])
def test_disk_full_during_a_checkpoint_write_keeps_the_last_good_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        where: str, file: str) -> None:
    overrides = _overrides(tmp_path / "runs", "full", "train.steps=6")
    folder = RunFolder(tmp_path / "runs" / "full")
    target = folder.path / "checkpoints" / file
    good: dict[str, bytes] = {}
    calls = [0]

    def failing() -> bool:  # the second write of ``file`` (step 6) fails
        calls[0] += 1
        if calls[0] == 2:
            good["bytes"] = target.read_bytes()
        return calls[0] == 2

    if where == "write":
        real = checkpoint.atomic_write

        def atomic_write(path: Path, write: Any) -> None:
            if path.name == file and failing():
                def torn(f: Any) -> None:
                    buffer = io.BytesIO()
                    write(buffer)
                    f.write(buffer.getvalue()[:1000])
                    raise _no_space()

                return real(path, torn)
            return real(path, write)

        monkeypatch.setattr(checkpoint, "atomic_write", atomic_write)
    else:
        if not Path("/proc/self/fd").is_dir():
            pytest.skip("needs /proc to name the file being synced")
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
            if name.startswith(f".{file}.") and failing():
                raise _no_space()
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    assert cli(["train", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"cannot write {target}: No space left on device" in err
    assert target.read_bytes() == good["bytes"]  # the previous good file, untouched
    assert load_checkpoint(target)["loop"]["step"] == EVERY
    assert _temporaries(folder) == []
    last = load_checkpoint(folder.last)["loop"]
    if file == "best.pt":  # last.pt went through and selected step 6: best.pt lags behind
        assert last["step"] == 6 and last["best"]["step"] == 6
    monkeypatch.undo()
    result = train(load_config(None, overrides), resume=True)
    assert result.summary["steps"] == 6
    assert load_checkpoint(folder.best)["loop"]["step"] == result.summary["best_val"]["step"]
    if file == "best.pt":  # rewritten on resume from the restored state of step 6
        _same_weights(folder.best, folder.last)


class _FullDisk:
    """A log file on a disk that fills up at the ``at``-th write: half the line gets out."""

    def __init__(self, file: Any, at: int) -> None:
        self.file, self.at, self.writes, self.full = file, at, 0, False

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes >= self.at:
            self.file.write(text[: len(text) // 2])
            self.file.flush()
            self.full = True
            raise _no_space()
        return self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.full:  # the buffered rest cannot be flushed either
            raise _no_space()


def test_disk_full_while_logging_is_reported_and_resumable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    overrides = _overrides(tmp_path / "runs", "log", "train.steps=6", "train.log_every=1")
    folder = RunFolder(tmp_path / "runs" / "log")
    real_init = MetricsLog.__init__

    def init(self: MetricsLog, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self._file = _FullDisk(self._file, at=5)  # steps 1-3, eval 3, then step 4 fails

    monkeypatch.setattr(MetricsLog, "__init__", init)
    assert cli(["train", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"cannot append to {folder.metrics}: No space left on device" in err
    assert load_checkpoint(folder.last)["loop"]["step"] == EVERY
    assert _temporaries(folder) == []
    monkeypatch.undo()
    result = train(load_config(None, overrides), resume=True)  # drops the torn line
    assert result.summary["steps"] == 6
    assert [r["step"] for r in folder.read_records() if "lr" in r] == list(range(1, 7))


def test_a_damaged_metrics_line_is_named_unless_it_is_the_torn_last_one(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.create()
    folder.metrics.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert folder.read_records() == [{"step": 1}, {"step": 2}]
    folder.metrics.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2 is not JSON"):
        folder.read_records()
