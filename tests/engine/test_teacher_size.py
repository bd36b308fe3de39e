"""A teacher trained at another input size than its student's: the header states both sizes and
its val accuracy as fed (resized inside its slot) and at its own size (the same val images
resized by the data pipeline), and suggests feeding it its own size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auxilia.config import load_config
from auxilia.data.config import DataConfig
from auxilia.data.sources import load_dataset, val_at_size
from auxilia.engine import train

QUIET = ["run.progress=off", "run.tensorboard=false", "run.plot=false", "train.device=cpu",
         "model.name=small_cnn", "model.kwargs={widths: [8, 16, 32]}", "data.batch_size=16"]


def _scenes(root: Path, n: int = 14, side: int = 32) -> Path:
    """Class folders of ``side`` px noisy images whose class is the period of their stripes:
    shrunk with antialiasing (the data pipeline) the stripes survive at 8 px; shrunk by the
    teacher slot's plain bilinear resize they alias."""
    rng = np.random.default_rng(0)
    for c, period in enumerate((2, 4, 8)):
        for i in range(n):
            phase = rng.integers(0, period)
            stripes = (((np.arange(side) + phase) // (period // 2)) % 2)[None, :, None] * 120
            pixels = np.clip(60 + stripes + rng.integers(0, 100, (side, side, 3)), 0, 255)
            path = root / f"c{c}" / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def folder_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A teacher trained at 8 px on a folder of 32 px images, and that folder."""
    base = tmp_path_factory.mktemp("sizes")
    root = _scenes(base / "scenes")
    config = load_config(None, [*QUIET, f"run.dir={base / 'runs'}", "run.name=t",
                                "data.source=folder", f"data.root={root}", "data.val_fraction=0.3",
                                "data.image_size=8", "train.steps=20", "train.eval_every=20"])
    return train(config).run_dir, root


def _student(runs: Path, root: Path, teacher: Path, *extra: str) -> tuple[dict, list[str]]:
    lines: list[str] = []
    config = load_config(None, [*QUIET, f"run.dir={runs}", "run.name=s", "method=kd",
                                f"teacher.run={teacher}", "data.source=folder",
                                f"data.root={root}", "data.val_fraction=0.3", "train.steps=2",
                                "train.eval_every=2", *extra])
    result = train(config, header=lines.extend, overwrite=True)
    return result.summary["teacher"], lines


def test_a_teacher_at_another_size_is_reported_at_both_sizes(
        folder_teacher: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, root = folder_teacher
    report, lines = _student(tmp_path, root, teacher)  # the student at the images' native 32
    size = report["size"]
    assert (size["trained"], size["fed"]) == (8, 32)
    assert size["val_as_fed"] == report["val"]["top1"]
    # at its own size it sees what its own run evaluated it on: the same val images at 8 px
    own = json.loads((teacher / "summary.json").read_text())["best_val"]["val"]["final/top1"]
    assert size["val_at_trained"] == pytest.approx(own, abs=1e-9)
    assert size["val_at_trained"] > size["val_as_fed"]  # its stripes alias when resized in-slot
    line = next(line for line in lines if line.startswith("teacher: "))
    assert (f"; trained at 8x8, fed this run's 32x32 images resized in its slot: val "
            f"{size['val_as_fed']:.2f} % as fed, {own:.2f} % at its own 8x8; "
            "data.image_size=8 feeds it its own size") in line


def test_a_teacher_fed_its_own_size_gets_no_size_note(
        folder_teacher: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, root = folder_teacher
    report, lines = _student(tmp_path, root, teacher, "data.image_size=8")
    assert "size" not in report
    assert not any("trained at" in line for line in lines)


@pytest.mark.parametrize("source", ["digits", "folder"])
def test_val_at_size_is_the_val_split_loaded_at_that_size(source: str, tmp_path: Path) -> None:
    cfg = (DataConfig(val_per_class=3) if source == "digits" else
           DataConfig(source="folder", root=str(_scenes(tmp_path / "s", n=6)), val_per_class=2))
    val = val_at_size(cfg, 12)
    loaded = load_dataset(cfg.model_copy(update={"image_size": 12}), seed=0).val
    assert list(val.names) == list(loaded.names)
    assert torch.equal(val.images, loaded.images) and val.images.shape[-1] == 12
