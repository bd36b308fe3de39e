"""Reading weights from local files (no hub, no pickled code)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from a local ``.safetensors``, ``.pth`` or ``.pt`` file.

    Checkpoints that wrap the weights under ``"state_dict"`` or ``"model"`` are unwrapped, and a
    ``"module."`` prefix (DataParallel) is stripped. ``.pth``/``.pt`` files are read with
    ``torch.load(weights_only=True)``: no pickled code runs. An auxilia checkpoint (a run's
    ``best.pt``) gives its backbone's weights, without the classifier and heads.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file does not hold a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path), device="cpu")
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if any(k.startswith("backbone.") for k in state):  # an auxilia MultiExitModel checkpoint
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state
