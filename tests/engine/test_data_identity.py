"""A run knows its data: fingerprints stored with the run, checked on resume, eval and export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auxilia.cli import main as cli
from auxilia.config import load_config
from auxilia.data.config import DataConfig
from auxilia.data.identity import describe_changes, identity, same
from auxilia.data.sources import DataError, load_dataset
from auxilia.engine import train
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.engine.datacheck import DataChangedError
from auxilia.engine.reload import load_run

CLASSES = ("ant", "bee", "cat")


def _write(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _dataset(root: Path) -> Path:
    for split, n, start in (("train", 8, 0), ("val", 3, 1000), ("test", 3, 2000)):
        for c, name in enumerate(CLASSES):
            for i in range(n):
                _write(root / split / name / f"{i}.png", start + 100 * c + i)
    return root


def _config(runs: Path, root: Path, *extra: str):
    return load_config(None, [f"run.dir={runs}", "run.name=r", "run.progress=off",
                              "run.tensorboard=false", "run.plot=false", "data.source=folder",
                              f"data.root={root}", "data.batch_size=8", "train.steps=4",
                              "train.eval_every=2", *extra])


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    root = _dataset(tmp_path / "data")
    result = train(_config(tmp_path / "runs", root))
    return result.run_dir, root


def test_the_fingerprint_is_stored_with_the_run(run: tuple[Path, Path]) -> None:
    run_dir, _ = run
    stored = load_checkpoint(run_dir / "checkpoints" / "last.pt")["data"]
    assert stored["classes"] == list(CLASSES)
    assert {k: v["count"] for k, v in stored["splits"].items()} == {"train": 24, "val": 9,
                                                                     "test": 9}
    listing = json.loads((run_dir / "data.json").read_text())
    assert listing["identity"] == stored
    assert sorted(n for n, _ in listing["files"]["test"])[:2] == ["test/ant/0.png",
                                                                  "test/ant/1.png"]


def test_the_fingerprint_does_not_depend_on_where_the_data_lies(tmp_path: Path) -> None:
    a = _dataset(tmp_path / "a")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    ia = identity(load_dataset(DataConfig(source="folder", root=str(a))), "folder")
    ib = identity(load_dataset(DataConfig(source="folder", root=str(b))), "folder")
    assert same(ia, ib)
    _write(b / "train" / "ant" / "0.png", 999)  # other bytes, same name
    ic = identity(load_dataset(DataConfig(source="folder", root=str(b))), "folder")
    assert not same(ia, ic)
    assert "train: the same counts, other content" in describe_changes(ia, ic)


def test_resume_refuses_changed_data_saying_what_changed(run: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    run_dir, root = run
    _write(root / "train" / "ant" / "new.png", 5000)
    (root / "train" / "bee" / "2.png").unlink()
    _write(root / "train" / "cat" / "1.png", 6000)
    shutil.move(root / "val" / "ant" / "0.png", root / "test" / "ant" / "from-val.png")
    with pytest.raises(DataChangedError) as err:
        train(_config(tmp_path / "runs", root), resume=True)
    message = str(err.value)
    assert message.startswith("cannot resume: the data differs from the data the run was "
                              "trained on")
    for part in ("2 file(s) added: test/ant/from-val.png, train/ant/new.png",
                 "2 file(s) removed: train/bee/2.png, val/ant/0.png",
                 "1 file(s) changed: train/cat/1.png"):
        assert part in message, message
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["loop"]["step"] == 4  # untouched


def test_eval_and_export_of_a_run_whose_data_moved_take_a_new_root(
        run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, root = run
    moved = tmp_path / "moved"
    shutil.move(root, moved)
    with pytest.raises(DataError, match="--data-root"):
        load_run(run_dir)
    setup, _ = load_run(run_dir, data_root=moved)
    assert len(setup.data.test) == 9
    assert cli(["eval", str(run_dir), "--data-root", str(moved), "--latency-batch", "2"]) == 0
    assert cli(["export", str(run_dir), "--format", "state_dict", "--data-root",
                str(moved)]) == 0
    capsys.readouterr()
    assert cli(["eval", str(run_dir)]) == 2
    assert "--data-root" in capsys.readouterr().err
    # resuming with the new root is accepted too: the fingerprint vouches for the data
    resumed = train(_config(tmp_path / "runs", moved), resume=True)
    assert resumed.summary["steps"] == 4


def test_a_new_root_with_other_data_is_refused(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, _ = run
    other = tmp_path / "other"
    for c, name in enumerate(CLASSES):
        for i in range(10):
            _write(other / "train" / name / f"{i}.png", 7000 + 100 * c + i)
    with pytest.raises(DataChangedError, match=r"cannot load this run: the data differs .*"
                                               r"file\(s\) added"):
        load_run(run_dir, data_root=other)
