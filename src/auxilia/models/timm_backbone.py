"""Any timm model as an auxilia :class:`Backbone`.

timm (Wightman, "PyTorch Image Models") exposes two feature taps: ``forward_intermediates``
(every stage or block plus the final, normed features) and ``features_only=True`` (a truncated
network that returns the stage maps listed in ``feature_info``). The default tap is
``forward_intermediates``: it covers CNNs, MLP-Mixers and ViTs alike, and its final features are
exactly the map the timm classifier pools (EfficientNet's ``conv_head`` + ``bn2`` output, a
ViT's normed tokens). Token sequences are reshaped to ``[B, C, H, W]`` grids, dropping prefix
(class / register) tokens.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.error import URLError

import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from torch import nn

from auxilia.models.backbone import Backbone
from auxilia.models.pretrained import weights_unavailable_message
from auxilia.models.weights import read_weights

FeatureMode = Literal["auto", "intermediates", "features_only"]


def _check_timm_name(name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the closest timm names if timm lacks it."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr('timm/' + c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown timm model 'timm/{name}'.{hint} Valid names are 'timm/<n>' for any n in "
        f"timm.list_models() ({len(timm.list_models())} architectures)."
    )


def _create(name: str, image_size: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with ``img_size`` for the models that take it (ViT, Mixer, ...).

    ``pretrained=True`` fetches the weights as timm does: from the Hugging Face cache, else
    from the Hub (nothing but the cache when ``HF_HUB_OFFLINE=1``).

    Raises:
        ValueError: ``pretrained`` weights neither cached nor downloadable (offline, or no route
            to the Hub), in one line saying how to get them or give a local file instead
            (:func:`~auxilia.models.pretrained.weights_unavailable_message`).
    """
    try:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            return timm.create_model(name, **kwargs)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, URLError, ConnectionError) as err:
        if not kwargs.get("pretrained"):
            raise
        raise ValueError(weights_unavailable_message(name)) from err


def _to_nchw(final: torch.Tensor, last: torch.Tensor, output_fmt: str) -> torch.Tensor:
    """Bring timm's final features to ``[B, C, H, W]`` on the grid of the last intermediate.

    ``final`` is ``[B, C, H, W]``, ``[B, H, W, C]`` (``output_fmt == "NHWC"``, e.g. Swin) or a
    token sequence ``[B, N, C]`` whose leading ``N - H*W`` tokens are prefix tokens to drop.
    """
    if final.ndim == 3:
        h, w = last.shape[-2:]
        tokens = final[:, final.shape[1] - h * w :]
        return tokens.transpose(1, 2).reshape(final.shape[0], final.shape[2], h, w)
    if final.ndim == 4 and output_fmt == "NHWC":
        return final.permute(0, 3, 1, 2)
    if final.ndim != 4:
        raise ValueError(f"cannot read a feature map from final features of shape "
                         f"{tuple(final.shape)}")
    return final


class TimmBackbone(Backbone):
    """A timm model cut at its feature taps.

    Args:
        name: timm architecture, with or without the ``"timm/"`` prefix (``"efficientnet_b0"``).
        in_chans: input channels.
        image_size: input side, passed as ``img_size`` to models that take it (ViT, Mixer) and
            used for one dry forward that fixes ``stage_channels`` / ``stage_strides``.
        pretrained: load timm's pretrained weights (off by default): from the Hugging Face
            cache, downloaded into it when the machine is online, or from a local file given as
            ``pretrained_cfg_overlay={"file": PATH}`` (timm then adapts them as it adapts its
            own, e.g. to ``in_chans=1``).
        weights: local ``.pth`` / ``.pt`` / ``.safetensors`` state_dict loaded with
            ``strict=False`` (classifier keys may be missing or unexpected).
        feature_mode: ``"intermediates"`` (``forward_intermediates``: every stage plus the final
            pooled map), ``"features_only"`` (the ``feature_info`` taps only; the last stage is
            then the last tap, e.g. 320 channels for EfficientNet-B0, not the 1280-channel head),
            or ``"auto"`` (intermediates when the model has them).
        **kwargs: passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ...).

    ``forward`` maps ``[B, in_chans, H, W]`` to ``{"s1": [B, C1, H/r1, W/r1], ..., "sN": ...}``;
    the last stage is the final feature map the timm classifier would pool.
    """

    family = "timm"

    def __init__(
        self,
        name: str,
        *,
        in_chans: int = 3,
        image_size: int = 32,
        pretrained: bool = False,
        weights: str | Path | None = None,
        feature_mode: FeatureMode = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        name = name.removeprefix("timm/")
        _check_timm_name(name)
        self.timm_name = name
        if feature_mode not in ("auto", "intermediates", "features_only"):
            raise ValueError(f"feature_mode must be auto/intermediates/features_only, "
                             f"got {feature_mode!r}")
        kwargs.update(pretrained=pretrained, in_chans=in_chans)
        model = None
        if feature_mode != "features_only":
            model = _create(name, image_size, num_classes=0, **kwargs)
            if not hasattr(model, "forward_intermediates"):
                if feature_mode == "intermediates":
                    raise ValueError(f"timm model {name!r} has no forward_intermediates")
                model = None
        if model is None:
            feature_mode = "features_only"
            model = _create(name, image_size, features_only=True, **kwargs)
        else:
            feature_mode = "intermediates"
        self.feature_mode: FeatureMode = feature_mode
        self.model = model
        self._output_fmt = str(getattr(model, "output_fmt", "NCHW"))
        self._append_final = False
        if weights is not None:
            load_timm_weights(self.model, weights)
        self._describe_stages(in_chans, image_size)

    def _taps(self, x: torch.Tensor) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Final features (``None`` in features_only mode) and the intermediate maps."""
        if self.feature_mode == "features_only":
            return None, list(self.model(x))
        final, inter = self.model.forward_intermediates(x)
        return _to_nchw(final, inter[-1], self._output_fmt), list(inter)

    @torch.no_grad()
    def _describe_stages(self, in_chans: int, image_size: int) -> None:
        """One dry forward on ``[1, in_chans, image_size, image_size]`` to read the stages."""
        was_training = self.training
        self.eval()
        final, inter = self._taps(torch.zeros(1, in_chans, image_size, image_size))
        self.train(was_training)
        reductions = _reductions(self.model, len(inter))
        maps, strides = list(inter), list(reductions)
        if final is not None:
            # The final map either is the last tap (ResNet; ViT after its norm) or follows it
            # (EfficientNet's conv_head): replace or append accordingly.
            self._append_final = final.shape[1:] != inter[-1].shape[1:]
            if self._append_final:
                maps.append(final)
                strides.append(strides[-1])
            else:
                maps[-1] = final
        for i, m in enumerate(maps):
            strides[i] = strides[i] or max(1, round(image_size / m.shape[-2]))
        self.stage_names = tuple(f"s{i + 1}" for i in range(len(maps)))
        self.stage_channels = {n: int(m.shape[1]) for n, m in zip(self.stage_names, maps,
                                                                    strict=True)}
        self.stage_strides = dict(zip(self.stage_names, strides, strict=True))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"s1": ..., "sN": ...}``, every tap as ``[B, C, H, W]``."""
        final, maps = self._taps(x)
        if final is not None:
            if self._append_final:
                maps.append(final)
            else:
                maps[-1] = final
        return dict(zip(self.stage_names, maps, strict=True))


def _reductions(model: nn.Module, n: int) -> list[int]:
    """Per-tap strides from ``feature_info`` when it lists ``n`` taps, else zeros (unknown)."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return [0] * n
    reductions = info.reduction() if hasattr(info, "reduction") else [
        int(f.get("reduction", 0)) for f in info
    ]
    return [int(r) for r in reductions] if len(reductions) == n else [0] * n


def load_timm_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state_dict into a timm model, non-strictly.

    Classifier keys may be missing or unexpected; backbone keys that are missing are reported in
    a warning. An auxilia checkpoint of a timm run holds the timm module under
    :class:`TimmBackbone`'s ``model.`` attribute; that prefix is removed.

    Raises:
        ValueError: no key of the file matches the model (naming the file and the first missing
            keys), or matching keys have other shapes.
    """
    weights = read_weights(path)
    state = weights.backbone
    if weights.from_run:
        state = {k.removeprefix("model."): v for k, v in state.items()}
    own = model.state_dict()
    matched = [k for k in state if k in own]
    if not matched:
        missing = list(own)[:5]
        raise ValueError(
            f"{path}: no key matches the timm model's backbone; first missing keys: {missing}; "
            f"first keys in the file: {list(state)[:5]}"
        )
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in matched if state[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"{path}: {len(bad)} tensors have the wrong shape, e.g. {bad[:3]}")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        warnings.warn(
            f"{path}: {len(result.missing_keys)} backbone keys not in the file, e.g. "
            f"{result.missing_keys[:5]}; they keep their initialisation",
            stacklevel=2,
        )
