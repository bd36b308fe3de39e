"""Building a run's teacher (``teacher:`` or a module from the Python API), checking it, and
reporting it: its accuracy on the student's val/test splits and a checksum of its weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from auxilia.config import ConfigError, parse_config
from auxilia.data.identity import listing
from auxilia.data.types import DatasetSplits
from auxilia.engine.checkpoint import load_checkpoint
from auxilia.engine.datacheck import read_data_listing
from auxilia.engine.evaluate import evaluate
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone
from auxilia.models.weights import load_model_weights
from auxilia.teachers import (
    TEACHER,
    InputAdapter,
    LoadedTeacher,
    ModuleTeacher,
    TeacherConfig,
    needs_adapter,
    output_shapes,
    weights_checksum,
)

if TYPE_CHECKING:
    from auxilia.engine.context import RunContext

TRAINED_SPLITS = ("train", "unlabeled")


def build_teacher(cfg: TeacherConfig | None, data: DatasetSplits, device: torch.device,
                  module: nn.Module | None = None) -> LoadedTeacher | None:
    """The run's teacher, frozen on ``device``, or None when none is configured.

    Args:
        cfg: the config's ``teacher`` section.
        data: the student's data (its normalisation, image shape and test split).
        device: the training device.
        module: a teacher from the Python API (wrapped in :class:`ModuleTeacher` unless it
            answers the multi-exit contract already).

    Raises:
        ConfigError: both or neither of ``teacher.run`` / ``teacher.model``, or the teacher's
            run trained on images of the student's test split.
    """
    if module is not None:
        model: nn.Module = module if isinstance(module, MultiExitModel | ModuleTeacher) \
            else ModuleTeacher(module)
        stats = _stats(cfg, None, data)
        loaded = _finish(model, f"{type(module).__name__} (Python API)", cfg, stats, data,
                         device, None)
    elif cfg is None:
        return None
    elif (cfg.run is None) == (cfg.model is None):
        raise ConfigError("teacher: give either teacher.run (an auxilia run folder or "
                          "checkpoint) or teacher.model with teacher.weights, not "
                          + ("both" if cfg.run else "neither"))
    elif cfg.run is not None:
        loaded = _from_run(cfg, data, device)
    else:
        loaded = _from_model(cfg, data, device)
    check_no_test_leak(loaded, data)
    return loaded


def _from_run(cfg: TeacherConfig, data: DatasetSplits, device: torch.device) -> LoadedTeacher:
    """An auxilia run's model, with the training heads its own methods attach."""
    from auxilia.engine.reload import resolve_checkpoint, run_folder_of_checkpoint  # a cycle

    path = resolve_checkpoint(Path(cfg.run).expanduser(), cfg.checkpoint)  # type: ignore[arg-type]
    checkpoint = load_checkpoint(path)
    tconf = parse_config(checkpoint["config"])
    ident: dict[str, Any] = checkpoint.get("data") or {}
    shape = tuple(ident.get("image_shape") or data.image_shape)
    classes = len(ident.get("classes") or data.classes)
    with torch.random.fork_rng(devices=[]):  # the teacher's build never moves the run's RNG
        backbone = create_backbone(tconf.model.name, in_chans=int(shape[0]),
                                   image_size=int(shape[1]), **tconf.model.kwargs)
        model = MultiExitModel(backbone, classes, _run_heads(tconf, backbone, classes, ident))
    state = checkpoint["model"]
    if not model.head_specs:  # heads not rebuilt (see _run_heads): backbone + classifier
        state = {k: v for k, v in state.items() if not k.startswith("heads.")}
    model.load_state_dict(state)
    stats = _stats(cfg, (ident.get("mean"), ident.get("std")), data)
    cfg = cfg.model_copy(update={"image_size": cfg.image_size or int(shape[1]),
                                 "in_chans": cfg.in_chans or int(shape[0])})
    folder = run_folder_of_checkpoint(path)
    files = read_data_listing(folder / "data.json") if folder is not None else None
    return _finish(model, f"run {path}", cfg, stats, data, device, files)


def _run_heads(tconf: Any, backbone: Any, classes: int, ident: dict[str, Any]) -> list[Any]:
    """The heads the teacher run's methods attached (a CDS teacher's projections), or none
    when its methods cannot be rebuilt alone (a run that was itself distilled)."""
    from auxilia.recipes import RecipeContext, build_objective

    train_count = (ident.get("splits") or {}).get("train", {}).get("count", 1)
    ctx = RecipeContext(stages=backbone.stage_names, stage_channels=dict(backbone.stage_channels),
                        stage_strides=dict(backbone.stage_strides), num_classes=classes,
                        num_train=int(train_count), seed=tconf.seed)
    try:
        return build_objective(tconf.method, ctx).heads_of("student")
    except ValueError:
        return []


def _from_model(cfg: TeacherConfig, data: DatasetSplits, device: torch.device) -> LoadedTeacher:
    """A zoo or timm model with local weights (backbone, and an auxilia classifier if any)."""
    if cfg.weights is None:
        raise ConfigError(f"teacher.model={cfg.model!r} needs teacher.weights=<a local "
                          "weights file>: a teacher with random weights teaches nothing")
    channels, side, _ = data.image_shape
    in_chans, size = cfg.in_chans or channels, cfg.image_size or side
    with torch.random.fork_rng(devices=[]):
        backbone = create_backbone(cfg.model, in_chans=in_chans, image_size=size,  # type: ignore[arg-type]
                                   **cfg.kwargs)
        model = MultiExitModel(backbone, cfg.num_classes or data.num_classes)
    load_model_weights(model, cfg.weights)
    return _finish(model, f"{cfg.model} from {cfg.weights}", cfg, _stats(cfg, None, data),
                   data, device, None)


def _stats(cfg: TeacherConfig | None, run_stats: tuple[Any, Any] | None,
           data: DatasetSplits) -> tuple[list[float], list[float]]:
    """The teacher's input normalisation: given, else its run's, else the student's."""
    mean = (cfg.mean if cfg and cfg.mean else None) or (run_stats[0] if run_stats else None)
    std = (cfg.std if cfg and cfg.std else None) or (run_stats[1] if run_stats else None)
    return list(mean or data.mean), list(std or data.std)


def _finish(model: nn.Module, source: str, cfg: TeacherConfig | None,
            stats: tuple[list[float], list[float]], data: DatasetSplits, device: torch.device,
            files: dict[str, list[list[str]]] | None) -> LoadedTeacher:
    size = cfg.image_size if cfg else None
    chans = cfg.in_chans if cfg else None
    student = (list(data.mean), list(data.std))
    if needs_adapter(student, stats, data.image_shape, size, chans):
        model = InputAdapter(model, student, stats, size, chans)
    model = model.to(device).eval().requires_grad_(False)
    shapes = output_shapes(model, data.image_shape, device)
    logits = shapes.get("final", {}).get("logits")
    return LoadedTeacher(model, source, shapes, logits[0] if logits else None, files)


def check_no_test_leak(teacher: LoadedTeacher, data: DatasetSplits) -> None:
    """Refuse a teacher whose run trained on images of the student's test split: its soft
    labels would carry the test labels into the student's training."""
    if teacher.data_listing is None or data.test is None or not len(data.test):
        return
    test = {key for _name, key in listing(data).get("test", [])}
    trained = {key for split in TRAINED_SPLITS for _n, key in teacher.data_listing.get(split, [])}
    shared = test & trained
    if shared:
        raise ConfigError(
            f"teacher ({teacher.source}) trained on {len(shared)} of the student's "
            f"{len(data.test)} test images: distilling it would leak them into training. Train "
            "the teacher on the student's training data only (the same data config and seed), "
            "or give the student another test split")


def teacher_report(run: RunContext) -> dict[str, Any] | None:
    """The teacher's source, weights checksum and accuracy on the student's val and test
    splits (in eval mode, as it teaches), printed once and kept in the summary."""
    slot = run.slots.get(TEACHER)
    if slot is None:
        return None
    model = run.models[TEACHER]
    setup, cfg = run.setup, run.config
    report: dict[str, Any] = {"source": getattr(slot, "source", ""),
                              "sha256": weights_checksum(model)}
    for name in ("val", "test"):
        split = getattr(setup.data, name)
        if split is None or not len(split) or "logits" not in _final_fields(model, setup):
            continue
        metrics = evaluate(model, split, setup.eval_view, batch_size=cfg.data.eval_batch_size,
                           device=setup.device, amp=cfg.train.amp, amp_dtype=setup.amp_dtype,
                           channels_last=cfg.model.channels_last)
        report[name] = {"top1": metrics.get("final/top1"), "loss": metrics.get("loss")}
    model.eval()
    return report


def _final_fields(model: nn.Module, setup: Any) -> set[str]:
    shapes = output_shapes(model, setup.data.image_shape, setup.device)
    return set(shapes.get("final", {}))


def describe_teacher(report: dict[str, Any]) -> str:
    accs = ", ".join(f"{split} {report[split]['top1']:.2f} %" for split in ("val", "test")
                     if split in report and report[split].get("top1") is not None)
    return (f"teacher: {report['source']}" + (f"; {accs}" if accs else "")
            + f"; weights sha256 {report['sha256'][:12]}")


def finish_report(run: RunContext, start: dict[str, Any] | None) -> dict[str, Any]:
    """What the summary says of the other slots: the teacher's report with its checksum after
    training (equal: its weights and BatchNorm statistics are bit-identical), and each peer's
    accuracy at the end, since the student is the one selected and exported."""
    out: dict[str, Any] = {}
    if start is not None:
        end = weights_checksum(run.models[TEACHER])
        out["teacher"] = {**start, "sha256_end": end, "unchanged": end == start["sha256"]}
    setup, cfg = run.setup, run.config
    peers = {}
    for name, slot in run.slots.items():
        if not slot.trained or name == TEACHER:
            continue
        peers[name] = {}
        for split_name in ("val", "test"):
            split = getattr(setup.data, split_name)
            if split is not None and len(split):
                metrics = evaluate(run.models[name], split, setup.eval_view,
                                   batch_size=cfg.data.eval_batch_size, device=setup.device,
                                   amp=cfg.train.amp, amp_dtype=setup.amp_dtype,
                                   channels_last=cfg.model.channels_last)
                peers[name][split_name] = {"top1": metrics.get("final/top1"),
                                           "loss": metrics.get("loss")}
    if peers:
        out["peers"] = peers
    return out
