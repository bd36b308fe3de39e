"""Reading weights from local files (no hub, no pickled code)."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auxilia.paths import regular_file

_BACKBONE = "backbone."
_CLASSIFIER = "classifier."


@dataclass
class WeightsFile:
    """The parts of a weights file a new model can take.

    Attributes:
        backbone: the backbone's state_dict (the whole file for a plain state_dict).
        classifier: the main classifier's state_dict (``weight``, ``bias``) of an auxilia
            checkpoint; empty for other files.
        from_run: whether the file is an auxilia checkpoint (a run's ``best.pt``/``last.pt``),
            whose backbone keys are the backbone module's own (a timm backbone's under
            ``model.``).
    """

    backbone: dict[str, torch.Tensor]
    classifier: dict[str, torch.Tensor] = field(default_factory=dict)
    from_run: bool = False


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a backbone's state_dict from a local ``.safetensors``, ``.pth`` or ``.pt`` file.

    See :func:`read_weights`; an auxilia checkpoint gives its backbone's weights only.

    Raises:
        FileNotFoundError: no such file.
        OSError: the path is a directory, a FIFO, a device or a socket, or cannot be read
            (:func:`auxilia.paths.regular_file`); the message names it.
        ValueError: the file cannot be read (corrupted, or pickles objects other than tensors,
            which are refused) or does not hold a mapping of names to tensors; the message
            names the file.
    """
    return read_weights(path).backbone


def read_weights(path: str | Path) -> WeightsFile:
    """Read a local ``.safetensors``, ``.pth`` or ``.pt`` weights file, split into its parts.

    Checkpoints that wrap the weights under ``"state_dict"`` or ``"model"`` are unwrapped, and a
    ``"module."`` prefix (DataParallel) is stripped. ``.pth``/``.pt`` files are read with
    ``torch.load(weights_only=True)``: no pickled code runs. An auxilia checkpoint (a run's
    ``best.pt``) gives its backbone and its main classifier; training-only heads are dropped.

    Raises:
        FileNotFoundError: no such file.
        OSError: the path is a directory, a FIFO, a device or a socket, or cannot be read
            (:func:`auxilia.paths.regular_file`); the message names it.
        ValueError: the file cannot be read (corrupted, or pickles objects other than tensors,
            which are refused) or does not hold a mapping of names to tensors; the message
            names the file.
    """
    path = regular_file(path, "weights file")  # never opens a FIFO or reads /dev/zero
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refusals, damaged archives, safetensors errors
        raise ValueError(f"cannot read weights file {path}: {describe_load_error(err)} "
                         "(corrupted, or holds pickled objects other than tensors; auxilia "
                         "loads tensors only and never runs pickled code)") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if not any(k.startswith(_BACKBONE) for k in state):
        return WeightsFile(state)
    # an auxilia MultiExitModel checkpoint: backbone.*, classifier.*, heads.* (training only)
    return WeightsFile(_part(state, _BACKBONE), _part(state, _CLASSIFIER), from_run=True)


def _part(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_run_classifier(classifier: nn.Linear, path: str | Path) -> bool:
    """Load the main classifier of an auxilia checkpoint into ``classifier`` when it fits.

    A run's checkpoint given as ``model.weights`` then reproduces the run's predictions. A
    classifier for another number of classes is left as initialised, with a warning naming the
    file and both class counts (the backbone is loaded all the same, by the backbone's loader).
    Plain state_dict files hold no auxilia classifier and change nothing.

    Args:
        classifier: the new model's main classifier.
        path: the ``model.weights`` file.

    Returns:
        Whether the classifier was loaded.
    """
    saved = read_weights(path).classifier
    if not saved:
        return False
    own = classifier.state_dict()
    if set(saved) == set(own) and all(saved[k].shape == own[k].shape for k in own):
        classifier.load_state_dict(saved)
        return True
    warnings.warn(
        f"model.weights={path}: loaded the backbone only; the checkpoint's classifier "
        f"({_describe(saved)}) does not fit this model's ({_describe(own)}), so the "
        "classifier starts from its initialisation", stacklevel=2)
    return False


def _describe(linear: Mapping[str, torch.Tensor]) -> str:
    """``"10 classes, 64 features"`` for a linear layer's state_dict."""
    weight = linear.get("weight")
    if weight is None or weight.ndim != 2:
        return f"keys {sorted(linear)}"
    return f"{weight.shape[0]} classes, {weight.shape[1]} features"


def describe_load_error(err: Exception) -> str:
    """One line on why ``torch.load`` or safetensors failed on a file.

    torch's own message advises loading with ``weights_only=False``, which would run the
    pickled code; only its specific reason (e.g. ``Unsupported global: ...``) is kept.

    Args:
        err: what the loader raised.

    Returns:
        ``"<exception type>: <reason>"``.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line.split(" Please use")[0].removeprefix("WeightsUnpickler error: ")
                   for line in lines if "Unsupported" in line), None)
    if isinstance(err, pickle.UnpicklingError):
        return (f"{type(err).__name__}: refused by the weights-only unpickler: "
                f"{detail or 'the file pickles objects other than tensors and containers'}")
    return f"{type(err).__name__}: {detail or (lines[0] if lines else 'unreadable')}"
