"""A sweep: one base config, variants (methods, overrides, ablations), seeds and one budget.

Every run of a sweep is the base config with the sweep's overrides, then the variant's method
and overrides, then the seed and the budget (``train.epochs`` / ``train.steps`` /
``train.time``), which no variant may change: every variant trains on the same data split, from
the same initialisation and views at each seed (the engine's per-purpose seeds), for the same
number of steps, or under ``train.time`` for the same wall time (each run deriving its own
steps from its own speed, so methods of different cost compare on equal time). Runs go
to ``<run.dir>/<sweep name>/<variant folder>/seed<k>``, ordinary run folders. ``{seed}`` in an
override's value is the run's seed (``teacher.run=runs/teachers/seed{seed}``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from auxilia.config import Config, ConfigError, apply_override, check_run_name, parse_config
from auxilia.config import read_yaml as _read_yaml
from auxilia.config_errors import describe, repeated_in
from auxilia.durations import canonical_duration
from auxilia.engine.runfolder import RunFolder
from auxilia.engine.runstatus import Status, config_differences, folder_status
from auxilia.method_defaults import user_settings
from auxilia.paths import beside, regular_file
from auxilia.strict import Strict
from auxilia.yamlio import load_value

__all__ = ["BudgetFile", "PlannedRun", "Sweep", "SweepError", "Variant", "checked_sweep",
           "load_sweep", "plan_sweep", "quick_sweep", "seed_list", "split_methods",
           "sweep_folder"]

BUDGET_KEYS = ("train.epochs", "train.steps", "train.time", "data.batch_size",
               "data.train_subset")
"""What sets a run's budget: the sweep's, never a variant's."""
RESULTS = "results"
"""The report folder inside a sweep folder."""


class SweepError(ConfigError):
    """A sweep problem found before anything trains: the message names the variant and fix."""


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison.

    Attributes:
        label: its name in tables and plots.
        folder: its folder inside the sweep folder (from the label when not given).
        method: the ``method`` value (a name, a list, or a list of mappings), or None to keep
            the base config's.
        overrides: ``key=value`` items on top of the base config.
    """

    label: str
    folder: str = ""
    method: Any = None
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sweep:
    """Variants × seeds on one budget.

    Attributes:
        name: the sweep's folder under ``run.dir``.
        base: a YAML config file, a :class:`Config`, or None for the defaults.
        variants: the arms, in display order.
        seeds: the seeds every variant runs with.
        overrides: items for every run, before the variant's.
        budget: ``{"epochs": E}`` and/or ``{"steps": N}``, or ``{"time": "2m"}`` (a
            canonical duration); every run gets exactly this, and nothing else of the base's.
        baseline: the variant that paired comparisons are against (default: the first).
        k: evaluations in the "median of the last k" figure.
        workers: runs trained at once, each in its own process.
    """

    name: str
    base: str | Path | Config | None
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    overrides: tuple[str, ...] = ()
    budget: dict[str, float | str] = field(default_factory=dict)
    baseline: str | None = None
    k: int = 3
    workers: int = 1

    @property
    def baseline_label(self) -> str:
        return self.baseline or self.variants[0].label


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep: its config and folder, and whether it trains, resumes or is done."""

    variant: Variant
    seed: int
    config: Config
    folder: RunFolder
    status: Status

    @property
    def key(self) -> str:
        """``<variant folder>/seed<k>``: the run's place in the sweep folder."""
        return f"{self.variant.folder}/seed{self.seed}"


# --------------------------------------------------------------------------- the file


class _VariantFile(Strict):
    label: str
    folder: str | None = None
    method: Any = None
    overrides: list[str] = Field(default_factory=list)


class BudgetFile(Strict):
    """A sweep's ``budget``: every run's epochs, steps or wall time."""

    epochs: float | None = Field(default=None, gt=0)
    steps: int | None = Field(default=None, ge=1)
    time: str | None = Field(default=None, description="a wall-clock budget per run (2m)")

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, value: Any) -> str | None:
        """Canonical (``120s`` → ``2m``): the sweep's record compares budgets by value."""
        return None if value is None else canonical_duration(value)


class _SweepFile(Strict):
    name: str
    base: str | None = Field(default=None, description="relative to the sweep file")
    overrides: list[str] = Field(default_factory=list)
    seeds: int | list[int] = 3
    budget: BudgetFile = Field(default_factory=BudgetFile)
    baseline: str | None = None
    k: int = Field(default=3, ge=1)
    workers: int = Field(default=1, ge=1)
    variants: list[_VariantFile] = Field(min_length=1)


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """Read a sweep file; ``overrides`` (the command line's) apply to every run.

    Raises:
        SweepError: the file is missing, not YAML, or holds unknown keys or wrong types
            (each on its own line), or its names are not valid.
    """
    path = regular_file(path, "sweep file", SweepError)
    raw = _read_yaml(path)
    if "rounds" in raw and "variants" not in raw:
        raise SweepError(f"{path} is a pipeline file (it has rounds), not a sweep file: run it "
                         f"with auxilia rounds {path}")
    if "variants" not in raw and set(raw) & set(Config.model_fields):
        raise SweepError(f"{path} is a training config, not a sweep file: compare methods on "
                         f"it with auxilia compare {path} --methods a,b,[c,d] --seeds 3, or "
                         "write a sweep file (name, base, variants) that names it as base")
    try:
        spec = _SweepFile.model_validate(raw)
    except ValidationError as err:
        raise SweepError(f"{path}: invalid sweep:\n  " + "\n  ".join(describe(err, _SweepFile))
                         ) from None
    base = beside(path, spec.base)
    repeated = repeated_in([("overrides", spec.overrides),
                            *((f"variant {v.label!r} overrides", v.overrides)
                              for v in spec.variants)])
    if repeated:
        raise SweepError(f"{path}: {repeated}")
    variants = tuple(Variant(v.label, v.folder or "", v.method, tuple(v.overrides))
                     for v in spec.variants)
    budget = {k: v for k, v in spec.budget.model_dump().items() if v is not None}
    return checked_sweep(Sweep(spec.name, base, variants, seed_list(spec.seeds),
                          (*spec.overrides, *overrides), budget, spec.baseline, spec.k,
                          spec.workers))


def quick_sweep(config: str | Path | None, methods: str, seeds: int | Sequence[int] = 3,
                overrides: Sequence[str] = (), name: str | None = None, **options: Any) -> Sweep:
    """The sweep of ``auxilia compare CONFIG --methods a,b,[c,d] --seeds 3 k=v``.

    Each comma-separated item of ``methods`` is one variant, labelled as written; a bracketed
    item is a combination (``[cds,mean_teacher]``). ``options`` are :class:`Sweep` fields.
    """
    items = split_methods(methods)
    variants = tuple(Variant(item, "", load_value(item, f"--methods item {item!r}", SweepError))
                     for item in items)
    stem = Path(config).stem if config else "defaults"
    return checked_sweep(Sweep(name or f"compare-{stem}", config, variants, seed_list(seeds),
                          tuple(overrides), **options))


def split_methods(text: str) -> list[str]:
    """``"a,b,[c,d]"`` -> ``["a", "b", "[c,d]"]``: commas inside brackets stay."""
    items, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    items.append(current.strip())
    if depth != 0 or not all(items):
        raise SweepError(f"--methods {text!r}: give methods separated by commas, a combination "
                         "in brackets, e.g. supervised,cds,[cds,deep_supervision]")
    return items


def seed_list(seeds: int | Sequence[int]) -> tuple[int, ...]:
    """``seeds`` as a tuple: a count n is 0..n−1, a list is kept (checked)."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise SweepError(f"seeds: {seeds}; give a count >= 1 or a list of seeds")
        return tuple(range(seeds))
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds: {list(seeds)}; give distinct seeds, at least one")
    return tuple(int(s) for s in seeds)


def checked_sweep(sweep: Sweep) -> Sweep:
    """Names checked, variant folders filled in from the labels (every sweep's last step)."""
    try:
        check_run_name(sweep.name)
    except ValueError as err:
        raise SweepError(str(err).replace("run.name", "sweep name", 1)) from None
    labels = [v.label for v in sweep.variants]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise SweepError(f"variant label {dupes[0]!r} is used twice; labels name the table rows")
    if sweep.baseline is not None and sweep.baseline not in labels:
        raise SweepError(f"baseline {sweep.baseline!r} is not a variant; variants: "
                         + ", ".join(labels))
    folders: list[str] = []
    variants = []
    for v in sweep.variants:
        folder = v.folder or _slug(v.label, folders)
        try:
            check_run_name(folder)
        except ValueError as err:
            raise SweepError(f"variant {v.label!r}: {err}".replace("run.name", "folder")) from None
        if folder in folders or folder == RESULTS:
            raise SweepError(f"variant {v.label!r}: folder {folder!r} is "
                             + ("the sweep's report folder" if folder == RESULTS
                                else "used twice") + "; set the variant's folder: to another name")
        folders.append(folder)
        _check_overrides(v.label, v.overrides)
        variants.append(Variant(v.label, folder, v.method, v.overrides))
    _check_overrides(None, sweep.overrides, budget_ok=True)
    _check_one_length(sweep.budget, sweep.overrides)
    return Sweep(**{**sweep.__dict__, "variants": tuple(variants)})


LENGTH_KEYS = ("train.epochs", "train.steps", "train.time")
"""The keys that set a run's length; a sweep's ``budget:`` sets it for every run."""


def _check_one_length(budget: dict[str, float | str], overrides: Sequence[str]) -> None:
    """A length in the sweep's overrides (the file's or the command line's) beside a length in
    its ``budget:`` is refused: the budget would replace it without a word (``auxilia train``
    refuses ``train.time`` with ``train.steps`` the same way)."""
    lengths = [k for k in ("epochs", "steps", "time") if k in budget]
    given = [item for item in overrides if item.partition("=")[0].strip() in LENGTH_KEYS]
    if lengths and given:
        shown = ", ".join(f"{k}: {budget[k]}" for k in lengths)
        raise SweepError(f"the sweep's overrides set {', '.join(given)} and its budget: sets "
                         f"{{{shown}}}: two lengths for every run; keep one (the budget: is "
                         "the sweep's record of its length)")


def _slug(label: str, taken: Sequence[str]) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "-", label).strip("-.") or "variant"
    slug, n = slug[:60], 2
    base = slug
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug


def _check_overrides(label: str | None, items: Sequence[str], budget_ok: bool = False) -> None:
    where = f"variant {label!r}" if label else "the sweep's overrides"
    for item in items:
        key = item.partition("=")[0].strip()
        if key == "seed":
            raise SweepError(f"{where}: {item!r}: the sweep sets the seed of every run; list "
                             "the seeds under seeds: (or --seeds) and drop the override")
        if key == "run.name" or (label and key == "run.dir"):
            raise SweepError(f"{where}: {item!r}: the sweep names every run folder "
                             "(<run.dir>/<sweep>/<variant>/seed<k>); drop the override"
                             + ("" if label else " (run.dir places the sweep's folder)"))
        if not budget_ok and key in BUDGET_KEYS:
            raise SweepError(f"{where}: {item!r}: {key} is the budget, the same for every "
                             "variant; set it in the sweep's budget: or overrides:")


# --------------------------------------------------------------------------- the plan


def sweep_folder(sweep: Sweep) -> Path:
    """``<run.dir>/<sweep name>``, ``run.dir`` as the base config and overrides give it."""
    return Path(_run_config(sweep, sweep.variants[0], sweep.seeds[0]).run.dir).parent


def plan_sweep(sweep: Sweep) -> list[PlannedRun]:
    """Every run's config and folder, in the order they train (seed by seed, so that a
    stopped sweep has all its variants at the first seeds).

    Raises:
        SweepError: a variant's config does not validate, or a folder holds a run of
            another config (naming both and the fix); nothing is written.
    """
    plans = []
    for seed in sweep.seeds:
        for variant in sweep.variants:
            config = _run_config(sweep, variant, seed)
            folder = RunFolder(Path(config.run.dir) / config.run.name)
            plan = PlannedRun(variant, seed, config, folder, folder_status(config, folder))
            if plan.status != "skipped":
                _check_teacher_exists(plan)
            if plan.status != "trained":
                differ = config_differences(config, folder, "the sweep")
                if differ:
                    raise SweepError(
                        f"variant {variant.label!r} seed {seed}: {folder.path} holds a run of "
                        "another config:\n" + "\n".join(differ) + "\nrestore the sweep's "
                        f"settings, give the variant another folder, or delete {folder.path}")
            plans.append(plan)
    return plans


def _check_teacher_exists(plan: PlannedRun) -> None:
    """A teacher the run will need exists before the sweep starts (a missing seed's teacher
    would otherwise fail that run after the others trained)."""
    teacher = plan.config.teacher
    if teacher is not None and teacher.run is not None and not Path(teacher.run).expanduser(
            ).exists():
        raise SweepError(f"variant {plan.variant.label!r} seed {plan.seed}: teacher.run="
                         f"{teacher.run}: no such run folder or checkpoint; train that teacher "
                         "first, or fix the path (or the seeds)")


def with_seed(item: str, seed: int) -> str:
    """An override with ``{seed}`` replaced by the run's seed, e.g.
    ``teacher.run=runs/teachers/seed{seed}`` for a teacher trained at each seed."""
    return item.replace("{seed}", str(seed))


def budget_overrides(budget: dict[str, float | str]) -> list[str]:
    """A sweep's budget as the last overrides of every run. A time budget also clears
    ``train.steps``, and a length in steps or epochs clears ``train.time``: the budget
    replaces whatever length the base config gives."""
    items = [f"train.{key}={value if isinstance(value, str) else f'{value:g}'}"
             for key, value in budget.items()]
    if "time" in budget:
        items.append("train.steps=null")
    elif budget:
        items.append("train.time=null")
    return items


def _run_config(sweep: Sweep, variant: Variant, seed: int) -> Config:
    base = sweep.base
    # a Config base gives what its user set, so a variant's method brings its own defaults
    raw = ({} if base is None else user_settings(base) if isinstance(base, Config)
           else _read_yaml(base))
    raw = copy.deepcopy(raw)
    budget = budget_overrides(sweep.budget)
    try:
        for item in sweep.overrides:
            apply_override(raw, with_seed(item, seed))
    except ConfigError as err:
        raise SweepError(f"the sweep's overrides (for every variant): {err}") from None
    try:
        if variant.method is not None:
            raw["method"] = copy.deepcopy(variant.method)
        for item in (*variant.overrides, f"seed={seed}", *budget):
            apply_override(raw, with_seed(item, seed))
        config = parse_config(raw)
    except ConfigError as err:
        raise SweepError(f"variant {variant.label!r}: {err}") from None
    config.run.dir = str(Path(config.run.dir) / sweep.name / variant.folder)
    config.run.name = f"seed{seed}"
    config.run.progress = "off"  # the sweep shows one display for all its runs
    return config
