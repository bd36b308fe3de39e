"""Export the deployable classifier of a trained run: TorchScript, ONNX or a safetensors file.

Every export holds :meth:`MultiExitModel.strip`'s network only: backbone, global average pooling
and the main classifier, every training-only head removed. The exported model maps a
normalised ``float32`` batch ``[B, C, H, W]`` (the batch size is free) to logits
``[B, num_classes]``; a JSON sidecar (``model.json`` beside ``model.*``) says how to normalise
its input and names the classes, so the file is usable without auxilia.

ONNX goes through the TorchScript-based exporter (``dynamo=False``, an argument since torch
2.5, hence auxilia's lower bound; torch 2.9 made ``True`` the default): the ``torch.export``-based
one needs the ``onnxscript`` package too, a dependency auxilia does without; the legacy exporter
needs only the ``onnx`` package (a main dependency) and writes a graph with a dynamic batch axis.

Every file is written to a temporary sibling and renamed (:func:`atomic_write`), and a failed
export is undone as a whole (:func:`~auxilia.engine.export_checks.all_or_nothing`): whatever
failed (the exporter, the disk, Ctrl-C), the previous files are as they were and nothing new is
left, not even the ``export/`` folder it created. Everything is checked before anything is
written: the format and its package, the file name (its suffix must be the format's, so the
model and its ``.json`` sidecar never share a name), the place (no device, FIFO or socket,
nothing in ``/dev``, ``/proc`` or ``/sys``: :mod:`auxilia.engine.export_checks`), files in the
way, and that the checkpoint loads.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auxilia import jsonio
from auxilia.atomic_files import atomic_write, atomic_write_path
from auxilia.data.config import RESIZE_METHOD
from auxilia.data.file_images import read_pixels
from auxilia.engine.checkpoint import resolve_checkpoint
from auxilia.engine.export_checks import all_or_nothing, check_out, check_packages
from auxilia.engine.header import data_lines, model_line
from auxilia.engine.reload import load_run
from auxilia.engine.runfolder import is_run_folder
from auxilia.engine.setup import Setup

FORMATS: dict[str, str] = {"torchscript": ".pt", "onnx": ".onnx", "state_dict": ".safetensors"}
"""Export formats and the suffix their file name must end in."""

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
        header: the data and model lines a training run prints (:mod:`auxilia.engine.header`).
    """

    path: Path
    sidecar: Path
    format: str
    params_exported: int
    params_trained: int
    header: list[str] = field(default_factory=list)


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


def export_target(path: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """The model file an export of ``path`` in format ``fmt`` writes.

    ``out`` may be ``None`` (:func:`default_export_path`), an existing folder or a string
    ending in ``/`` (a folder, created if missing: ``<out>/model<suffix>``), or a file name:
    one without a suffix gets the format's suffix appended; another suffix is refused.

    Raises:
        ExportError: unknown format, ``out`` ends in a suffix other than the format's, or it
            (or the file derived from it) is a device, FIFO or socket or lies in ``/dev``,
            ``/proc`` or ``/sys``.
    """
    suffix = _suffix(fmt)
    if out is None:
        return _checked(default_export_path(path, fmt), out)
    check_out(out, out, ExportError)  # before a suffix turns /dev/full into /dev/full.pt
    target = Path(out)
    if str(out).endswith(("/", os.sep)) or target.is_dir():
        target = target / f"model{suffix}"
    elif not target.suffix:
        target = target.with_name(target.name + suffix)
    elif target.suffix != suffix:
        raise ExportError(f"--out {out} must end in {suffix} for --format {fmt}, not "
                          f"{target.suffix} (the description beside it is the .json); use e.g. "
                          f"--out {target.with_suffix(suffix)}")
    _refuse_run_files(target, run_folder_of(path))
    return _checked(target, out)


def _checked(target: Path, out: str | Path | None) -> Path:
    """``target`` once neither it nor its sidecar is a special file (a FIFO would block)."""
    for file in (target, target.with_suffix(".json")):
        check_out(file, out, ExportError)
    return target


def _refuse_run_files(target: Path, own: Path) -> None:
    """An export (model or sidecar) lands in a run folder only in its own run's ``export/``."""
    own = own.resolve()
    for file in (target, target.with_suffix(".json")):
        parent = file.resolve().parent
        for run in (parent, parent.parent):
            if not is_run_folder(run) or file.resolve() == run:
                continue
            if run != own:
                raise ExportError(
                    f"--out {target} would write {file} inside the run folder {run}, another "
                    f"run's; export to {own / 'export'}/ (the default) or outside run folders")
            if parent.name != "export":
                raise ExportError(
                    f"--out {target} would write {file} inside the run folder {run}, next to "
                    f"its own files (checkpoints, config, data fingerprint); export to "
                    f"{run / 'export'}/ (the default) or outside the run folder")


def export_run(path: str | Path, fmt: str, out: str | Path | None = None, which: str = "best",
               overwrite: bool = False, data_root: str | Path | None = None) -> ExportResult:
    """Rebuild a run's model on the CPU and export its stripped classifier.

    Args:
        path: run folder or checkpoint file.
        fmt: ``"torchscript"``, ``"onnx"`` or ``"state_dict"`` (a safetensors file).
        out: file or folder to write (see :func:`export_target`).
        which: checkpoint of a run folder, ``"best"`` (on validation) or ``"last"``.
        overwrite: replace an existing model file, and a sidecar auxilia did not write or
            that describes another checkpoint.
        data_root: the data's new root when it moved since training (its fingerprint must
            match the run's).

    Raises:
        ExportError: unknown format, wrong suffix, a special file or system path as ``out``,
            a file in the way and ``overwrite`` false; nothing is written then.
        ImportError: the format's package is missing, naming the install command.
        CheckpointError: the checkpoint does not load; nothing is written then.
        OSError: a write failed; the message names the file, which is unchanged.

    Whatever is raised (``KeyboardInterrupt`` included), the model file and its sidecar are as
    they were before, and folders the export created are removed again.
    """
    target = export_target(path, fmt, out)
    sidecar = target.with_suffix(".json")
    _check_target(target, overwrite)
    check_packages(fmt)  # a missing onnx names its install command before any work
    setup, checkpoint = load_run(path, which, device="cpu", data_root=data_root)
    card = model_card(setup, checkpoint, resolve_checkpoint(path, which))
    _check_sidecar(sidecar, card, overwrite)
    model = setup.model.strip().eval()
    example = example_batch(setup)
    with all_or_nothing(target, sidecar):  # a failure leaves no folder, file or sidecar of ours
        if fmt == "torchscript":
            export_torchscript(model, example, target)
        elif fmt == "onnx":
            export_onnx(model, example, target)
        else:
            export_state_dict(model, target, {"auxilia": jsonio.dumps(card)})
        _write_sidecar(sidecar, card, fmt, target)
    return ExportResult(target, sidecar, fmt, card["params"], card["params_trained"],
                        [*data_lines(setup), model_line(setup)])


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace ``model`` on ``example`` and save it atomically with ``torch.jit.save``."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        traced = torch.jit.trace(model, example)
        atomic_write(path, lambda f: torch.jit.save(traced, f))


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export atomically to ONNX (opset :data:`ONNX_OPSET`) with a dynamic batch axis.

    Input ``images`` ``[batch, C, H, W]``, output ``logits`` ``[batch, num_classes]``.
    """
    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})

    atomic_write_path(path, write)  # the exporter takes a path, not a file object


def export_state_dict(model: nn.Module, path: Path, metadata: dict[str, str] | None = None
                      ) -> None:
    """Save ``model.state_dict()`` (parameters and buffers) atomically with ``safetensors``."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def example_batch(setup: Setup, size: int = 2) -> torch.Tensor:
    """``size`` normalised images of the run's dataset (validation, else test, else train)."""
    data = setup.data
    split = next((s for s in (data.val, data.test, data.train) if len(s)), data.train)
    images = read_pixels(split.images, slice(0, size))
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
        "resize": _resize_card(cfg.data.size, data.image_shape),
        "mean": list(data.mean),
        "std": list(data.std),
        "output": "logits [batch, num_classes]",
        "params": count_params(stripped),
        "params_trained": count_params(setup.model),
        "source": {"checkpoint": str(source.resolve()), "step": checkpoint["loop"]["step"]},
        "files": {},
    }


def _resize_card(size: int | None, shape: tuple[int, int, int]) -> dict[str, Any]:
    """How training images were brought to the input shape, to do the same outside auxilia."""
    if size is None:
        return {"size": None, "method": f"none: the training images were {shape[1]}x{shape[2]}; "
                                        "give images of that size"}
    return {"size": [size, size], "method": RESIZE_METHOD,
            "library": "PIL Image.resize(Image.BILINEAR) for image files; "
                       "torch.nn.functional.interpolate(bilinear, antialias=True) for arrays"}


def _suffix(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _check_target(target: Path, overwrite: bool) -> None:
    """Refuse a model file in the way (unless ``overwrite``) or a file where a folder must be."""
    if target.is_dir():
        raise ExportError(f"{target} is a folder; pass --out a file name ending in "
                          f"{target.suffix}, or another folder")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise ExportError(f"{target} already exists; pass --overwrite to replace it or --out "
                          "to write elsewhere")
    folder = next((p for p in target.parents if p.exists()), None)  # created when writing
    if folder is not None and not folder.is_dir():
        raise ExportError(f"cannot export to {target}: {folder} is a file, not a folder; pass "
                          "--out a path in a folder")


def _check_sidecar(sidecar: Path, card: dict[str, Any], overwrite: bool) -> None:
    """Refuse a sidecar auxilia did not write, or one of another checkpoint, unless ``overwrite``.

    Exports of one checkpoint in several formats share the sidecar; two checkpoints may not.
    """
    if overwrite or not (sidecar.exists() or sidecar.is_symlink()):
        return
    existing = _read_sidecar(sidecar)
    if not existing:
        raise ExportError(f"{sidecar} exists and is not an auxilia export description; pass "
                          "--overwrite to replace it or --out to export elsewhere")
    if existing["source"] != card["source"]:
        raise ExportError(
            f"{sidecar} describes another checkpoint ({existing['source']}); pass "
            "--overwrite to replace it or --out to export elsewhere")


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    """The sidecar's card, or ``{}`` when the file is missing or not an auxilia sidecar."""
    try:
        card = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    is_card = (isinstance(card, dict) and isinstance(card.get("source"), dict)
               and isinstance(card.get("files"), dict))
    return card if is_card else {}


def _write_sidecar(sidecar: Path, card: dict[str, Any], fmt: str, target: Path) -> None:
    """Write the card, keeping the other formats' entries when they come from the same source."""
    existing = _read_sidecar(sidecar)
    files = existing.get("files", {}) if existing.get("source") == card["source"] else {}
    card = {**card, "files": {**files, fmt: target.name}}
    text = (jsonio.dumps(card, indent=2) + "\n").encode()
    atomic_write(sidecar, lambda f: f.write(text))
