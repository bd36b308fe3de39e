"""The input pipeline on a real GPU (``pytest -m gpu``; skipped without one): batches prepared by
workers arrive in pinned memory, their views are built on the GPU, and they equal the batches
built in the training process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auxilia.config import load_config
from auxilia.engine.batches import Batches
from auxilia.engine.setup import build_setup

pytestmark = pytest.mark.gpu


def _folder(root: Path) -> Path:
    for c, name in enumerate(("ant", "bee", "cat")):
        for split, n in (("train", 12), ("test", 4)):
            for i in range(n):
                pixels = np.random.default_rng(1000 * c + 100 * (split == "test") + i).integers(
                    0, 256, (30, 40, 3), dtype=np.uint8)
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


def test_workers_on_cuda_give_the_in_process_batches_on_the_gpu(tmp_path: Path) -> None:
    config = load_config(None, ["data.source=folder", f"data.root={_folder(tmp_path)}",
                                "data.storage=files", "data.image_size=16", "train.device=cuda",
                                "method=cds", "model.name=resnet8",
                                "data.batch_size=8", "run.progress=off"])
    setup = build_setup(config)
    assert setup.data.train.images.decoding.crop == "random_resized"
    batches = {}
    for workers in (0, 2):
        source = Batches(setup, Batches.build(setup).streams, workers=workers)
        assert not source.reader.views_here  # views on the GPU
        batches[workers] = [source.next(step) for step in range(4)]
        source.close()
    for inline, pooled in zip(batches[0], batches[2], strict=True):
        for key, value in inline.items():
            assert value.device.type == "cuda" and pooled[key].device.type == "cuda"
            assert torch.equal(value, pooled[key]), key
