"""The training device ``train.device`` names, checked against this machine."""

from __future__ import annotations

import re

import torch

from auxilia.config_errors import ConfigError

__all__ = ["DEVICE_FORMS", "pick_device"]

DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N < the number of GPUs), mps"


def pick_device(name: str) -> torch.device:
    """The training device for ``train.device``, checked against this machine.

    ``auto`` is CUDA when available, else the CPU. ``cpu`` takes no index: torch would accept
    ``cpu:0``, but as a device different from ``cpu`` in comparisons.

    Raises:
        ConfigError: one line naming ``train.device``, the value, why and the valid forms.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = _device_problem(name)
    if problem:
        raise ConfigError(f"train.device={name!r}: {problem}; valid: {DEVICE_FORMS}")
    return torch.device(name)


def _device_problem(name: str) -> str:
    """What is wrong with a device name on this machine, or ``""``."""
    cuda = re.fullmatch(r"cuda(?::(\d+))?", name)
    if cuda:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return "CUDA is not available here; use train.device=cpu"
        if cuda.group(1) is not None and int(cuda.group(1)) >= count:
            return (f"this machine has {count} GPU{'s' if count > 1 else ''} (cuda:0 to "
                    f"cuda:{count - 1})")
        return ""
    if name == "mps":
        available = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        return "" if available else "MPS is not available here; use train.device=cpu"
    if name == "cpu":
        return ""
    key = name.strip().lower()
    hint = {"gpu": "cuda", "cpu:0": "cpu", "mps:0": "mps"}.get(
        key, key if key in ("auto", "cpu", "cuda", "mps") or key.startswith("cuda:") else None)
    return f"not a device (did you mean {hint!r}?)" if hint else "not a device"
