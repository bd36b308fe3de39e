"""Building a run's teacher (``teacher:`` or a module from the Python API), checking it, and
reporting it: its accuracy on the student's val/test splits and a checksum of its weights.

A teacher has an identity: its class names are paired with the student's
(:mod:`auxilia.engine.teacher_classes`), and the checksum of its weights at the student's first
start is kept in the student's checkpoints, so that a resumed student refuses a teacher that
was retrained since (:func:`check_same_teacher`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from auxilia.config import ConfigError, parse_config
from auxilia.data.identity import listing
from auxilia.data.raw import DataError
from auxilia.data.sources import val_at_size
from auxilia.data.types import DatasetSplits, Split
from auxilia.engine.checkpoint import run_folder_of_checkpoint
from auxilia.engine.datacheck import read_data_listing
from auxilia.engine.teacher_classes import class_index, class_note, shown_names
from auxilia.engine.teacher_runs import load_teacher_checkpoint
from auxilia.models.multi_exit import MultiExitModel
from auxilia.models.registry import create_backbone, load_model_weights
from auxilia.parts import Slot
from auxilia.recipes import RecipeContext, build_objective
from auxilia.teachers import (
    TEACHER,
    ClassOrder,
    InputAdapter,
    LoadedTeacher,
    ModuleTeacher,
    TeacherConfig,
    TeacherSlot,
    input_size,
    needs_adapter,
    output_shapes,
    teacher_record,
    weights_checksum,
    wrapped_checksum,
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
        ConfigError: both or neither of ``teacher.run`` / ``teacher.model``, the teacher's
            run trained on images of the student's test split, or its class names are not
            the student's and ``teacher.classes`` does not pair them.
    """
    if module is not None:
        model: nn.Module = module if isinstance(module, MultiExitModel | ModuleTeacher) \
            else ModuleTeacher(module)
        stats = _stats(cfg, None, data)
        loaded = _finish(model, f"{type(module).__name__} (Python API)", cfg, stats, data,
                         device, None, _declared_names(cfg))
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
    path, checkpoint = load_teacher_checkpoint(cfg)
    tconf = parse_config(checkpoint["config"])
    ident: dict[str, Any] = checkpoint.get("data") or {}
    names = ident.get("classes")
    if names and isinstance(cfg.classes, list):
        raise ConfigError(f"teacher.classes lists class names, and teacher.run {path} records "
                          f"its own ({shown_names(names)}): leave teacher.classes out to pair "
                          "them with the student's by name, or give a mapping student class: "
                          "teacher class for names that differ")
    shape = tuple(ident.get("image_shape") or data.image_shape)
    classes = len(ident.get("classes") or data.classes)
    with torch.random.fork_rng(devices=[]):  # the teacher's build never moves the run's RNG
        backbone = create_backbone(tconf.model.name, in_chans=int(shape[0]),
                                   image_size=int(shape[1]), **tconf.model.backbone_options())
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
    return _finish(model, f"run {path}", cfg, stats, data, device, files,
                   list(names) if names else _declared_names(cfg))


def _run_heads(tconf: Any, backbone: Any, classes: int, ident: dict[str, Any]) -> list[Any]:
    """The heads the teacher run's methods attached (a CDS teacher's projections), or none
    when its methods cannot be rebuilt alone (a run that was itself distilled)."""
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
        names = _declared_names(cfg)
        model = MultiExitModel(backbone, cfg.num_classes or len(names or data.classes))
    load_model_weights(model, cfg.weights)
    return _finish(model, f"{cfg.model} from {cfg.weights}", cfg, _stats(cfg, None, data),
                   data, device, None, names)


def _declared_names(cfg: TeacherConfig | None) -> list[str] | None:
    """The class names ``teacher.classes`` declares as a list (a teacher whose own are unknown)."""
    return list(cfg.classes) if cfg is not None and isinstance(cfg.classes, list) else None


def _stats(cfg: TeacherConfig | None, run_stats: tuple[Any, Any] | None,
           data: DatasetSplits) -> tuple[list[float], list[float]]:
    """The teacher's input normalisation: given, else its run's, else the student's."""
    mean = (cfg.mean if cfg and cfg.mean else None) or (run_stats[0] if run_stats else None)
    std = (cfg.std if cfg and cfg.std else None) or (run_stats[1] if run_stats else None)
    return list(mean or data.mean), list(std or data.std)


def _finish(model: nn.Module, source: str, cfg: TeacherConfig | None,
            stats: tuple[list[float], list[float]], data: DatasetSplits, device: torch.device,
            files: dict[str, list[list[str]]] | None, names: list[str] | None
            ) -> LoadedTeacher:
    """Adapt its inputs, pair its classes with the student's, freeze it on ``device``."""
    size = cfg.image_size if cfg else None
    chans = cfg.in_chans if cfg else None
    student = (list(data.mean), list(data.std))
    if needs_adapter(student, stats, data.image_shape, size, chans):
        model = InputAdapter(model, student, stats, size, chans)
    model = model.to(device).eval().requires_grad_(False)
    shapes = output_shapes(model, data.image_shape, device)
    index, note = _class_order(cfg, names, data, source, _logits_width(shapes))
    if index is not None:  # inside the slot: every recipe sees the student's class order
        model = ClassOrder(model, index).to(device).eval().requires_grad_(False)
        shapes = output_shapes(model, data.image_shape, device)
    return LoadedTeacher(model, source, shapes, _logits_width(shapes), files, note)


def _logits_width(shapes: dict[str, dict[str, tuple[int, ...]]]) -> int | None:
    logits = shapes.get("final", {}).get("logits")
    return logits[0] if logits else None


def _class_order(cfg: TeacherConfig | None, names: list[str] | None, data: DatasetSplits,
                 source: str, width: int | None) -> tuple[list[int] | None, str | None]:
    """The teacher's logits to keep, in the student's class order, and a note saying how.

    A teacher whose class names are unknown keeps the count check of the recipes (``kd``).

    Raises:
        ConfigError: the names differ and are not paired (see
            :func:`~auxilia.engine.teacher_classes.class_index`), a mapping for a teacher
            without names, or a list of names that is not one per logit.
    """
    pairs = cfg.classes if cfg is not None and isinstance(cfg.classes, dict) else None
    if cfg is not None and cfg.classes is not None and width is None:
        raise ConfigError(f"teacher.classes is given, and the teacher ({source}) gives no "
                          "final logits to pair with the student's classes; leave it out")
    if names is None:
        if pairs is not None:
            raise ConfigError(
                f"teacher.classes pairs classes by name, and the teacher ({source}) records no "
                "class names: give them as a list in the order of its logits instead, e.g. "
                f"teacher.classes=[{', '.join(data.classes[:3])}, ...]")
        return None, None
    if width is not None and len(names) != width:
        raise ConfigError(f"teacher.classes lists {len(names)} class names, and the teacher "
                          f"({source}) gives {width} logits; list one name per logit, in order")
    declared = cfg is not None and isinstance(cfg.classes, list)  # names is that list
    index = class_index(data.classes, names, pairs, source, declared)
    return index, class_note(data.classes, names, index)


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
    splits (in eval mode, as it teaches), printed once and kept in the summary; for a teacher
    trained at another input size, also ``size`` (:func:`_size_report`)."""
    slot = run.slots.get(TEACHER)
    if slot is None:
        return None
    model = run.models[TEACHER]
    setup = run.setup
    # a resumed run's teacher has the checksum of the run's first start (check_same_teacher)
    sha = slot.sha256 if isinstance(slot, TeacherSlot) else weights_checksum(model)
    report: dict[str, Any] = {"source": getattr(slot, "source", ""), "sha256": sha}
    if isinstance(slot, TeacherSlot) and slot.class_note:
        report["classes"] = slot.class_note
    logits = "logits" in _final_fields(model, setup)
    for name in ("val", "test"):
        split = getattr(setup.data, name)
        if split is not None and len(split) and logits:
            report[name] = _accuracy(run, model, split)
    size = _size_report(run, model, report.get("val", {}).get("top1"))
    if size is not None:
        report["size"] = size
    model.eval()
    return report


def _accuracy(run: RunContext, model: nn.Module, split: Split) -> dict[str, float | None]:
    """``{"top1", "loss"}`` of ``model`` on ``split`` through the run's eval view."""
    metrics = run.setup.evaluator.metrics(model, split)
    return {"top1": metrics.get("final/top1"), "loss": metrics.get("loss")}


def _size_report(run: RunContext, model: nn.Module, as_fed: float | None
                 ) -> dict[str, Any] | None:
    """For a teacher trained at another input size than the student's (resized inside its
    slot): both sizes, its val accuracy as fed, and, for comparison, on the same val images at
    its own size, resized as the data pipeline resizes (:func:`val_at_size`: what it was
    trained on). None when the sizes agree.

    One more pass over val, without gradient; the source is read again at the teacher's size.
    """
    trained, fed = input_size(model), run.setup.data.image_shape[1]
    if trained is None or trained == fed:
        return None
    out: dict[str, Any] = {"trained": trained, "fed": fed, "val_as_fed": as_fed}
    val = run.setup.data.val
    if as_fed is None or not len(val):
        return out
    try:
        own = val_at_size(run.config.data, trained)
    except DataError as err:
        out["not_measured"] = str(err)
        return out
    if not torch.equal(own.labels, val.labels):  # its files changed since the run read them
        out["not_measured"] = "the val images read again differ from the run's"
        return out
    # the adapter leaves images of the teacher's own size as they are
    out["val_at_trained"] = _accuracy(run, model, own)["top1"]
    return out


def _final_fields(model: nn.Module, setup: Any) -> set[str]:
    shapes = output_shapes(model, setup.data.image_shape, setup.device)
    return set(shapes.get("final", {}))


def describe_teacher(report: dict[str, Any]) -> str:
    """The teacher's line of the run's header: source, accuracy, checksum, class pairing and
    (at another input size) both sizes with its val accuracy at each."""
    accs = ", ".join(f"{split} {report[split]['top1']:.2f} %" for split in ("val", "test")
                     if split in report and report[split].get("top1") is not None)
    return (f"teacher: {report['source']}" + (f"; {accs}" if accs else "")
            + f"; weights sha256 {report['sha256'][:12]}"
            + (f"; classes {report['classes']}" if report.get("classes") else "")
            + (f"; {_describe_size(report['size'])}" if report.get("size") else ""))


def _describe_size(size: dict[str, Any]) -> str:
    """``trained at 16x16, fed this run's 8x8 images resized in its slot: val 54.00 % as fed,
    64.00 % at its own 16x16; data.image_size=16 feeds it its own size``."""
    t, f = size["trained"], size["fed"]
    accs = []
    if size.get("val_as_fed") is not None:
        accs.append(f"val {size['val_as_fed']:.2f} % as fed")
    if size.get("val_at_trained") is not None:
        accs.append(f"{size['val_at_trained']:.2f} % at its own {t}x{t}")
    elif size.get("not_measured"):
        accs.append(f"not measured at {t}x{t}: {size['not_measured']}")
    return (f"trained at {t}x{t}, fed this run's {f}x{f} images resized in its slot"
            + (f": {', '.join(accs)}" if accs else "")
            + f"; data.image_size={t} feeds it its own size")


def check_same_teacher(checkpoint: Mapping[str, Any], slots: Mapping[str, Slot],
                       path: Path) -> None:
    """Refuse to resume with a teacher whose weights differ from the run's first start's.

    A run started before the checksum left the slot's wrappers out recorded
    :func:`~auxilia.teachers.wrapped_checksum`: that one is accepted too (the same config
    wraps the teacher the same way, so equal weights give the same value).

    Raises:
        ConfigError: naming the teacher and both checksums.
    """
    recorded, now = checkpoint.get("teacher") or {}, teacher_record(slots)
    if now is None or not recorded.get("sha256") or recorded["sha256"] == now["sha256"]:
        return  # no teacher, or a checkpoint written before teachers were recorded
    slot = slots[TEACHER]
    if isinstance(slot, TeacherSlot) and recorded["sha256"] == wrapped_checksum(slot.model):
        return  # recorded by an older auxilia
    raise ConfigError(
        f"cannot resume from {path}: its teacher ({now['source']}) has other weights than at "
        f"the run's first start (sha256 {recorded['sha256'][:12]} then, {now['sha256'][:12]} "
        "now: retrained or replaced since); resume with the teacher it started with, or start "
        "the student again with --overwrite")


def finish_report(run: RunContext, start: dict[str, Any] | None) -> dict[str, Any]:
    """What the summary says of the other slots: the teacher's report with its checksum after
    training (equal: its weights and BatchNorm statistics are bit-identical), and each peer's
    accuracy at the end, since the student is the one selected and exported."""
    out: dict[str, Any] = {}
    if start is not None:
        end = weights_checksum(run.models[TEACHER])
        out["teacher"] = {**start, "sha256_end": end, "unchanged": end == start["sha256"]}
    setup = run.setup
    peers = {}
    for name, slot in run.slots.items():
        if not slot.trained:  # peers: a teacher or an EMA model is never trained
            continue
        peers[name] = {}
        for split_name in ("val", "test"):
            split = getattr(setup.data, split_name)
            if split is not None and len(split):
                metrics = setup.evaluator.metrics(run.models[name], split)
                peers[name][split_name] = {"top1": metrics.get("final/top1"),
                                           "loss": metrics.get("loss")}
    if peers:
        out["peers"] = peers
    return out
