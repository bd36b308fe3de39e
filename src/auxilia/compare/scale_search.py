"""The compound-scaling search (Tan & Le, "EfficientNet", ICML 2019, §3.3 step 1), as a sweep.

Fix φ = 1 and look for the depth, width and resolution bases α, β, γ (each >= 1) under the
constraint α·β²·γ² ≈ 2, so that the scaled network costs about twice the FLOPs of the
baseline. :func:`candidates` enumerates the grid; :func:`scale_sweep` makes it an ordinary
:class:`~auxilia.compare.spec.Sweep` (a ``phi=0`` baseline and one variant per candidate, each
with ``model.scale`` overrides), which ``auxilia compare``'s runner trains, resumes and
reports; :func:`grid_table` reads the sweep's runs back into the grid, best first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from auxilia.compare.aggregate import MeanStd
from auxilia.compare.collect import Collection
from auxilia.compare.spec import BudgetFile, Sweep, SweepError, Variant, checked_sweep, seed_list
from auxilia.compare.tables import variant_figures

BASELINE = "phi=0"
"""The unscaled baseline's variant label."""


@dataclass(frozen=True)
class Candidate:
    """One point of the grid: depth base α, width base β, resolution base γ."""

    alpha: float
    beta: float
    gamma: float

    @property
    def flops(self) -> float:
        """α·β²·γ²: the FLOPs factor per unit of φ."""
        return self.alpha * self.beta**2 * self.gamma**2

    @property
    def label(self) -> str:
        """``a=1.2 b=1.1 g=1.15``: the variant's label."""
        return f"a={self.alpha:g} b={self.beta:g} g={self.gamma:g}"

    def overrides(self, phi: float) -> tuple[str, ...]:
        """``model.scale.*`` items for this candidate at ``phi`` (merged into the base's
        ``model.scale``, so its ``round_to`` stays)."""
        return (f"model.scale.phi={phi:g}", f"model.scale.alpha={self.alpha:g}",
                f"model.scale.beta={self.beta:g}", f"model.scale.gamma={self.gamma:g}")


def candidates(step: float = 0.1, target: float = 2.0, tolerance: float = 0.1
               ) -> list[Candidate]:
    """Every ``(α, β, γ)`` on a grid of ``step`` from 1 with ``|α·β²·γ² - target| <= tolerance``.

    Args:
        step: the grid's spacing (0.05 reaches the paper's 1.2, 1.1, 1.15).
        target: the FLOPs factor per unit of φ (the paper's 2).
        tolerance: how far from ``target`` a candidate may be.

    Returns:
        The candidates, by α, then β, then γ.

    Raises:
        SweepError: a step, target or tolerance that is not positive, or a grid with no
            candidate (naming the fix).
    """
    for name, value in (("--step", step), ("--target", target), ("--tolerance", tolerance)):
        if not (math.isfinite(value) and value > 0):
            raise SweepError(f"{name} {value}: give a number > 0")
    top = target + tolerance  # no base can exceed the whole budget alone
    values = [round(1 + i * step, 6) for i in range(int((top - 1) / step + 1e-9) + 1)]
    found = [Candidate(a, b, g) for a in values for b in values for g in values
             if abs(a * b * b * g * g - target) <= tolerance + 1e-9]
    if not found:
        raise SweepError(f"no (alpha, beta, gamma) on a grid of step {step:g} has "
                         f"alpha*beta^2*gamma^2 within {tolerance:g} of {target:g}; use a finer "
                         "--step or a wider --tolerance")
    return found


def parse_budget(text: str) -> dict[str, float | str]:
    """``steps=200``, ``epochs=2`` or ``time=30s``: the sweep's budget, checked as a sweep
    file's ``budget:`` is.

    Raises:
        SweepError: naming the accepted forms.
    """
    key, sep, value = text.partition("=")
    if not sep or key not in ("steps", "epochs", "time"):
        raise SweepError(f"--budget {text!r}: give steps=N, epochs=E or time=30s (the same "
                         "for every candidate)")
    try:
        spec = BudgetFile.model_validate({key: value})
    except ValueError as err:
        raise SweepError(f"--budget {text!r}: {err}") from None
    return {k: v for k, v in spec.model_dump().items() if v is not None}


def scale_sweep(config: str | Path | None, *, phi: float = 1.0, budget: dict[str, float | str],
                seeds: int | Sequence[int] = 1, grid: Sequence[Candidate] | None = None,
                overrides: Sequence[str] = (), name: str | None = None, workers: int = 1
                ) -> Sweep:
    """The search as a sweep: ``phi=0`` (the baseline) and each candidate at ``phi``.

    Args:
        config: the baseline's config file (a zoo family that ``model.scale`` supports), or
            None for the defaults.
        phi: the compound coefficient of every candidate (the paper's search uses 1).
        budget: every run's length, e.g. ``{"steps": 200}``.
        seeds: a count or a list.
        grid: the candidates (default :func:`candidates`).
        overrides: ``key=value`` items for every run.
        name: the sweep's folder (default ``scale-<config name>``).
        workers: runs at once.

    Raises:
        SweepError: as :mod:`auxilia.compare.spec` checks a sweep.
    """
    if not math.isfinite(phi) or phi <= 0:
        raise SweepError(f"--phi {phi}: give a number > 0 (the paper searches at phi=1)")
    if not budget:
        raise SweepError("give a --budget (steps=N, epochs=E or time=30s): the same for every "
                         "candidate")
    grid = list(grid) if grid is not None else candidates()
    variants = (Variant(BASELINE, "phi0", None, ("model.scale.phi=0",)),
                *(Variant(c.label, "", None, c.overrides(phi)) for c in grid))
    stem = Path(config).stem if config else "defaults"
    return checked_sweep(Sweep(name or f"scale-{stem}", config, variants, seed_list(seeds),
                          tuple(overrides), dict(budget), BASELINE, workers=workers))


@dataclass(frozen=True)
class GridRow:
    """One candidate's outcome: its bases and the sweep's figures for it."""

    label: str
    flops_factor: float  # nominal, alpha * beta**2 * gamma**2
    top1: MeanStd
    flops: MeanStd
    params: MeanStd


def grid_table(collection: Collection, grid: Sequence[Candidate], k: int = 3
               ) -> tuple[list[GridRow], str]:
    """The search's grid from its runs: each variant's test top-1 at the checkpoint selected on
    validation (mean ± std over seeds, :func:`~auxilia.compare.tables.variant_figures`, as
    ``results.md`` has it), its measured FLOPs and parameters; best first.

    Returns:
        ``(rows, Markdown table)``; the best finished candidate is marked.
    """
    factors = {c.label: c.flops for c in grid} | {BASELINE: 1.0}
    rows = [GridRow(f.variant, factors.get(f.variant, math.nan),
                    f.selected.get("final", MeanStd(math.nan, math.nan, 0)),
                    f.flops["deployed"], f.params["deployed"])
            for f in variant_figures(collection, k, BASELINE)]
    rows.sort(key=lambda r: -r.top1.mean if r.top1.n else math.inf)
    best = next((r.label for r in rows if r.label != BASELINE and r.top1.n), None)
    base = next((r.flops.mean for r in rows if r.label == BASELINE), math.nan)
    lines = ["| candidate | α·β²·γ² | measured FLOPs factor | test top-1 (%) | FLOPs / image "
             "| parameters |", "|---|---|---|---|---|---|"]
    for r in rows:
        mark = " **best**" if r.label == best else ""
        lines.append(f"| {r.label}{mark} | {r.flops_factor:.3g} | {r.flops.mean / base:.3g} | "
                     f"{r.top1.format()} | {r.flops.mean:,.0f} | {r.params.mean:,.0f} |")
    return rows, "\n".join(lines) + "\n"
