"""Every write fails cleanly and atomically, and every JSON file auxilia writes is strict JSON.

Real failing writes come from two places: ``/dev/full`` (every write fails with ENOSPC), handed
out by ``tempfile.mkstemp`` in the module that does the atomic writes, and a child process whose
``RLIMIT_FSIZE`` is small (SIGXFSZ ignored, so a write past the limit fails with EFBIG, "File
too large"), which runs the real command line.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from auxilia import atomic_files, jsonio
from auxilia.cli import main as cli
from auxilia.config import load_config
from auxilia.engine import anytime, export, train
from auxilia.engine import state as run_state
from auxilia.engine.checkpoint import load_checkpoint, save_checkpoint
from auxilia.engine.runlog import MetricsLog, RunFolder
from auxilia.report import plot_curves

NAN, INF = float("nan"), float("inf")
LIMIT = 256 * 1024  # bytes a child may write per file: config, logs, data.json (66 kB) fit;
# a checkpoint (780 kB) or an exported small_cnn (380 kB) does not


def _strict(text: str) -> Any:
    """Parse ``text`` refusing NaN and Infinity, as jq or JavaScript would."""
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in JSON output")

    return json.loads(text, parse_constant=refuse)


def _run_config(root: Path, name: str, *extra: str) -> list[str]:
    return [f"run.dir={root}", f"run.name={name}", "run.progress=off", "run.tensorboard=false",
            "run.plot=false", "train.steps=3", "data.batch_size=64", *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished three-step digits run."""
    root = tmp_path_factory.mktemp("writes")
    return train(load_config(None, _run_config(root, "r"))).run_dir


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Atomic writes get a real temporary whose file descriptor writes to ``/dev/full``."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    real = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)  # the temporary exists: it must be removed
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(atomic_files, "tempfile", SimpleNamespace(mkstemp=mkstemp))


def _limited(*args: str, code: str | None = None, limit: int = LIMIT
             ) -> subprocess.CompletedProcess[str]:
    """Run ``auxilia ARGS`` (or ``code``) in a child writing at most ``limit`` bytes per file."""
    body = code or "from auxilia.cli import main; sys.exit(main(sys.argv[1:]))"
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, "
              "resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n" + body)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("AUXILIA_DEBUG", None)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=240, env=env)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "enforce fail" not in stderr, stderr[-3000:]
    return errors[0]


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


# ----------------------------------------------------------------------------- strict JSON


def test_dumps_writes_every_non_finite_number_as_null() -> None:
    record = {"loss": NAN, "nested": {"up": INF, "down": [-INF, (1.5, NAN)]},
              "np": np.float32("nan"), "np64": np.float64("inf"), "t": torch.tensor(-INF),
              "ok": [1, 2.5, np.int64(3), torch.tensor(4.0), True, None, "NaN"]}
    text = jsonio.dumps(record, indent=2)
    assert _strict(text) == {"loss": None, "nested": {"up": None, "down": [None, [1.5, None]]},
                             "np": None, "np64": None, "t": None,
                             "ok": [1, 2.5, 3, 4.0, True, None, "NaN"]}
    assert jsonio.loads(text) == _strict(text)
    with pytest.raises(ValueError, match="NaN is not valid JSON"):
        jsonio.loads('{"loss": NaN}')
    with pytest.raises(TypeError):
        jsonio.dumps({"x": object()})


def test_metrics_lines_and_their_resume_rewrite_are_strict_json(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    log = MetricsLog(folder, tensorboard=False, resume_step=None)
    log.write({"step": 1, "train/loss": NAN, "val/final/top1": INF, "lr": 0.1})
    log.close()
    (line,) = folder.metrics.read_text().splitlines()
    assert _strict(line) == {"step": 1, "train/loss": None, "val/final/top1": None, "lr": 0.1}
    # a file an older version wrote with NaN is rewritten as strict JSON on resume
    folder.metrics.write_text('{"step": 1, "train/loss": NaN}\n{"step": 2, "x": -Infinity}\n')
    MetricsLog(folder, tensorboard=False, resume_step=1).close()
    assert [_strict(t) for t in folder.metrics.read_text().splitlines()] == [
        {"step": 1, "train/loss": None}]


def test_summary_and_anytime_reports_are_strict_json(tmp_path: Path) -> None:
    run_state.write_json(tmp_path / "summary.json", {"best_val": {"loss": NAN}, "x": [INF]})
    assert _strict((tmp_path / "summary.json").read_text()) == {"best_val": {"loss": None},
                                                               "x": [None]}
    report = {"run": "r", "step": 3,
              "exits": {"final": {"flops": 2e6, "params": 10, "latency_ms": INF,
                                  "val": {"top1": 50.0, "top5": NAN}}},
              "early_exit": {"order": ["final"], "val": [
                  {"threshold": 1.0, "top1": NAN, "mean_flops": 2e6, "fraction": {"final": 100}}]}}
    json_path, png_path = anytime.write_report(report, tmp_path / "out")
    card = _strict(json_path.read_text())
    assert card["exits"]["final"]["latency_ms"] is None
    assert card["early_exit"]["val"][0]["top1"] is None
    assert png_path.read_bytes().startswith(b"\x89PNG")
    assert _temporaries(tmp_path) == []


@pytest.mark.parametrize("fmt", ["state_dict", "torchscript"])
def test_export_sidecar_and_safetensors_metadata_are_strict_json(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    from safetensors import safe_open

    real = export.model_card
    monkeypatch.setattr(export, "model_card",  # a card holding non-finite numbers
                        lambda *a: {**real(*a), "mean": [NAN], "std": [INF]})
    result = export.export_run(run_dir, fmt, tmp_path / "m")
    card = _strict(result.sidecar.read_text())
    assert card["mean"] == [None] and card["std"] == [None] and card["files"] == {
        fmt: result.path.name}
    if fmt == "state_dict":
        with safe_open(str(result.path), framework="pt") as f:
            embedded = _strict(f.metadata()["auxilia"])
        assert embedded["mean"] == [None] and embedded["num_classes"] == 10


# ----------------------------------------------------------------------------- full disk


def test_save_checkpoint_on_a_full_disk_names_the_file(tmp_path: Path,
                                                       full_disk: None) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")
    with pytest.raises(OSError) as err:
        save_checkpoint({"model": {"w": torch.zeros(100_000)}}, path)
    assert err.value.errno == errno.ENOSPC
    assert str(err.value) == (f"[Errno 28] cannot write {path}: No space left on device; the "
                              "previous file is unchanged")
    assert path.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary


def test_a_file_too_large_in_torch_save_is_reported_as_such(tmp_path: Path) -> None:
    """torch.save turns the failed write into ``RuntimeError: enforce fail``; auxilia does not."""
    path = tmp_path / "last.pt"
    code = ("import json, torch\n"
            "from pathlib import Path\n"
            "from auxilia.engine.checkpoint import save_checkpoint\n"
            "path = Path(sys.argv[1])\n"
            "save_checkpoint({'model': {'w': torch.ones(4)}}, path)\n"
            "try:\n"
            "    save_checkpoint({'model': {'w': torch.zeros(100_000)}}, path)\n"
            "except BaseException as err:\n"
            "    print(json.dumps([type(err).__name__, getattr(err, 'errno', None), str(err)]))\n")
    proc = _limited(str(path), code=code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, code_, message = json.loads(proc.stdout)
    assert (name, code_) == ("OSError", errno.EFBIG)
    assert message == (f"[Errno 27] cannot write {path}: File too large; the previous file is "
                       "unchanged")
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_train_on_a_full_disk_stops_with_one_error_line(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = _limited("train", *_run_config(runs, "big"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    last = runs / "big" / "checkpoints" / "last.pt"
    assert line.startswith(f"error: [Errno 27] cannot write {last}: File too large"), line
    assert not last.exists() and _temporaries(runs) == []


def test_curves_and_anytime_files_are_replaced_atomically(tmp_path: Path,
                                                          full_disk: None) -> None:
    curves = tmp_path / "curves.png"
    curves.write_bytes(b"old curves")
    records = [{"step": 1, "train/loss": 1.0}, {"step": 1, "val/final/top1": 50.0}]
    with pytest.raises(OSError, match=rf"cannot write {curves}: No space left on device"):
        plot_curves(records, curves)
    report_json = tmp_path / "anytime.json"
    report_json.write_text("old report")
    with pytest.raises(OSError, match=rf"cannot write {report_json}: No space left on device"):
        anytime.write_report({"run": "r"}, tmp_path, overwrite=True)
    assert curves.read_bytes() == b"old curves" and report_json.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anytime.json", "curves.png"]


# ----------------------------------------------------------------------------- exports


def test_a_failed_real_export_keeps_the_previous_one(run_dir: Path, tmp_path: Path) -> None:
    """Each format past the file-size limit, over a previous export, through the CLI."""
    out = tmp_path / "out"
    before: dict[str, bytes] = {}
    for fmt, suffix in export.FORMATS.items():
        assert cli(["export", str(run_dir), "--format", fmt, "--out", str(out / "m")]) == 0
        before[suffix] = (out / f"m{suffix}").read_bytes()
        assert len(before[suffix]) > LIMIT  # so that the limited write fails
    before[".json"] = (out / "m.json").read_bytes()
    for fmt, suffix in export.FORMATS.items():
        proc = _limited("export", str(run_dir), "--format", fmt, "--out", str(out / "m"),
                        "--overwrite")
        assert proc.returncode == 2, (fmt, proc.stderr[-3000:])
        line = _one_error_line(proc.stderr)
        assert line == (f"error: [Errno 27] cannot write {out / f'm{suffix}'}: File too large; "
                        "the previous file is unchanged"), line
    assert {s: (out / f"m{s}").read_bytes() for s in before} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(f"m{s}" for s in before)


# ----------------------------------------------------------------------------- eval


def test_eval_replaces_its_files_only_in_a_run_folder_or_with_overwrite(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "anytime.png").write_bytes(b"my own plot")
    real_report = anytime.anytime_report

    def not_called(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("evaluated although the output would be refused")

    monkeypatch.setattr(anytime, "anytime_report", not_called)
    assert cli(["eval", str(run_dir), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: {mine / 'anytime.png'} already exists and {mine} is not an "
                           "auxilia run folder; pass --overwrite to replace it or --out to "
                           "write elsewhere")
    assert (mine / "anytime.png").read_bytes() == b"my own plot"
    assert sorted(p.name for p in mine.iterdir()) == ["anytime.png"]

    monkeypatch.setattr(anytime, "anytime_report", real_report)
    args = ["eval", str(run_dir), "--latency-batch", "4", "--thresholds", "0.9,1"]
    assert cli([*args, "--out", str(mine), "--overwrite"]) == 0
    assert (mine / "anytime.png").read_bytes().startswith(b"\x89PNG")
    assert _strict((mine / "anytime.json").read_text())["step"] == 3
    (run_dir / "anytime.json").write_text("from an earlier eval")
    assert cli(args) == 0  # the run folder's own files are replaced without asking
    assert _strict((run_dir / "anytime.json").read_text())["step"] == 3
    assert _temporaries(run_dir) == [] and _temporaries(mine) == []
    capsys.readouterr()


def test_eval_refuses_an_out_that_is_a_file(run_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    assert cli(["eval", str(run_dir), "--out", str(target)]) == 2
    assert f"cannot write the anytime report into {target}: it is a file" in \
        capsys.readouterr().err
    assert target.read_text() == "keep"

