"""Model registry: our zoo by name, and any timm model as ``"timm/<name>"``.

Each zoo module defines a ``MODELS`` dict of its factories; this module merges them. A factory
takes keyword arguments ``in_chans`` and ``image_size`` (ignored by fully convolutional models)
plus model-specific options, and returns a :class:`~auxilia.models.backbone.Backbone`.

Weights are loaded into built models here too (:func:`load_backbone_weights`,
:func:`load_model_weights`): loading depends on the model's family, so it sits above
:mod:`auxilia.models.weights` (which reads files) and the dependency goes one way.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from auxilia.models.backbone import Backbone
from auxilia.models.scaled import ScaleConfig, preset_for, preset_names
from auxilia.models.stochastic_depth import check_drop_path
from auxilia.models.weights import load_run_classifier, read_state_dict
from auxilia.models.zoo import (
    cifar_resnet,
    convnet13,
    mlp_mixer,
    mobilenetv2,
    resnet,
    shufflenet,
    small_cnn,
    vgg,
    wrn,
)

TIMM_PREFIX = "timm/"

_ZOO_MODULES: tuple[ModuleType, ...] = (
    cifar_resnet, resnet, wrn, convnet13, small_cnn, vgg, mobilenetv2, shufflenet, mlp_mixer,
)


def _merge(modules: tuple[ModuleType, ...]) -> dict[str, Callable[..., Backbone]]:
    """Union of the modules' ``MODELS`` dicts; a name defined twice is a bug."""
    merged: dict[str, Callable[..., Backbone]] = {}
    for module in modules:
        for name, factory in module.MODELS.items():
            if name in merged:
                raise RuntimeError(f"model name {name!r} registered twice ({module.__name__})")
            merged[name] = factory
    return merged


MODELS: dict[str, Callable[..., Backbone]] = _merge(_ZOO_MODULES)


def list_models() -> list[str]:
    """Names of our zoo models and of the EfficientNet presets, sorted.

    Any timm architecture also works as ``"timm/<name>"`` (see ``timm.list_models()``); those are
    not listed here.
    """
    return sorted([*MODELS, *preset_names()])


def _takes(option: str) -> list[str]:
    """The zoo models whose factory takes ``option`` (``drop_path``, ``scale``)."""
    return sorted(name for name, factory in MODELS.items()
                  if option in inspect.signature(factory).parameters)


def _refuse(name: str, option: str, why: str) -> ValueError:
    """The error for an option ``name`` cannot take, listing the models that can."""
    return ValueError(f"model.{option} does not apply to {name!r}: {why}; leave model.{option} "
                      f"unset, or use one of {', '.join(_takes(option))}")


def _unknown(name: str) -> ValueError:
    """The error for a name that is neither in the zoo nor prefixed ``timm/``."""
    close = difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"unknown model {name!r}.{hint} Valid names: {', '.join(list_models())}, "
        f"or '{TIMM_PREFIX}<name>' for any timm model."
    )


def load_zoo_weights(model: Backbone, path: str | Path) -> None:
    """Load a local state_dict into a zoo model, strictly.

    Raises:
        ValueError: keys or shapes differ, naming the file and the first mismatching keys.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not fit {type(model).__name__}: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(wrong)} with other shapes {wrong[:5]}"
        )
    model.load_state_dict(state, strict=True)


def load_backbone_weights(model: Backbone, path: str | Path) -> None:
    """Load a local state_dict, or a run's checkpoint, into a built backbone.

    Zoo models are loaded strictly (:func:`load_zoo_weights`), timm models non-strictly
    (:func:`~auxilia.models.timm_backbone.load_timm_weights`), as ``create_backbone(weights=)``
    does.

    Raises:
        ValueError: the weights do not fit, naming the file.
    """
    if model.family == "timm":  # timm is imported already: the model is one
        from auxilia.models.timm_backbone import load_timm_weights

        load_timm_weights(model.model, path)  # type: ignore[arg-type]
    else:
        load_zoo_weights(model, path)


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load a weights file into a built multi-exit model: its backbone, and its classifier.

    The backbone is loaded as ``model.weights`` loads it (:func:`load_backbone_weights`);
    the main classifier of an auxilia checkpoint is loaded when it fits
    (:func:`~auxilia.models.weights.load_run_classifier`). Training-only heads are never loaded.

    Args:
        model: a :class:`~auxilia.models.multi_exit.MultiExitModel` (or any module with
            ``backbone`` and ``classifier``).
        path: a run's checkpoint, or a backbone state_dict file.

    Raises:
        ValueError: the backbone's weights do not fit (naming the file).
    """
    load_backbone_weights(model.backbone, path)  # type: ignore[arg-type]
    load_run_classifier(model.classifier, path)  # type: ignore[arg-type]


def create_backbone(
    name: str,
    *,
    in_chans: int = 3,
    image_size: int = 32,
    pretrained: bool = False,
    weights: str | Path | None = None,
    drop_path: float = 0.0,
    scale: ScaleConfig | None = None,
    **kwargs: Any,
) -> Backbone:
    """Build a backbone by name.

    Args:
        name: a zoo name (see :func:`list_models`) or ``"timm/<timm name>"``.
        in_chans: input channels.
        image_size: input side; used by models that need it (timm ViT / Mixer, ConvNet-13 check).
        pretrained: timm models only: timm's pretrained weights, from the Hugging Face cache or
            downloaded into it (:class:`~auxilia.models.timm_backbone.TimmBackbone`). Our zoo
            ships none.
        weights: local state_dict file (``.pth``, ``.pt``, ``.safetensors``), or a run's
            checkpoint (its backbone part). Loaded strictly into zoo models, non-strictly
            (classifier keys aside) into timm models.
        drop_path: stochastic depth (Huang et al. 2016) of the last residual block, linear over
            the blocks (:mod:`auxilia.models.stochastic_depth`); timm's ``drop_path_rate``.
        scale: compound scaling of a zoo family's depth and width (:mod:`auxilia.models.scaled`;
            the resolution is the data's, scaled where ``data.image_size=auto`` is resolved).
        **kwargs: model options, e.g. ``dropout=0.3`` for WRNs, ``drop_rate`` for timm.

    Returns:
        The backbone, in training mode.

    Raises:
        ValueError: unknown name (with the closest valid ones), ``pretrained`` on a zoo model,
            weights that do not fit, ``drop_path`` on a model without residual blocks, or
            ``scale`` on a family that cannot scale.
    """
    check_drop_path(drop_path)
    preset = preset_for(name)
    if name.startswith(TIMM_PREFIX) or preset is not None:
        if scale is not None:
            raise _refuse(name, "scale", "a timm model scales by its own name (the published "
                          f"rows are {preset_names()[0]} .. {preset_names()[-1]})")
        if drop_path and "drop_path_rate" in kwargs:
            raise ValueError("model.drop_path and model.kwargs.drop_path_rate both set the "
                             "stochastic depth; keep model.drop_path only")
        if drop_path:
            kwargs["drop_path_rate"] = drop_path  # timm: linear over its blocks, as ours
        from auxilia.models.timm_backbone import TimmBackbone  # timm costs 2 s to import

        timm_name = preset.timm_name if preset is not None else name
        return TimmBackbone(timm_name, in_chans=in_chans, image_size=image_size,
                            pretrained=pretrained, weights=weights, **kwargs)
    if name not in MODELS:
        raise _unknown(name)
    takes = inspect.signature(MODELS[name]).parameters
    if drop_path:
        if "drop_path" not in takes:
            raise _refuse(name, "drop_path", "it has no residual blocks to drop")
        kwargs["drop_path"] = drop_path
    if scale is not None:
        if "scale" not in takes:
            raise _refuse(name, "scale", "its family has no block repeats and widths to scale")
        kwargs["scale"] = scale.multipliers()
    if pretrained:
        raise ValueError(
            f"no pretrained weights are shipped for {name!r}; pass weights='path/to/state_dict' "
            f"(.pth, .pt or .safetensors), or use a '{TIMM_PREFIX}<name>' model with pretrained"
        )
    model = MODELS[name](in_chans=in_chans, image_size=image_size, **kwargs)
    if weights is not None:
        load_zoo_weights(model, weights)
    return model
