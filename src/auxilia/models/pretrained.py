"""timm's pretrained weights: whether they can be had, their training size, and ``auto``'s pick.

timm fetches pretrained weights from the Hugging Face Hub into huggingface_hub's cache
(``~/.cache/huggingface/hub`` unless ``HF_HOME`` or ``HF_HUB_CACHE`` say otherwise) and reads
them from there afterwards; with ``HF_HUB_OFFLINE=1`` only the cache is read. This module asks
the same questions without building a model: is a model's weights file in that cache
(:func:`weights_cached`, never a network call), can it be had at all (:func:`weights_available`:
the cache, else one metadata request with a short timeout unless offline), and at which input
size were the weights trained (:func:`pretrained_input_size`, from timm's ``pretrained_cfg``).

On a GPU, ``model.name: auto`` fine-tunes a pretrained backbone for images of at least
:data:`MIN_SIDE` pixels when its weights can be had (:func:`gpu_pretrained_choice`):
:data:`GPU_MODEL`, a ResNet-18 trained on ImageNet-1k by timm's "ResNet strikes back" A1 recipe
(Wightman et al. 2021), at its pretraining size of 224 px. ResNet-18 is the ImageNet model every
practitioner knows and the from-scratch GPU choice's own architecture; with 11.7 M parameters
and 1.8 GFLOPs per 224 px image it is among the cheapest ImageNet backbones to fine-tune on one
GPU, and as a BatchNorm CNN it takes auxilia's default SGD recipe, and auxiliary heads on its
stem and four stages, as they are (ConvNeXt's LayerNorm and EfficientNet's depthwise stages want
AdamW and care with the learning rate; ResNet-50 costs 2.3 times the compute). Grey images keep
it: timm folds the first convolution's RGB filters into one channel when it loads them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from timm.models import PretrainedCfg

__all__ = ["GPU_MODEL", "MIN_SIDE", "PretrainedChoice", "gpu_pretrained_choice", "hub_cache",
           "pretrained_input_size", "weights_available", "weights_cached",
           "weights_unavailable_message"]

TIMM_PREFIX = "timm/"
GPU_MODEL = "timm/resnet18.a1_in1k"
"""The backbone ``auto`` fine-tunes on a GPU (see the module's docstring for why this one)."""

MIN_SIDE = 64
"""Smallest image side for which ``auto`` fine-tunes a pretrained backbone on a GPU; smaller
images keep the from-scratch choice (upscaling 32 px images 7 times costs 49 times the compute)."""

# timm looks for the safetensors file first, then the PyTorch one (timm.models._hub)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedChoice(NamedTuple):
    """What ``auto`` puts into the config for a pretrained backbone.

    Attributes:
        name: ``model.name`` as auxilia's config spells it (``"timm/resnet18.a1_in1k"``).
        pretrained: ``model.pretrained`` (always True).
        size: ``data.image_size``: the side the weights were trained at.
        reason: the line to print, saying what was chosen and how to choose otherwise.
    """

    name: str
    pretrained: bool
    size: int
    reason: str


def _timm_cfg(model_name: str) -> PretrainedCfg | None:
    """timm's pretrained_cfg of ``timm/<name>[.<tag>]`` when it names weights, else None."""
    if not model_name.startswith(TIMM_PREFIX):
        return None
    import timm  # 2 s to import: only when a timm model is asked about

    name = model_name.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        return None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag: timm names it when the model is built
        return None
    return cfg if cfg is not None and cfg.has_weights else None


def pretrained_input_size(model_name: str) -> int | None:
    """The input side a timm model's pretrained weights were trained at.

    Args:
        model_name: ``model.name``, e.g. ``"timm/resnet18.a1_in1k"`` or ``"timm/resnet50"``
            (timm's default weights of the architecture).

    Returns:
        The side of timm's ``pretrained_cfg.input_size`` (224 for ``resnet18.a1_in1k``), or
        None for a zoo model or a timm model without pretrained weights.
    """
    cfg = _timm_cfg(model_name)
    if cfg is None or not cfg.input_size:
        return None
    _, height, width = cfg.input_size
    return int(max(height, width))


def hub_cache() -> Path:
    """huggingface_hub's cache folder (``HF_HUB_CACHE``, by default under ``~/.cache``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_files(cfg: PretrainedCfg) -> tuple[str, tuple[str, ...]] | None:
    """``(repository, weight files timm tries)`` of weights on the Hub, or None."""
    if not cfg.hf_hub_id:
        return None
    repo = cfg.hf_hub_id.split("@")[0]  # timm's "repo@revision" spelling
    name = cfg.hf_hub_filename
    return repo, ((name,) if name else _WEIGHT_FILES)


def weights_cached(model_name: str) -> bool:
    """Whether the Hugging Face cache holds a timm model's pretrained weights (no network)."""
    from huggingface_hub import try_to_load_from_cache

    cfg = _timm_cfg(model_name)
    hub = None if cfg is None else _hub_files(cfg)
    if hub is None:
        return False
    repo, files = hub
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def weights_available(model_name: str, timeout: float | None = None) -> bool:
    """Whether ``timm.create_model(pretrained=True)`` would find the weights.

    Cached weights are available. Otherwise, unless ``HF_HUB_OFFLINE=1`` (then nothing more is
    asked), one metadata request per weight file, without retries, asks the Hub whether it can
    serve them: a machine with no route to the Hub (a cluster's compute node) is told at once or
    within ``timeout``, where a download attempt retries for most of a minute before failing.

    Args:
        model_name: ``model.name`` of a timm model, e.g. ``"timm/resnet18.a1_in1k"``.
        timeout: seconds a request may take; by default huggingface_hub's own for it
            (``HF_HUB_ETAG_TIMEOUT``, 10 s).
    """
    if weights_cached(model_name):
        return True
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError

    cfg = _timm_cfg(model_name)
    hub = None if cfg is None else _hub_files(cfg)
    if hub is None or constants.HF_HUB_OFFLINE:
        return False
    repo, files = hub
    timeout = constants.HF_HUB_ETAG_TIMEOUT if timeout is None else timeout
    for file in files:
        try:
            get_hf_file_metadata(hf_hub_url(repo, file), timeout=timeout)
            return True
        except EntryNotFoundError:  # a 404 (no cache is read here): timm tries the next one
            continue
        except Exception:  # no network, a proxy's refusal, a gated repository: not here
            return False
    return False


def weights_unavailable_message(model_name: str) -> str:
    """The one line for ``model.pretrained=true`` when timm could not get the weights.

    Args:
        model_name: ``model.name``, with or without the ``timm/`` prefix.
    """
    from huggingface_hub import constants

    name = TIMM_PREFIX + model_name.removeprefix(TIMM_PREFIX)
    cache = str(hub_cache()).replace(os.path.expanduser("~"), "~", 1)
    why = ("the machine is offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE
           else "the Hugging Face Hub cannot be reached from this machine")
    connect = "unset HF_HUB_OFFLINE and connect once" if constants.HF_HUB_OFFLINE else (
        "connect once")
    return (f"model.pretrained=true: {name}'s weights are not in the Hugging Face cache "
            f"({cache}) and {why}; {connect} to download them, or set model.weights=FILE to a "
            "local state_dict (with model.pretrained=false)")


def gpu_pretrained_choice(channels: int, side: int) -> PretrainedChoice | None:
    """The pretrained backbone ``auto`` fine-tunes on a GPU, or None to keep the usual choice.

    Only the caller knows the device: call this for GPU training only.

    Args:
        channels: 3 (RGB) or 1 (grey) image channels; other counts get None.
        side: the training images' (median) side in pixels; below :data:`MIN_SIDE`, None.

    Returns:
        :data:`GPU_MODEL`, pretrained, at its pretraining size, with the line to print; None
        when the images do not qualify or the weights cannot be had
        (:func:`weights_available`: offline without a cached copy, or no route to the Hub).
    """
    if channels not in (1, 3) or side < MIN_SIDE or not weights_available(GPU_MODEL):
        return None
    size = pretrained_input_size(GPU_MODEL)
    if size is None:  # timm dropped the weights' description: train as without them
        return None
    kind = "grey" if channels == 1 else "RGB"
    reason = (f"auto: {GPU_MODEL} pretrained on ImageNet at {size}x{size} for {side}x{side} "
              f"{kind} images, training on GPU; choose with model.name=... "
              "model.pretrained=... data.image_size=...")
    return PretrainedChoice(GPU_MODEL, True, size, reason)
