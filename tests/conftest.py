"""Shared fixtures. Tests never touch the network: hub look-ups are switched off.

``HF_HUB_OFFLINE=1`` is forced (not defaulted: a developer's ``HF_HUB_OFFLINE=0`` would let a
test download) before anything imports huggingface_hub, which reads it once; subprocesses
inherit it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

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
