"""Shared fixtures. Tests never touch the network: hub look-ups are switched off.

``HF_HUB_OFFLINE=1`` is forced (not defaulted: a developer's ``HF_HUB_OFFLINE=0`` would let a
test download) before anything imports huggingface_hub, which reads it once; subprocesses
inherit it. The file store's cache (``AUXILIA_CACHE_DIR``) is a temporary folder per session.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
# the file store's index cache: one folder for this test session, never the user's cache
os.environ["AUXILIA_CACHE_DIR"] = tempfile.mkdtemp(prefix="auxilia-test-cache-")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need a CUDA device: skipped, with the reason, where there is none
    (``pytest -m gpu`` runs them on a GPU machine)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not a parameter named gpu
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    """The real datasets beside the repository (``../shared/data``), or a skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def tiny_config(tmp_path: Path):
    """A digits run small enough for a few seconds of CPU, writing into ``tmp_path``."""
    from auxilia.config import load_config

    def make(*overrides: str):
        return load_config(None, [f"run.dir={tmp_path / 'runs'}", "run.progress=off",
                                  "run.tensorboard=false", "run.plot=false", "train.epochs=2",
                                  "data.batch_size=64", *overrides])

    return make


@pytest.fixture(scope="module")
def pseudo_labelled(tmp_path_factory: pytest.TempPathFactory):
    """``attach(data)``: ``data`` with 64 of its unlabeled images pseudo-labelled (random soft
    rows, as a labelling round writes them), so that ``noisy_student`` builds on it."""
    import torch

    from auxilia.data.pseudo_labels import (
        PseudoLabels,
        attach_pseudo_labels,
        write_pseudo_labels,
    )

    def attach(data):
        unlabeled, rows = data.unlabeled, torch.arange(64)
        probs = torch.rand(64, data.num_classes, generator=torch.Generator().manual_seed(0))
        probs = probs.softmax(1)
        file = tmp_path_factory.mktemp("pseudo") / "pseudo_labels.npz"
        write_pseudo_labels(file, PseudoLabels(
            unlabeled.keys[rows], unlabeled.names[rows.numpy()], probs, probs.argmax(1),
            probs.max(1).values,
            {"classes": list(data.classes), "teacher": {"sha256": "0" * 64}}))
        return attach_pseudo_labels(data, file)

    return attach
