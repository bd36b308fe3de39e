"""The device ``train.device`` (or ``--device``) names, checked against this machine."""

from __future__ import annotations

import re

import torch

from auxilia.config_errors import ConfigError

__all__ = ["DEVICE_FORMS", "pick_device", "run_device"]

DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N < the number of GPUs), mps"


def pick_device(name: str, key: str = "train.device") -> torch.device:
    """The device ``name`` names, checked against this machine.

    ``auto`` is CUDA when available, else the CPU. ``cpu`` takes no index: torch would accept
    ``cpu:0``, but as a device different from ``cpu`` in comparisons.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        key: the setting that gave ``name``, for the message: a config key
            (``train.device``) or a command-line option (``--device``).

    Raises:
        ConfigError: one line naming ``key``, the value, why and the valid forms.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = _device_problem(name, key)
    if problem:
        raise ConfigError(f"{_setting(key, repr(name))}: {problem}; valid: {DEVICE_FORMS}")
    return torch.device(name)


def run_device(requested: str | None, recorded: str) -> tuple[torch.device, str | None]:
    """Where a saved run is loaded (``auxilia eval``): ``--device``, else the run's own.

    Args:
        requested: ``--device``, or None.
        recorded: the run's ``train.device``.

    Returns:
        The device, and a one-line note when the run's device is not on this machine and
        the best one available is taken instead (a run trained on ``cuda:1`` evaluated on a
        laptop), else None.

    Raises:
        ConfigError: ``requested`` is not a device of this machine (naming ``--device``).
    """
    if requested is not None:
        return pick_device(requested, "--device"), None
    problem = _device_problem(recorded, "train.device")
    if not problem:
        return pick_device(recorded), None
    device = pick_device("auto")
    return device, (f"the run trained on train.device={recorded}, which this machine lacks "
                    f"({problem.split(';')[0]}): loaded on {device} instead (choose with "
                    "--device)")


def _setting(key: str, value: str) -> str:
    """``train.device='cuda'`` or ``--device 'cuda'``."""
    return f"{key} {value}" if key.startswith("--") else f"{key}={value}"


def _device_problem(name: str, key: str) -> str:
    """What is wrong with a device name on this machine, or ``""``."""
    if name == "auto":
        return ""
    cuda = re.fullmatch(r"cuda(?::(\d+))?", name)
    if cuda:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"CUDA is not available here; use {_setting(key, 'cpu')}"
        if cuda.group(1) is not None and int(cuda.group(1)) >= count:
            return (f"this machine has {count} GPU{'s' if count > 1 else ''} (cuda:0 to "
                    f"cuda:{count - 1})")
        return ""
    if name == "mps":
        available = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        return "" if available else f"MPS is not available here; use {_setting(key, 'cpu')}"
    if name == "cpu":
        return ""
    lowered = name.strip().lower()
    hint = {"gpu": "cuda", "cpu:0": "cpu", "mps:0": "mps"}.get(
        lowered, lowered if lowered in ("auto", "cpu", "cuda", "mps")
        or lowered.startswith("cuda:") else None)
    return f"not a device (did you mean {hint!r}?)" if hint else "not a device"
