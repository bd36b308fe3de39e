"""Pretrained timm weights without a network: a cached copy, a local file, or one clear line.

Nothing here downloads: ``HF_HUB_OFFLINE=1`` (tests/conftest.py) and the Hugging Face cache is a
folder of the test, laid out as huggingface_hub lays out its own (``models--<org>--<name>/``
with ``refs/main`` naming a snapshot that holds the weights file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants
from PIL import Image
from safetensors.torch import save_file

from auxilia.cli import main as cli
from auxilia.config import load_config
from auxilia.engine import train
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.models.pretrained import (
    GPU_MODEL,
    PretrainedChoice,
    gpu_pretrained_choice,
    pretrained_input_size,
)
from auxilia.models.registry import create_backbone

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _resnet18_weights(path: Path) -> dict[str, torch.Tensor]:
    """A randomly initialised ResNet-18's state_dict, ImageNet classifier included, saved."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return state


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, read by huggingface_hub instead of the user's."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def cached_weights(hub_cache: Path) -> dict[str, torch.Tensor]:
    """:data:`GPU_MODEL`'s weights (random ones) in the cache, where timm's download puts them."""
    repo = hub_cache / ("models--" + GPU_MODEL.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return _resnet18_weights(repo / "snapshots" / COMMIT / "model.safetensors")


def test_offline_without_a_cached_copy_is_one_line(hub_cache: Path) -> None:
    with pytest.raises(ValueError) as caught:
        create_backbone(GPU_MODEL, in_chans=3, image_size=64, pretrained=True)
    assert str(caught.value) == (
        f"model.pretrained=true: {GPU_MODEL}'s weights are not in the Hugging Face cache "
        f"({hub_cache}) and the machine is offline (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE and "
        "connect once to download them, or set model.weights=FILE to a local state_dict (with "
        "model.pretrained=false)")
    assert gpu_pretrained_choice(3, 200) is None  # auto then trains from scratch instead


def test_the_command_line_says_it_in_one_line(hub_cache: Path, tmp_path: Path, capsys) -> None:
    code = cli(["train", "data.source=digits", f"model.name={GPU_MODEL}", "model.pretrained=true",
                f"run.dir={tmp_path / 'runs'}", "run.progress=off", "train.steps=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: model.pretrained=true: {GPU_MODEL}'s weights are not in")
    assert "HF_HUB_OFFLINE=1" in err and "model.weights=FILE" in err


def test_cached_weights_load_offline_as_timm_loads_them(cached_weights) -> None:
    rgb = create_backbone(GPU_MODEL, in_chans=3, image_size=64, pretrained=True)
    assert torch.equal(rgb.model.conv1.weight, cached_weights["conv1.weight"])
    assert torch.equal(rgb.model.layer4[1].bn2.running_var,
                       cached_weights["layer4.1.bn2.running_var"])
    grey = create_backbone(GPU_MODEL, in_chans=1, image_size=64, pretrained=True)
    # timm folds the RGB filters of the first convolution into one grey channel
    torch.testing.assert_close(grey.model.conv1.weight,
                               cached_weights["conv1.weight"].sum(dim=1, keepdim=True))


def test_the_gpu_choice_with_cached_weights(cached_weights) -> None:
    assert gpu_pretrained_choice(3, 200) == PretrainedChoice(
        "timm/resnet18.a1_in1k", True, 224,
        "auto: timm/resnet18.a1_in1k pretrained on ImageNet at 224x224 for 200x200 RGB images, "
        "training on GPU; choose with model.name=... model.pretrained=... data.image_size=...")
    grey = gpu_pretrained_choice(1, 64)
    assert grey is not None and "for 64x64 grey images" in grey.reason
    assert gpu_pretrained_choice(3, 63) is None and gpu_pretrained_choice(4, 200) is None


def _photos(root: Path, side: int = 64) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_the_gpu_choice_trains_as_a_multi_exit_model_from_a_local_file(
        hub_cache: Path, tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.safetensors"
    saved = _resnet18_weights(weights)
    size = pretrained_input_size(GPU_MODEL)
    assert size == 224
    config = load_config(None, [  # what auto puts into the config, the weights from a file
        "data.source=folder", f"data.root={_photos(tmp_path / 'photos')}", "data.batch_size=4",
        f"model.name={GPU_MODEL}", "model.pretrained=true",
        f"data.image_size={size}", f"model.kwargs={{pretrained_cfg_overlay: "
        f"{{file: {weights}}}}}", "method=deep_supervision", "train.steps=1", "optim.lr=1e-9",
        f"run.dir={tmp_path / 'runs'}", "run.progress=off", "run.tensorboard=false",
        "run.plot=false"])
    result = train(config)
    state = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["model"]
    heads = {k.split(".")[1] for k in state if k.startswith("heads.")}
    # timm's ResNet taps its stem and its four stages (s1..s5): a classifier on each but the last
    assert heads == {f"s{i}__logits" for i in range(1, 5)}
    # one step at a vanishing learning rate: the backbone is still the file's
    torch.testing.assert_close(state["backbone.model.conv1.weight"], saved["conv1.weight"],
                               rtol=0, atol=1e-6)
    recorded = load_config(result.run_dir / "config.yaml", [])
    assert (recorded.model.name, recorded.data.image_size) == (GPU_MODEL, 224)
