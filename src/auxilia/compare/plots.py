"""Plots of a comparison: learning curves, top-1 per exit, accuracy against cost.

Every figure is drawn from the finished runs of a :class:`~auxilia.compare.collect.Collection`,
one colour per variant (its index in ``collection.variants`` on the tab10 cycle) in all of them,
and saved atomically as a PNG. A plot with nothing to draw is not written: its function returns
``None``.

The figures are built on :class:`matplotlib.figure.Figure` directly, not through ``pyplot``:
they need no backend, so drawing them neither switches nor depends on the caller's one (a
notebook's included), and no figure is left open in ``pyplot``'s registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxilia.atomic_files import atomic_write
from auxilia.compare.aggregate import MeanStd, mean_std
from auxilia.compare.collect import Collection, RunRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["PLOTS", "plot_accuracy_vs_time", "plot_anytime", "plot_exit_bars",
           "plot_learning_curves", "write_plots"]

SELECTED = "test top-1 (%) at the checkpoint selected on val"
"""The y label of every plot of selected test figures."""


def plot_learning_curves(collection: Collection, path: Path) -> Path | None:
    """Mean val (left) and test (right) final top-1 against the step, ± std over seeds shaded.

    Only the steps all of a variant's seeds evaluated are averaged; where they share none, each
    seed is drawn as a thin line of its own, without a band.
    """
    keys = ("val/final/top1", "test/final/top1")
    if not any(r.series(k)[0] for v in collection.variants for r in collection.of(v)
               for k in keys):
        return None

    def draw(axes: Sequence[Axes]) -> None:
        for ax, key in zip(axes, keys, strict=True):
            for variant in collection.variants:
                _draw_curve(ax, collection, variant, key)
            split = key.split("/")[0]
            ax.set(xlabel="step", ylabel=f"{split} top-1 (%), final exit",
                   title=f"{split} top-1 during training (mean ± std over seeds)")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)

    return _save(path, (12, 4.5), 2, draw)


def plot_exit_bars(collection: Collection, path: Path) -> Path | None:
    """Grouped bars: per exit (depth order, ``final`` last), each variant's mean selected test
    top-1 with its std as the error bar; a variant without that exit has no bar there."""
    variants = [v for v in collection.variants if collection.of(v)]
    exits = merge_exits([r.exits for v in variants for r in collection.of(v)])
    bars = {v: {e: _selected(collection.of(v), f"test/{e}/top1") for e in exits}
            for v in variants}
    if not any(m.n for row in bars.values() for m in row.values()):
        return None

    def draw(axes: Sequence[Axes]) -> None:
        ax = axes[0]
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            points = [(x, m) for x, e in enumerate(exits) if (m := bars[variant][e]).n]
            if not points:
                continue
            ax.bar([x - 0.4 + width * (i + 0.5) for x, _ in points],
                   [m.mean for _, m in points], width, yerr=[m.std for _, m in points],
                   capsize=3, color=colour(collection, variant),
                   label=_label(variant, len(collection.of(variant))))
        ax.set_xticks(range(len(exits)), exits)
        ax.set(xlabel="exit (shallow to deep)", ylabel=SELECTED,
               title="top-1 per exit (mean ± std over seeds)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # clear of the bars

    return _save(path, (min(16.0, max(6.0, 2 + len(exits) * (0.6 + 0.3 * len(variants)))), 4.5),
                 1, draw)


def plot_accuracy_vs_time(collection: Collection, path: Path) -> Path | None:
    """Mean selected final test top-1 against mean training time, std error bars both ways."""
    points: list[tuple[str, MeanStd, MeanStd]] = []
    for variant in collection.variants:
        records = collection.of(variant)
        acc = _selected(records, "test/final/top1")
        seconds = mean_std([_float(r.summary.get("train_seconds")) for r in records])
        if acc.n and seconds.n:
            points.append((variant, seconds, acc))
    if not points:
        return None

    def draw(axes: Sequence[Axes]) -> None:
        ax = axes[0]
        for variant, seconds, acc in points:
            ax.errorbar(seconds.mean, acc.mean, xerr=seconds.std, yerr=acc.std, fmt="o",
                        capsize=3, color=colour(collection, variant),
                        label=_label(variant, len(collection.of(variant))))
            ax.annotate(variant, (seconds.mean, acc.mean), fontsize=8, xytext=(5, 5),
                        textcoords="offset points")
        ax.set(xlabel="training time (s, mean over seeds)", ylabel=SELECTED,
               title="final-exit accuracy against training time")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    return _save(path, (7, 5), 1, draw)


def plot_anytime(collection: Collection, path: Path) -> Path | None:
    """Selected test top-1 of each exit against that exit's MFLOPs per image.

    A variant with several exits is a line through its exits; one with a single exit is a
    marker at its deployed model's FLOPs, so that the costs compare. Runs whose summary has no
    FLOPs (older runs, or a model the counter could not trace) are left out.
    """
    lines: dict[str, list[tuple[str | None, float, MeanStd]]] = {}
    for variant in collection.variants:
        records = [r for r in collection.of(variant) if _flops(r)]
        if records and (points := _anytime_points(records)):
            lines[variant] = points
    if not lines:
        return None
    xs = [p[1] for points in lines.values() for p in points]

    def draw(axes: Sequence[Axes]) -> None:
        ax = axes[0]
        for variant, points in lines.items():
            _draw_anytime(ax, collection, variant, points)
        if min(xs) > 0 and max(xs) > 10 * min(xs):
            _log_x(ax)
        ax.set(xlabel="MFLOPs per image (one exit alone; deployed model for single-exit "
                      "variants)", ylabel=SELECTED, title="anytime accuracy against cost")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)

    return _save(path, (7.5, 5), 1, draw)


PLOTS: dict[str, Callable[[Collection, Path], Path | None]] = {
    "curves.png": plot_learning_curves,
    "exits.png": plot_exit_bars,
    "accuracy_vs_time.png": plot_accuracy_vs_time,
    "anytime.png": plot_anytime,
}
"""The file each plot is written to by :func:`write_plots`."""


def write_plots(collection: Collection, out_dir: Path) -> list[Path]:
    """Write every plot of :data:`PLOTS` that has something to draw into ``out_dir``.

    Returns:
        The paths written, in the order of :data:`PLOTS`.

    Raises:
        OSError: ``out_dir`` could not be made, or a write failed (its file is unchanged).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot(collection, out_dir / name) for name, plot in PLOTS.items()]
    return [p for p in written if p is not None]


def colour(collection: Collection, variant: str) -> tuple[float, ...]:
    """The variant's colour: tab10 by its index in ``collection.variants``."""
    from matplotlib import colormaps

    index = collection.variants.index(variant) if variant in collection.variants else 0
    return tuple(colormaps["tab10"].colors[index % 10])


def merge_exits(orders: Iterable[Sequence[str]]) -> list[str]:
    """The union of exit lists, each in depth order: a new exit goes after the last exit that
    precedes it in its own list; ``final`` goes last."""
    merged: list[str] = []
    for order in orders:
        for i, name in enumerate(order):
            if name not in merged:
                before = [merged.index(e) for e in order[:i] if e in merged]
                merged.insert(max(before) + 1 if before else 0, name)
    return [e for e in merged if e != "final"] + (["final"] if "final" in merged else [])


def _save(path: Path, size: tuple[float, float], ncols: int,
          draw: Callable[[Sequence[Axes]], None]) -> Path:
    """Draw a figure of ``ncols`` panels with ``draw`` and write it atomically as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    try:
        draw(list(fig.subplots(1, ncols, squeeze=False)[0]))
        fig.tight_layout()
        atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        fig.clear()  # a Figure outside pyplot is freed with its last reference
    return Path(path)


def _draw_curve(ax: Axes, collection: Collection, variant: str, key: str) -> None:
    records = [r for r in collection.of(variant) if r.series(key)[0]]
    if not records:
        return
    col, label = colour(collection, variant), _label(variant, len(records))
    series = [dict(zip(*r.series(key), strict=True)) for r in records]  # step -> value
    shared = sorted(set.intersection(*(set(s) for s in series)))
    if not shared:  # the seeds evaluated at different steps: one thin line each
        for i, s in enumerate(series):
            steps = sorted(s)
            ax.plot(steps, [s[t] for t in steps], lw=0.8, alpha=0.7, marker=".", ms=3,
                    color=col, label=f"{label}, not averaged" if i == 0 else None)
        return
    stats = [mean_std([s[t] for s in series]) for t in shared]
    mean = [m.mean for m in stats]
    ax.plot(shared, mean, color=col, label=label, marker="." if len(shared) < 30 else None)
    ax.fill_between(shared, [m.mean - m.std for m in stats], [m.mean + m.std for m in stats],
                    color=col, alpha=0.2, lw=0)


def _anytime_points(records: list[RunRecord]) -> list[tuple[str | None, float, MeanStd]]:
    """``(exit, MFLOPs, selected test top-1)`` per exit; a single-exit variant (or one whose
    FLOPs name no exit) gets one point, ``(None, deployed MFLOPs, its top-1)``."""
    exits = merge_exits([r.exits for r in records])
    points: list[tuple[str | None, float, MeanStd]] = []
    if len(exits) > 1:
        for name in exits:
            flops = mean_std([_float(_flops(r).get("exits", {}).get(name)) for r in records])
            acc = _selected(records, f"test/{name}/top1")
            if flops.n and acc.n:
                points.append((name, flops.mean / 1e6, acc))
        if points:
            return points
    deployed = mean_std([_float(_flops(r).get("deployed")) for r in records])
    acc = _selected(records, f"test/{exits[-1] if exits else 'final'}/top1")
    return [(None, deployed.mean / 1e6, acc)] if deployed.n and acc.n else []


def _draw_anytime(ax: Axes, collection: Collection, variant: str,
                  points: list[tuple[str | None, float, MeanStd]]) -> None:
    col = colour(collection, variant)
    label = _label(variant, len(collection.of(variant)))
    xs, ys, errs = [p[1] for p in points], [p[2].mean for p in points], [p[2].std for p in points]
    if points[0][0] is None:
        ax.errorbar(xs, ys, yerr=errs, fmt="D", ms=7, capsize=3, color=col,
                    label=f"{label}, deployed model")
        return
    ax.errorbar(xs, ys, yerr=errs, fmt="-o", ms=4, capsize=3, color=col, label=label)
    for name, x, acc in points:
        ax.annotate(name, (x, acc.mean), fontsize=7, color=col, xytext=(4, -10),
                    textcoords="offset points")


def _log_x(ax: Axes) -> None:
    """A log x axis with plain tick labels at 1, 2 and 5 of each decade."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _selected(records: Iterable[RunRecord], key: str) -> MeanStd:
    """Mean ± std over seeds of ``key`` at the checkpoint selected on validation, over the
    records that report that exit (``RunRecord.exits``)."""
    exit_name = key.split("/")[1]
    return mean_std([r.selected(key) for r in records if exit_name in r.exits])


def _flops(record: RunRecord) -> dict[str, Any]:
    """The run's FLOPs figures; empty when it has none (older runs, or ``{"error": ...}``)."""
    flops = record.summary.get("flops")
    if not isinstance(flops, dict) or not ("deployed" in flops or flops.get("exits")):
        return {}
    return flops


def _float(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _label(variant: str, seeds: int) -> str:
    return f"{variant} ({seeds} seed{'' if seeds == 1 else 's'})"
