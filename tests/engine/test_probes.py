"""Everyday mistakes found by probing the command line from outside, each kept fixed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auxilia.cli import main as cli
from auxilia.config import ConfigError, load_config
from auxilia.data.config import DataConfig
from auxilia.data.sources import DataError, load_dataset
from auxilia.engine import train
from auxilia.engine.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from auxilia.engine.export import ExportError, export_run
from auxilia.engine.runfolder import RunLockedError


def _write(path: Path, seed: int, side: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _tree(root: Path, n: int = 5, start: int = 0) -> Path:
    for c, name in enumerate(("ant", "bee", "cat")):
        for i in range(n):
            _write(root / name / f"{i}.png", start + 100 * c + i)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("probes") / "runs"
    return train(load_config(None, [f"run.dir={runs}", "run.name=r", "run.progress=off",
                                    "run.tensorboard=false", "run.plot=false", "train.steps=4",
                                    "train.eval_every=2"])).run_dir


@pytest.mark.parametrize("out", ["checkpoints/best.pt", "data.pt", "config.pt", "checkpoints/"])
def test_an_export_never_lands_on_the_runs_own_files(run: Path, out: str) -> None:
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ExportError, match="inside the run folder"):
        export_run(run, "torchscript", out=f"{run}/{out}", overwrite=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_torchscript_export_given_as_a_checkpoint_is_named(run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    model = export_run(run, "torchscript", out=tmp_path / "model.pt").path
    with pytest.raises(CheckpointError, match="is an exported TorchScript model, not a training "
                                              "checkpoint"):
        load_checkpoint(model)
    assert cli(["eval", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights_only=False" not in err


def test_a_missing_best_or_last_checkpoint_says_which_to_use_instead(run: Path,
                                                                     tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "checkpoints" / "best.pt").unlink()
    with pytest.raises(CheckpointError, match=r"no evaluation selected a best checkpoint .*"
                                              r"--checkpoint last"):
        resolve_checkpoint(copy, "best")
    shutil.copy(run / "checkpoints" / "best.pt", copy / "checkpoints" / "best.pt")
    (copy / "checkpoints" / "last.pt").unlink()
    with pytest.raises(CheckpointError, match=r"last\.pt is missing; use --checkpoint best"):
        resolve_checkpoint(copy, "last")


@pytest.mark.parametrize("extra", ["Val_set", "cat"])
def test_folders_beside_the_split_folders_are_named_not_ignored(tmp_path: Path,
                                                                extra: str) -> None:
    _tree(tmp_path / "train")
    _tree(tmp_path / "test", 2, 1000)
    _tree(tmp_path / extra, 2, 2000)
    with pytest.raises(DataError, match=rf"other folders beside them \({extra}\) that would be "
                                        r"ignored"):
        load_dataset(DataConfig(source="folder", root=str(tmp_path)))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_the_first_image_is_refused_by_the_automatic_choice_too(
        tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    (root / "ant" / "0.png").unlink()
    os.mkfifo(root / "ant" / "0.png")
    config = load_config(None, [f"run.dir={tmp_path / 'runs'}", "run.progress=off",
                                "data.source=folder", f"data.root={root}", "train.steps=2"])
    errors: list[BaseException] = []

    def run_it() -> None:
        try:
            train(config)
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=run_it, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "training hung on a FIFO"
    assert errors and "a FIFO, not a regular file" in str(errors[0])


def test_a_huge_image_size_for_image_files_is_refused_before_decoding(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"need .* in memory .*lower data\.image_size"):
        load_dataset(DataConfig(source="folder", root=str(root), image_size=200_000))
    assert time.perf_counter() - started < 10


def test_run_names_are_limited_in_bytes_too() -> None:
    load_config(None, ["run.name=" + "é" * 120])
    with pytest.raises(ConfigError, match=r"run\.name .* 256 bytes"):
        load_config(None, ["run.name=" + "é" * 128 + "x"])


_SLOW = """
import sys, time
from auxilia.config import load_config
from auxilia.engine import train
cfg = load_config(None, sys.argv[1:])
train(cfg, callbacks=[lambda step, losses: time.sleep(0.5)])
"""


def test_resume_of_a_run_still_before_its_first_checkpoint_names_the_running_process(
        tmp_path: Path) -> None:
    args = [f"run.dir={tmp_path}", "run.name=busy", "run.progress=off", "train.steps=200",
            "train.eval_every=1000", "run.tensorboard=false"]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW, *args])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "busy" / "config.yaml").is_file():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        with pytest.raises(RunLockedError, match=f"in use by process {proc.pid}"):
            train(load_config(None, args), resume=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def test_resume_of_a_file_says_it_is_a_file(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    assert cli(["train", "--resume", str(tmp_path / "afile")]) == 2
    assert "is a file, not a run folder" in capsys.readouterr().err


def test_a_one_class_csv_points_at_the_labels(tmp_path: Path) -> None:
    from auxilia.data.config import CsvFiles

    for i in range(4):
        _write(tmp_path / f"{i}.png", i)
    (tmp_path / "train.csv").write_text("filename,class\n" + "".join(
        f"{i}.png,cat\n" for i in range(4)))
    with pytest.raises(DataError, match=r"1 class \(cat\).*data\.csv\.label_column"):
        load_dataset(DataConfig(source="csv", csv=CsvFiles(train=str(tmp_path / "train.csv"))))
