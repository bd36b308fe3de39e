"""Teachers: where a distilled student's targets come from, wrapped into the multi-exit contract.

A teacher is a frozen network in its own model slot (``teacher``): it runs in eval mode under
``torch.no_grad()``, outside every optimizer, so its weights and BatchNorm statistics never move
(the CDS authors' public ``distill.py`` never calls ``teacher.eval()``, so its BatchNorm
statistics drift with the student's inputs). It can come from

* an auxilia run folder or checkpoint (``teacher.run``): rebuilt from the run's own config, with
  its training heads (a CDS teacher's projection heads) and its data's normalisation;
* a zoo or timm model name with local weights (``teacher.model`` + ``teacher.weights``);
* any ``torch.nn.Module`` through the Python API (:class:`ModuleTeacher`).

A teacher trained at other statistics or another resolution gets its inputs adapted
(:class:`InputAdapter`): the student's normalised batch is un-normalised, normalised the
teacher's way and resized, inside the teacher's slot, so the student's tensors are untouched.
A teacher whose classes come in another order, or are paired with the student's by
``teacher.classes``, has its logits reordered inside its slot too (:class:`ClassOrder`), so
every recipe sees them in the student's class order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from auxilia.parts import ModuleSlot, Slot
from auxilia.strict import Strict

TEACHER = "teacher"
"""The slot name of the teacher, as recipes' references give it."""


class TeacherConfig(Strict):
    """``teacher:`` of a config: an auxilia run, or a model name with local weights.

    Exactly one of ``run`` and ``model`` is given. ``mean``/``std``/``image_size`` describe the
    teacher's own inputs when they differ from the student's (a run teacher takes its run's).
    """

    run: str | None = Field(default=None, description="an auxilia run folder or checkpoint")
    checkpoint: Literal["best", "last"] = Field(
        default="best", description="which checkpoint of a run folder")
    model: str | None = Field(default=None, description="a zoo name or timm/<name>")
    weights: str | None = Field(default=None, description="local weights for teacher.model")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="teacher.model's options")
    num_classes: int | None = Field(default=None, gt=0,
                                    description="teacher.model's classes (default: the data's)")
    mean: list[float] | None = Field(default=None, description="its input normalisation mean")
    std: list[float] | None = Field(default=None, description="its input normalisation std")
    image_size: int | None = Field(default=None, gt=0, description="its input side")
    in_chans: int | None = Field(default=None, gt=0, description="its input channels")
    classes: dict[str, str] | list[str] | None = Field(default=None, description=(
        "pairs the student's classes with the teacher's when their names differ: a mapping "
        "student class -> teacher class ({c2: c3}; a student class left out pairs with the "
        "teacher class of its own name; teacher classes no student class pairs with are "
        "dropped from its logits). For a teacher.model or Python-API teacher, whose class "
        "names are unknown, a list of its class names in the order of its logits. A run "
        "teacher whose classes are the student's in another order needs neither: its logits "
        "are reordered to the student's"))

    @field_validator("classes", mode="before")
    @classmethod
    def _class_names(cls, value: Any) -> Any:
        return check_class_names(value)


def check_class_names(value: Any) -> dict[str, str] | list[str] | None:
    """``teacher.classes`` with its names as text (YAML reads the class ``3`` as a number).

    Raises:
        ValueError: not a non-empty mapping or list of names, or a name given twice (also in
            two spellings that are the same text, such as ``1`` and ``"1"``).
    """
    if value is None:
        return None
    if isinstance(value, dict) and value:
        keys = _names(list(value), "student class {name} is given twice{spellings}; give "
                      "each student class once")
        values = _names(list(value.values()), "two student classes pair with teacher class "
                        "{name}{spellings}; each class pairs with one class")
        return dict(zip(keys, values, strict=True))
    if isinstance(value, list) and value:
        return _names(value, "the list names class {name} twice{spellings}; each class pairs "
                      "with one class")
    raise ValueError("expected a mapping student class: teacher class (e.g. {c2: c3}), or, "
                     f"for a teacher whose class names are unknown, a list of them; got {value!r}")


def _names(given: list[Any], twice: str) -> list[str]:
    """``given`` as text; a name given twice is refused with the message ``twice``, whose
    ``{name}`` is the name and ``{spellings}`` both spellings when they differ (``1``, ``'1'``)."""
    names = [_name(v) for v in given]
    for i, name in enumerate(names):
        j = names.index(name)
        if j < i:
            spellings = (f" (as {given[j]!r} and {given[i]!r})"
                         if type(given[j]) is not type(given[i]) else "")
            raise ValueError(twice.format(name=repr(name), spellings=spellings))
    return names


def _name(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"class names are text, got {value!r}")
    return str(value)


@dataclass(eq=False)
class LoadedTeacher:
    """A built teacher and what recipes need to know of it.

    Attributes:
        model: answers the multi-exit contract: ``model(x)`` →
            ``{exit: {field: tensor}}`` (``final.logits`` for a classifier).
        source: where it came from, for logs.
        shapes: ``{exit: {field: shape without the batch}}`` from one dry forward on a
            student-shaped input.
        num_classes: width of ``final.logits`` (None without one).
        data_listing: per split, ``[name, key]`` of the samples the teacher's run trained on
            (a run teacher's ``data.json``), to keep the student's test images out of it.
        class_note: how its logits were reordered to the student's classes, or None.
        sha256: :func:`weights_checksum` of ``model`` when it was built.
        slot: the frozen slot recipes declare for it (:data:`TEACHER`).
    """

    model: nn.Module
    source: str
    shapes: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    num_classes: int | None = None
    data_listing: dict[str, list[list[str]]] | None = None
    class_note: str | None = None
    sha256: str = field(init=False)
    slot: TeacherSlot = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = weights_checksum(self.model)
        # one slot object, so that every recipe reading the teacher declares the same slot
        self.slot = TeacherSlot(self.model, self.source, sha256=self.sha256,
                                class_note=self.class_note)

    def channels(self, exit_name: str, out: str = "feat") -> int:
        """Channels (or width) of ``out`` at ``exit_name``, naming the exits when unknown."""
        return self.shape(exit_name, out)[0]

    def shape(self, exit_name: str, out: str = "feat") -> tuple[int, ...]:
        if exit_name not in self.shapes:
            raise ValueError(f"the teacher ({self.source}) has no exit {exit_name!r}; "
                             f"exits: {', '.join(self.shapes)}")
        if out not in self.shapes[exit_name]:
            raise ValueError(f"the teacher's exit {exit_name!r} has no {out!r} output; it has "
                             f"{', '.join(self.shapes[exit_name])}")
        return self.shapes[exit_name][out]

    def exits_with(self, out: str) -> list[str]:
        """The teacher's exits that give ``out`` (e.g. ``proj``), in depth order."""
        return [e for e, fields in self.shapes.items() if out in fields]


@dataclass(frozen=True, eq=False)
class TeacherSlot(ModuleSlot):
    """The teacher's frozen slot, with the checksum of its weights when it was built (what a
    checkpoint records, so that a resumed run refuses a teacher retrained since)."""

    sha256: str = ""
    class_note: str | None = None


def teacher_record(slots: Mapping[str, Slot]) -> dict[str, str] | None:
    """What a student's checkpoint records of its teacher: its source and the checksum of its
    weights (the first start's: a resume with other weights is refused), or None."""
    slot = slots.get(TEACHER)
    if not isinstance(slot, TeacherSlot):
        return None
    return {"source": slot.source, "sha256": slot.sha256}


class ClassOrder(nn.Module):
    """A teacher's logits in the student's class order: ``logits[:, index]`` at every exit.

    ``index[i]`` is the teacher's logit of the student's class ``i``; teacher classes it does
    not name are dropped. Features and other outputs pass unchanged.
    """

    def __init__(self, teacher: nn.Module, index: Sequence[int]) -> None:
        super().__init__()
        self.teacher = teacher
        # not persistent: the teacher's weights (and their checksum) are its own
        self.register_buffer("index", torch.tensor(list(index), dtype=torch.long),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, dict[str, Any]]:
        out = self.teacher(x)
        return {e: {k: t.index_select(-1, self.index) if k == "logits" else t
                    for k, t in fields.items()} for e, fields in out.items()}


class ModuleTeacher(nn.Module):
    """Any ``nn.Module`` as a multi-exit teacher.

    A module returning a tensor ``[B, K]`` gives ``{"final": {"logits": ...}}``; one returning a
    dict of tensors (a dense task's maps) gives them all under ``final``. ``exits`` maps exit
    names to submodule names (``{"s2": "layer2"}``) whose outputs are captured with forward
    hooks as ``{exit: {"feat": map}}``, so hints can read intermediate features of a module
    that only returns logits.
    """

    def __init__(self, module: nn.Module, exits: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.module = module
        self.exit_modules = dict(exits or {})
        modules = dict(module.named_modules())
        unknown = [m for m in self.exit_modules.values() if m not in modules]
        if unknown:
            raise ValueError(f"ModuleTeacher exits name submodules {unknown} that the module "
                             f"does not have; e.g. {', '.join(list(modules)[1:6])}")
        self._captured: dict[str, torch.Tensor] = {}
        for exit_name, name in self.exit_modules.items():
            modules[name].register_forward_hook(self._capture(exit_name))

    def _capture(self, exit_name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._captured[exit_name] = output
        return hook

    def forward(self, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        self._captured = {}
        out = self.module(x)
        final = dict(out) if isinstance(out, Mapping) else {"logits": out}
        outs = {e: {"feat": t} for e, t in self._captured.items()}
        outs["final"] = final
        self._captured = {}
        return outs


class InputAdapter(nn.Module):
    """Feeds a teacher the inputs it was trained on, from the student's batch.

    ``x`` normalised with the student's ``(mean, std)`` becomes ``x·std + mean`` (pixels in
    [0, 1]), then ``(· − mean_t)/std_t``; a grayscale batch is repeated to the teacher's 3
    channels; the result is resized (bilinear) to ``size`` when given.

    Args:
        teacher: the multi-exit teacher.
        student: the student's ``(mean, std)``.
        teacher_stats: the teacher's ``(mean, std)``.
        size: the teacher's input side, or None for the student's.
        in_chans: the teacher's input channels, or None for the student's.
    """

    def __init__(self, teacher: nn.Module, student: tuple[Sequence[float], Sequence[float]],
                 teacher_stats: tuple[Sequence[float], Sequence[float]], size: int | None,
                 in_chans: int | None) -> None:
        super().__init__()
        self.teacher = teacher
        self.size, self.in_chans = size, in_chans
        for name, values in (("s_mean", student[0]), ("s_std", student[1]),
                             ("t_mean", teacher_stats[0]), ("t_std", teacher_stats[1])):
            self.register_buffer(name, torch.tensor(list(values)).view(1, -1, 1, 1),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> Any:
        x = x * self.s_std.to(x.dtype) + self.s_mean.to(x.dtype)
        if self.in_chans is not None and x.shape[1] != self.in_chans:
            if x.shape[1] != 1:
                raise ValueError(f"cannot feed a {x.shape[1]}-channel batch to a teacher "
                                 f"that takes {self.in_chans} channels")
            x = x.expand(-1, self.in_chans, -1, -1)
        x = (x - self.t_mean.to(x.dtype)) / self.t_std.to(x.dtype)
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False)
        return self.teacher(x.contiguous())


def needs_adapter(student: tuple[Sequence[float], Sequence[float]],
                  teacher_stats: tuple[Sequence[float], Sequence[float]],
                  student_shape: tuple[int, int, int], size: int | None,
                  in_chans: int | None) -> bool:
    """Whether the teacher's inputs differ from the student's at all."""
    same_stats = (list(map(float, student[0])) == list(map(float, teacher_stats[0]))
                  and list(map(float, student[1])) == list(map(float, teacher_stats[1])))
    return not (same_stats and size in (None, student_shape[1])
                and in_chans in (None, student_shape[0]))


@torch.no_grad()
def output_shapes(model: nn.Module, image_shape: tuple[int, int, int], device: torch.device
                  ) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{exit: {field: shape}}`` of one eval-mode forward of a student-shaped input."""
    was_training = model.training
    model.eval()
    out = model(torch.zeros(2, *image_shape, device=device))
    model.train(was_training)
    return {e: {k: tuple(t.shape[1:]) for k, t in fields.items()} for e, fields in out.items()}


def input_size(model: nn.Module) -> int | None:
    """The side the teacher's slot resizes the student's images to (its trained input size),
    or None when it takes them at the student's size."""
    while isinstance(model, ClassOrder):
        model = model.teacher
    return model.size if isinstance(model, InputAdapter) else None


def own_network(model: nn.Module) -> nn.Module:
    """The teacher's own network inside the wrappers its slot may put around it
    (:class:`InputAdapter`, :class:`ClassOrder`), which depend on the student, not on it."""
    while isinstance(model, InputAdapter | ClassOrder):
        model = model.teacher
    return model


def weights_checksum(model: nn.Module) -> str:
    """SHA-256 of the teacher's own parameters and buffers (names, dtypes, shapes and bytes),
    in order: equal checksums mean bit-identical weights and BatchNorm statistics.

    Taken of :func:`own_network`, so that one checkpoint has one checksum whatever student
    distils it: the wrappers' key prefixes (``teacher.``) once made a student at another
    size or normalisation print another checksum of the same weights
    (:func:`wrapped_checksum` is that older checksum, still accepted on resume).
    """
    return state_checksum(own_network(model))


def wrapped_checksum(model: nn.Module) -> str:
    """The checksum runs recorded before :func:`weights_checksum` unwrapped the teacher: of the
    slot's module as built, its wrappers' key prefixes included."""
    return state_checksum(model)


def state_checksum(model: nn.Module) -> str:
    """SHA-256 of ``model``'s state dict: each entry's name, dtype, shape and bytes, in order
    (on the CPU, contiguous: the device and memory format do not change it)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
