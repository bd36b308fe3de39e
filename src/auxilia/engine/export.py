"""Export the deployable classifier of a trained run: TorchScript, ONNX or a safetensors file.

Every export holds :meth:`MultiExitModel.strip`'s network only: backbone, global average pooling
and the main classifier, every training-only head removed. The exported model maps a
normalised ``float32`` batch ``[B, C, H, W]`` (the batch size is free) to logits
``[B, num_classes]``; a JSON sidecar (``model.json`` beside ``model.*``) says how to normalise
its input and names the classes, so the file is usable without auxilia.

ONNX goes through the TorchScript-based exporter (``dynamo=False``): the ``torch.export``-based
one needs the ``onnxscript`` package, which the offline install lacks; the legacy exporter needs
nothing beyond torch and writes a graph with a dynamic batch axis.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auxilia.engine.reload import load_run, resolve_checkpoint
from auxilia.engine.setup import Setup

FORMATS: dict[str, str] = {"torchscript": ".pt", "onnx": ".onnx", "state_dict": ".safetensors"}
"""Export formats and the suffix of their default file name."""

ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ExportError(ValueError):
    """An export that cannot proceed; the message names the file and the fix."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote.

    Attributes:
        path: the exported model file.
        sidecar: its JSON description.
        format: one of :data:`FORMATS`.
        params_exported: parameters of the exported (stripped) model.
        params_trained: parameters of the trained model, training-only heads included.
    """

    path: Path
    sidecar: Path
    format: str
    params_exported: int
    params_trained: int


def run_folder_of(path: str | Path) -> Path:
    """The run folder of a run folder or of a checkpoint file inside ``<run>/checkpoints/``."""
    p = Path(path)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def default_export_path(path: str | Path, fmt: str) -> Path:
    """``<run>/export/model.{pt,onnx,safetensors}`` for a run folder or one of its checkpoints."""
    return run_folder_of(path) / "export" / f"model{_suffix(fmt)}"


def count_params(model: nn.Module) -> int:
    """Number of parameter values, each shared parameter counted once."""
    return sum(p.numel() for p in model.parameters())


def export_run(path: str | Path, fmt: str, out: str | Path | None = None, which: str = "best",
               overwrite: bool = False) -> ExportResult:
    """Rebuild a run's model on the CPU and export its stripped classifier.

    Args:
        path: run folder or checkpoint file.
        fmt: ``"torchscript"``, ``"onnx"`` or ``"state_dict"`` (a safetensors file).
        out: file to write; default :func:`default_export_path`.
        which: checkpoint of a run folder, ``"best"`` (on validation) or ``"last"``.
        overwrite: replace an existing file.

    Raises:
        ExportError: unknown format, or the file exists and ``overwrite`` is false.
    """
    suffix = _suffix(fmt)
    target = Path(out) if out is not None else default_export_path(path, fmt)
    if target.is_dir():
        target = target / f"model{suffix}"
    sidecar = target.with_suffix(".json")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists; pass --overwrite to replace it or --out "
                          "to write elsewhere")
    setup, checkpoint = load_run(path, which, device="cpu")
    card = model_card(setup, checkpoint, resolve_checkpoint(path, which))
    _check_sidecar(sidecar, card, overwrite)
    model = setup.model.strip().eval()
    example = example_batch(setup)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        export_torchscript(model, example, target)
    elif fmt == "onnx":
        export_onnx(model, example, target)
    else:
        export_state_dict(model, target, {"auxilia": json.dumps(card)})
    _write_sidecar(sidecar, card, fmt, target)
    return ExportResult(target, sidecar, fmt, card["params"], card["params_trained"])


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace ``model`` on ``example`` and save it with ``torch.jit.save``."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export to ONNX (opset :data:`ONNX_OPSET`) with a dynamic batch axis.

    Input ``images`` ``[batch, C, H, W]``, output ``logits`` ``[batch, num_classes]``.
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def export_state_dict(model: nn.Module, path: Path, metadata: dict[str, str] | None = None
                      ) -> None:
    """Save ``model.state_dict()`` (parameters and buffers) with ``safetensors``."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


def example_batch(setup: Setup, size: int = 2) -> torch.Tensor:
    """``size`` normalised images of the run's dataset (validation, else test, else train)."""
    data = setup.data
    split = next((s for s in (data.val, data.test, data.train) if len(s)), data.train)
    images = split.images[:size]
    if len(images) < size:
        images = images.repeat(size, 1, 1, 1)[:size]
    with torch.no_grad():
        return setup.eval_view(images.to(setup.device)).float()


def model_card(setup: Setup, checkpoint: dict[str, Any], source: Path) -> dict[str, Any]:
    """What a user of the exported file needs: input shape and normalisation, class names."""
    cfg, data = setup.config, setup.data
    stripped = setup.model.strip()
    return {
        "model": cfg.model.name,
        "dataset": cfg.data.source,
        "run": cfg.run_name(),
        "num_classes": data.num_classes,
        "class_names": list(data.classes),
        "input_shape": ["batch", *data.image_shape],
        "input": "float32 images in [0, 1] (uint8 / 255), then (x - mean) / std per channel",
        "mean": list(data.mean),
        "std": list(data.std),
        "output": "logits [batch, num_classes]",
        "params": count_params(stripped),
        "params_trained": count_params(setup.model),
        "source": {"checkpoint": str(source.resolve()), "step": checkpoint["loop"]["step"]},
        "files": {},
    }


def _suffix(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _check_sidecar(sidecar: Path, card: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix exports of two checkpoints under one sidecar unless ``overwrite``."""
    existing = _read_sidecar(sidecar)
    if existing and existing.get("source") != card["source"] and not overwrite:
        raise ExportError(
            f"{sidecar} describes another checkpoint ({existing.get('source')}); pass "
            "--overwrite to replace it or --out to export elsewhere")


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}


def _write_sidecar(sidecar: Path, card: dict[str, Any], fmt: str, target: Path) -> None:
    """Write the card, keeping the other formats' entries when they come from the same source."""
    existing = _read_sidecar(sidecar)
    files = existing.get("files", {}) if existing.get("source") == card["source"] else {}
    card = {**card, "files": {**files, fmt: target.name}}
    sidecar.write_text(json.dumps(card, indent=2) + "\n")
