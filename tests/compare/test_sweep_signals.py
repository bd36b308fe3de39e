"""Stop means stop for sweeps: SIGTERM or SIGINT at any moment ends the whole sweep, with its
workers, and says so in ``sweep.json`` and the exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from auxilia.compare import runner
from auxilia.compare.runner import run_sweep
from auxilia.compare.spec import quick_sweep
from auxilia.engine import run as engine_run
from auxilia.engine.signals import Interrupted

TINY = ["run.tensorboard=false", "run.plot=false", "data.batch_size=64", "train.steps=4",
        "train.eval_every=4"]
LONG = ["run.tensorboard=false", "run.plot=false", "train.steps=3000", "train.eval_every=3000",
        "train.log_every=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _compare(runs: Path, methods: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "auxilia.cli", "compare", "-", "--methods", methods,
            "--seeds", "1", "--name", "sw", f"run.dir={runs}", *LONG, *extra]


def _wait(condition: Callable[[], bool], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _training(run: Path) -> Callable[[], bool]:
    """True once the run has logged a training step."""
    return lambda: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _record(runs: Path) -> dict:
    return json.loads((runs / "sw" / "sweep.json").read_text())


def test_sigterm_during_a_run_stops_the_sweep_with_143_and_says_how_to_resume(
        tmp_path: Path) -> None:
    args = _compare(tmp_path, "supervised,deep_supervision")
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait(_training(tmp_path / "sw" / "supervised" / "seed0"))
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    record = _record(tmp_path)
    assert record["status"] == "interrupted" and record["stopped_by"] == "SIGTERM"
    assert [r["status"] for r in record["runs"]] == ["interrupted", "pending"]
    assert (tmp_path / "sw" / "supervised" / "seed0" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "sw" / "deep_supervision").exists()  # the next run never started
    assert "Resume with: auxilia compare - --methods supervised,deep_supervision" in err


def test_a_signal_while_a_run_writes_its_summary_stops_the_sweep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summarize = engine_run.summarize

    def summarize_then_signal(*args, **kwargs):  # as a scheduler's SIGTERM at the last moment
        signal.raise_signal(signal.SIGTERM)
        return summarize(*args, **kwargs)

    monkeypatch.setattr(engine_run, "summarize", summarize_then_signal)
    sweep = quick_sweep(None, "supervised,deep_supervision", 1, [f"run.dir={tmp_path}", *TINY],
                        name="sw")
    with pytest.raises(Interrupted) as stopped:
        run_sweep(sweep, display=False)
    assert stopped.value.signum == signal.SIGTERM
    record = _record(tmp_path)
    assert [r["status"] for r in record["runs"]] == ["finished", "pending"]
    assert record["status"] == "interrupted"
    assert (tmp_path / "sw" / "supervised" / "seed0" / "summary.json").is_file()
    assert not (tmp_path / "sw" / "deep_supervision").exists()


def test_a_signal_between_runs_stops_the_sweep(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    get, calls = runner.DataCache.get, []

    def get_then_signal(self, config):  # the signal lands while the next run reads its data
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return get(self, config)

    monkeypatch.setattr(runner.DataCache, "get", get_then_signal)
    sweep = quick_sweep(None, "supervised,deep_supervision,cds", 1,
                        [f"run.dir={tmp_path}", *TINY], name="sw")
    with pytest.raises(Interrupted) as stopped:
        run_sweep(sweep, display=False)
    assert stopped.value.signum == signal.SIGINT
    assert [r["status"] for r in _record(tmp_path)["runs"]] == ["finished", "pending", "pending"]
    assert not (tmp_path / "sw" / "deep_supervision").exists()


def test_sigterm_with_workers_ends_every_worker_and_keeps_each_runs_last_pt(
        tmp_path: Path) -> None:
    args = _compare(tmp_path, "supervised,deep_supervision", "--workers", "2")
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for variant in ("supervised", "deep_supervision"):
        _wait(_training(tmp_path / "sw" / variant / "seed0"))
    workers = _children(proc.pid)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err
    _wait(lambda: not [pid for pid in workers if _alive(pid)], seconds=10)  # no orphans
    record = _record(tmp_path)
    assert record["status"] == "interrupted"
    assert [r["status"] for r in record["runs"]] == ["interrupted", "interrupted"]
    for variant in ("supervised", "deep_supervision"):
        assert (tmp_path / "sw" / variant / "seed0" / "checkpoints" / "last.pt").is_file()


def test_workers_stop_by_themselves_when_the_sweep_process_is_killed(tmp_path: Path) -> None:
    args = _compare(tmp_path, "supervised,deep_supervision", "--workers", "2",
                    "train.steps=100000")  # far more than the wait: left alone, they train on
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for variant in ("supervised", "deep_supervision"):
        _wait(_training(tmp_path / "sw" / variant / "seed0"))
    workers = _children(proc.pid)
    assert len(workers) >= 2
    proc.kill()  # kill -9: no handler runs in the parent
    proc.wait()
    _wait(lambda: not [pid for pid in workers if _alive(pid)], seconds=60)
    for variant in ("supervised", "deep_supervision"):  # each wrote its last.pt on the way out
        run = tmp_path / "sw" / variant / "seed0"
        assert (run / "checkpoints" / "last.pt").is_file()
        assert not (run / "summary.json").exists()


def test_ctrl_c_to_the_whole_group_while_workers_start_leaves_no_traceback(
        tmp_path: Path) -> None:
    args = _compare(tmp_path, "supervised,deep_supervision", "--workers", "2")
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _wait(lambda: len(_children(proc.pid)) >= 2)  # the workers exist, still importing torch
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: every process of the group
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    record = _record(tmp_path)
    assert record["status"] == "interrupted"
    assert {r["status"] for r in record["runs"]} <= {"interrupted", "pending"}


def test_a_signal_while_compare_writes_its_report_finishes_the_report_then_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from auxilia.cli import main as cli
    from auxilia.compare import report

    argv = ["compare", "-", "--methods", "supervised", "--seeds", "1", "--name", "sw",
            f"run.dir={tmp_path}", *TINY]
    assert cli(argv) == 0
    results = tmp_path / "sw" / "results"
    plots = sorted(p.name for p in results.glob("*.png"))
    write_plots = report.write_plots

    def signal_then_plot(*args, **kwargs):  # SIGTERM half-way through the report
        signal.raise_signal(signal.SIGTERM)
        return write_plots(*args, **kwargs)

    monkeypatch.setattr(report, "write_plots", signal_then_plot)
    assert cli(argv) == 143
    assert "SIGTERM received: the report was finished first" in capsys.readouterr().err
    assert sorted(p.name for p in results.glob("*.png")) == plots  # none lost
    assert not list(results.glob(".*.tmp"))


def test_ctrl_c_while_the_command_starts_is_one_line_and_130(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from auxilia import cli

    def parser_interrupted():  # Ctrl-C while the command imports torch, before any stop flag
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_parser", parser_interrupted)
    assert cli.main(["compare", "-", "--methods", "supervised"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["SIGINT received: stopped"]
