"""The input pipeline: batches prepared by worker processes are the batches of one process,
for either store, and a checkpoint saves the batches consumed, not those prepared ahead."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auxilia.config import load_config
from auxilia.data.file_images import FileImages
from auxilia.engine import train
from auxilia.engine.batches import Batches
from auxilia.engine.export import export_run
from auxilia.engine.setup import build_setup

QUIET = ["run.progress=off", "run.tensorboard=false", "run.plot=false", "train.device=cpu",
         "model.name=small_cnn", "model.kwargs={widths: [8, 16, 32]}"]


def _folder(root: Path, size: tuple[int, int] = (12, 12), per_class: int = 12) -> Path:
    for c, name in enumerate(("ant", "bee", "cat")):
        for split, n in (("train", per_class), ("test", 4)):
            for i in range(n):
                seed = 100_000 * c + 1000 * (split == "test") + i
                pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3),
                                                              dtype=np.uint8)
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("pipeline") / "small")


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("pipeline") / "large", size=(40, 30))


def _setup(*overrides: str):
    return build_setup(load_config(None, [*QUIET, "data.batch_size=8", *overrides]))


def _batches(setup, workers: int, steps: int, start: int = 0,
             state: dict | None = None) -> list[dict[str, torch.Tensor]]:
    batches = Batches(setup, Batches.build(setup).streams, workers=workers)
    if state is not None:
        batches.load_state_dict(state)
    try:
        return [batches.next(step) for step in range(start, start + steps)]
    finally:
        batches.close()


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("store", ["memory", "files"])
def test_zero_and_two_workers_give_the_same_batches(small: Path, store: str) -> None:
    setup = _setup("data.source=folder", f"data.root={small}", f"data.storage={store}",
                   "data.image_size=12", "method=fixmatch", "data.labels_per_class=4")
    assert set(setup.objective.streams) == {"labeled", "unlabeled"}
    _same(_batches(setup, 0, 6), _batches(setup, 2, 6))


def test_random_resized_crops_do_not_depend_on_the_workers(large: Path) -> None:
    setup = _setup("data.source=folder", f"data.root={large}", "data.storage=files",
                   "data.image_size=12", "method=cds", "model.name=resnet8", "model.kwargs={}")
    assert setup.data.train.images.decoding.crop == "random_resized"
    inline, pooled = _batches(setup, 0, 5), _batches(setup, 2, 5)
    _same(inline, pooled)
    assert not torch.equal(inline[0]["x_lb"], inline[3]["x_lb"])


def test_the_file_store_trains_on_the_memory_stores_batches(small: Path) -> None:
    common = ("data.source=folder", f"data.root={small}", "data.image_size=12",
              "method=deep_supervision")
    memory, files = _setup(*common, "data.storage=memory"), _setup(*common, "data.storage=files")
    assert isinstance(files.data.train.images, FileImages)
    _same(_batches(memory, 0, 4), _batches(files, 2, 4))


def test_the_state_is_the_position_consumed_and_resumes_exactly(small: Path) -> None:
    setup = _setup("data.source=folder", f"data.root={small}", "data.storage=files",
                   "data.image_size=12")
    reference = _batches(setup, 0, 9)
    batches = Batches(setup, Batches.build(setup).streams, workers=2)
    try:
        for step in range(5):  # mid-epoch (4 batches per epoch): workers are ahead by now
            batches.next(step)
        state = batches.state_dict()
    finally:
        batches.close()
    per_epoch = batches.steps_per_epoch
    assert state["labeled"] == {"epoch": 5 // per_epoch, "position": 5 % per_epoch}
    _same(_batches(setup, 2, 4, start=5, state=state), reference[5:])


def test_a_run_over_the_memory_budget_trains_resumes_and_exports(small: Path,
                                                                 tmp_path: Path) -> None:
    overrides = [*QUIET, f"run.dir={tmp_path}", "data.source=folder", f"data.root={small}",
                 "data.memory_budget=1KB", "data.image_size=12", "data.num_workers=2",
                 "data.batch_size=8", "train.steps=8", "train.eval_every=4"]
    straight = train(load_config(None, [*overrides, "run.name=straight"]))
    broken = load_config(None, [*overrides, "run.name=broken"])

    def stop_at(step: int, losses: dict) -> None:
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C: the run stops after this step

    with pytest.raises(KeyboardInterrupt):
        train(broken, callbacks=[stop_at])
    resumed = train(broken, resume=True)
    assert resumed.summary["last"] == straight.summary["last"]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    exported = export_run(straight.run_dir, "state_dict", tmp_path / "model.safetensors")
    assert exported.path.is_file()
    assert any(line.strip().startswith("storage: files: ") and "over the memory budget" in line
               for line in exported.header)  # the data lines every command prints
