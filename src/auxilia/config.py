"""The typed configuration tree: YAML files plus ``key=value`` dotted overrides, validated.

Every section forbids unknown keys. Errors are collected and reported together as a
:class:`ConfigError` naming the dotted path, what was expected, and the nearest valid key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from auxilia.config_errors import ConfigError
from auxilia.config_errors import describe as _describe
from auxilia.config_errors import suggest as _suggest
from auxilia.data.config import DataConfig
from auxilia.method_defaults import apply_method_defaults
from auxilia.models.scaled import ScaleConfig
from auxilia.paths import decode_text, regular_file
from auxilia.recipes import RECIPES, RecipeParams
from auxilia.run_names import MAX_RUN_NAME, default_run_name
from auxilia.strict import Strict
from auxilia.teachers import TeacherConfig
from auxilia.train_config import TrainConfig
from auxilia.yamlio import DuplicateKeyError
from auxilia.yamlio import load as _load_yaml
from auxilia.yamlio import problem as _yaml_problem

SEED_MAX = 2**32 - 1
"""Seeds are integers in ``[0, SEED_MAX]``: what ``numpy.random.seed`` accepts (torch takes more,
but the run seeds NumPy with the same number)."""


def check_run_name(name: str) -> str:
    """``name`` if it is a plain folder name, else a ``ValueError`` saying why.

    A plain name has no path separator, does not start with ``.`` (so neither ``.`` nor
    ``..``, nor a hidden name), holds no control character and has at most
    :data:`MAX_RUN_NAME` characters.
    """
    problem = ""
    if not name:
        problem = "is empty"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator; put the folder in run.dir instead"
    elif name.startswith("."):
        problem = "starts with '.' ('.', '..' and hidden names are not run names)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    elif len(name) > MAX_RUN_NAME or len(name.encode()) > 2 * MAX_RUN_NAME:
        problem = (f"is longer than {MAX_RUN_NAME} characters or {2 * MAX_RUN_NAME} bytes "
                   "(room is kept for the lock and replacement names beside it)")
    if problem:
        raise ValueError(f"run.name {name!r} {problem}; use a plain name such as 'my-run-1'")
    return name


class ModelConfig(Strict):
    """Which backbone to build. ``name`` is one of ``auxilia list models`` or ``timm/<name>``."""

    name: str = Field(default="auto", description="a registered model, timm/<name>, or auto: "
                      "chosen from the images' size and the device (see auxilia.engine.auto)")
    pretrained: bool = False
    weights: str | None = Field(default=None, description="local state_dict file to load")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the factory")
    channels_last: bool = False
    freeze_backbone: bool = Field(
        default=False, description="train heads and classifier only (a linear probe)")
    drop_rate: float = Field(default=0.0, ge=0, lt=1, description="dropout before the classifier")
    sync_bn: bool = Field(
        default=False, description="with several GPU processes (torchrun), BatchNorm "
        "normalises with the statistics of the whole global batch (SyncBatchNorm)")
    drop_path: float = Field(
        default=0.0, ge=0, lt=1, description="stochastic depth (Huang et al. 2016): the last "
        "residual block's drop rate, linear from 0 over the blocks (timm's drop_path_rate)")
    scale: ScaleConfig | None = Field(
        default=None, description="compound scaling (EfficientNet) of a zoo family: {phi: 1, "
        "alpha: 1.2, beta: 1.1, gamma: 1.15}; the resolution with data.image_size=auto")

    def backbone_options(self) -> dict[str, Any]:
        """``model.kwargs`` plus ``drop_path`` and ``scale`` where set: what
        :func:`auxilia.models.registry.create_backbone` takes besides the name (every place that
        builds this model passes these, so a scaled run's checkpoint rebuilds as trained)."""
        options = dict(self.kwargs)
        if self.drop_path:
            options["drop_path"] = self.drop_path
        if self.scale is not None:
            options["scale"] = self.scale
        return options


class OptimConfig(Strict):
    """Optimizer: SGD (optionally Nesterov) or AdamW."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=5e-4, ge=0)
    decay_norm_and_bias: bool = Field(
        default=True, description="false: no weight decay on normalisation weights and biases")
    grad_clip: float | None = Field(default=None, gt=0, description="max global grad norm")


class ScheduleConfig(Strict):
    """Learning-rate schedule. Milestones and warm-up are in epochs (fractions allowed).

    ``cosine``: lr·(r + (1−r)·½(1+cos(πk/K))) with r = ``min_lr_ratio``;
    ``fixmatch_cosine``: lr·cos(7πk/16K) (Sohn et al. 2020); ``multistep``:
    lr·γ^(milestones passed); ``constant``. A linear warm-up from 0 over ``warmup_epochs``
    multiplies any of them.
    """

    name: Literal["constant", "multistep", "cosine", "fixmatch_cosine"] = "cosine"
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    warmup_epochs: float = Field(default=0.0, ge=0)


class RunConfig(Strict):
    """Where the run folder goes and what it holds."""

    dir: str = "runs"
    name: str | None = Field(default=None, description="default: <source>-<model>-<methods>-"
                             "s<seed>, then the settings that differ from their defaults")
    tensorboard: bool = True
    plot: bool = True
    progress: Literal["auto", "bar", "plain", "off"] = "auto"

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        return None if value is None else check_run_name(value)

    @field_validator("progress", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` as false."""
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


class Config(Strict):
    """The whole run."""

    seed: int = Field(default=0, ge=0, le=SEED_MAX, strict=True,
                      description="strict: a bool or a float is not a seed")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: list[SerializeAsAny[RecipeParams]] = Field(default_factory=list)
    teacher: TeacherConfig | None = Field(default=None, description="the network distilled "
                                          "by kd, hints and cds_kd (auxilia.teachers)")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _defaults(self) -> Config:
        if not self.method:
            self.method = [RECIPES["supervised"].params(name="supervised")]
        if self.train.steps is None and self.train.epochs is None and self.train.time is None:
            raise ValueError("set train.epochs, train.steps or train.time")
        apply_method_defaults(self)  # the methods' own optimizer and schedule, where unset
        return self

    def run_name(self) -> str:
        """The run folder's name: ``run.name``, else :func:`auxilia.run_names.default_run_name`
        (data, model, methods, seed, then every setting unlike its default)."""
        return self.run.name or default_run_name(self)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or start from defaults), apply ``a.b=value`` overrides, validate.

    Raises:
        ConfigError: naming the file, key and expected type, with the nearest valid key.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
    for item in overrides or []:
        apply_override(raw, item)
    return parse_config(raw)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file with the safe loader (:mod:`auxilia.yamlio`: no duplicate keys); the
    top level must be a mapping.

    The file must be a regular file (a FIFO or ``/dev/stdin`` from a terminal would block) in
    UTF-8, with or without a byte-order mark, or in UTF-16/UTF-32 with one.

    Raises:
        ConfigError: the file is missing, not a regular file, not text in those encodings, not
            valid YAML (a key twice in one mapping included), or not a mapping; the message
            names the file.
    """
    p = regular_file(path, "config file", ConfigError)
    text = decode_text(p.read_bytes(), f"{p}:", ConfigError)
    try:
        data = _load_yaml(text) or {}
    except DuplicateKeyError as err:
        raise ConfigError(f"{p}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {_yaml_problem(err)}") from None
    except RecursionError:
        raise ConfigError(f"{p}: not valid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, "
                          f"got {type(data).__name__}")
    return data


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``1e-3``, ``[a, b]``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=0.1)")
    key, _, text = item.partition("=")
    try:
        value = _load_yaml(text) if text.strip() else None
    except DuplicateKeyError as err:  # not a plain string: the user meant a mapping
        raise ConfigError(f"override {key.strip()!r}: {err}") from None
    except yaml.YAMLError:
        value = text
    except RecursionError:
        raise ConfigError(f"override {key.strip()!r}: the value is nested too deeply") from None
    set_dotted(raw, key.strip(), value)


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating mappings on the way."""
    parts = [p for p in key.split(".") if p]
    if not parts:
        raise ConfigError(f"override key {key!r} is empty")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_config(raw: dict[str, Any]) -> Config:
    """Validate a raw nested dict into a :class:`Config`, collecting every error."""
    raw = dict(raw)
    errors: list[str] = []
    for key, value in raw.items():
        problem = _too_large(value)
        if problem:
            raise ConfigError(f"invalid configuration:\n  {key}: the value {problem}")
    methods = _parse_methods(raw.pop("method", None), errors)
    try:
        config = Config.model_validate({**raw, "method": methods})
    except ValidationError as err:
        errors.extend(_describe(err, Config))
        config = None
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    assert config is not None
    return config


def _parse_methods(value: Any, errors: list[str]) -> list[RecipeParams]:
    """``method`` may be a name, a mapping with ``name``, or a list of either."""
    if value is None:
        return []
    entries = value if isinstance(value, list) else [value]
    parsed: list[RecipeParams] = []
    for i, entry in enumerate(entries):
        where = f"method[{i}]" if isinstance(value, list) else "method"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            errors.append(f"{where}: expected a method name or a mapping with 'name', "
                          f"got {entry!r}")
            continue
        name = entry["name"]
        if not isinstance(name, str):
            errors.append(f"{where}.name: expected a method name, got {name!r}")
            continue
        if name not in RECIPES:
            errors.append(f"{where}.name: unknown method {name!r}{_suggest(name, RECIPES)}; "
                          f"valid: {', '.join(sorted(RECIPES))}")
            continue
        params_cls = RECIPES[name].params
        try:
            parsed.append(params_cls.model_validate(entry))
        except ValidationError as err:
            errors.extend(f"{where}." + e for e in _describe(err, params_cls))
    return parsed


MAX_VALUES, MAX_DEPTH = 100_000, 64
"""Bounds on a config value: YAML aliases can make a short file expand enormously."""


def _too_large(value: Any) -> str:
    """Checks the size of a parsed value without expanding it (aliases are shared objects).

    Args:
        value: a value parsed from YAML.

    Returns:
        What is wrong (more than :data:`MAX_VALUES` values once aliases are expanded, or
        nesting deeper than :data:`MAX_DEPTH`), or ``""``.
    """
    stack, count = [(value, 0)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return f"holds more than {MAX_VALUES:,} values (a YAML alias bomb?)"
        if depth > MAX_DEPTH:
            return f"is nested more than {MAX_DEPTH} levels deep"
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)
    return ""
