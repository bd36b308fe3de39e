"""Reading weights from local files (no hub, no pickled code)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from auxilia.paths import regular_file


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from a local ``.safetensors``, ``.pth`` or ``.pt`` file.

    Checkpoints that wrap the weights under ``"state_dict"`` or ``"model"`` are unwrapped, and a
    ``"module."`` prefix (DataParallel) is stripped. ``.pth``/``.pt`` files are read with
    ``torch.load(weights_only=True)``: no pickled code runs. An auxilia checkpoint (a run's
    ``best.pt``) gives its backbone's weights, without the classifier and heads.

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
    if any(k.startswith("backbone.") for k in state):  # an auxilia MultiExitModel checkpoint
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


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
