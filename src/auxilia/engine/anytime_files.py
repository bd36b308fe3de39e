"""The anytime report's files: their names (one pair per checkpoint), overwrite rules, writing.

:func:`auxilia.engine.anytime.anytime_report` computes the report; this module decides where it
goes and writes it atomically (``anytime.json`` and ``anytime.png`` for a run's best
checkpoint, ``anytime-last.*`` for its last, ``X-anytime.*`` for a checkpoint file ``X.pt``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auxilia import jsonio
from auxilia.atomic_files import atomic_write
from auxilia.engine.runfolder import is_run_folder

REPORT_FILES = ("anytime.json", "anytime.png")
"""The files :func:`write_report` writes for a run's best checkpoint (see :func:`report_names`)."""


def checkpoint_label(path: str | Path, which: str = "best") -> str:
    """``"best"`` or ``"last"`` for a run folder or its ``checkpoints/{best,last}.pt``; else
    the checkpoint file's name (``"X.pt"``)."""
    p = Path(path)
    if p.is_dir():
        return which
    if p.parent.name == "checkpoints" and p.name in ("best.pt", "last.pt"):
        return p.stem
    return p.name


def report_names(label: str) -> tuple[str, str]:
    """The report's file names for a :func:`checkpoint_label`.

    ``anytime.{json,png}`` for best, ``anytime-last.{json,png}`` for last (so evaluating one
    never replaces the other's report), ``X-anytime.{json,png}`` for a checkpoint file
    ``X.pt``.
    """
    if label == "best":
        return REPORT_FILES
    stem = "anytime-last" if label == "last" else f"{Path(label).stem}-anytime"
    return f"{stem}.json", f"{stem}.png"


def report_paths(out_dir: str | Path, overwrite: bool = False,
                 names: tuple[str, str] = REPORT_FILES) -> tuple[Path, Path]:
    """The paths of the report's JSON and PNG (``names``) in ``out_dir``, once they may be
    written.

    Files of these names are replaced without asking only in an auxilia run folder (where
    auxilia wrote them); elsewhere they may be someone else's, so ``overwrite`` must say so.

    Raises:
        FileExistsError: ``out_dir`` is a file, or it is not a run folder, holds one of the
            files and ``overwrite`` is false; the message names the file and the fix.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"cannot write the anytime report into {out}: it is a file, not a "
                              "folder; name a folder with --out")
    json_path, png_path = (out / name for name in names)
    taken = [p for p in (json_path, png_path) if p.exists() or p.is_symlink()]
    if taken and not overwrite and not _is_auxilia_run(out):
        raise FileExistsError(f"{taken[0]} already exists and {out} is not an auxilia run "
                              "folder; pass --overwrite to replace it or --out to write elsewhere")
    return json_path, png_path


def _is_auxilia_run(folder: Path) -> bool:
    """A run folder: auxilia's marker, or (runs older than the marker) its checkpoints."""
    checkpoints = folder / "checkpoints"
    return is_run_folder(folder) or any((checkpoints / name).is_file()
                                        for name in ("last.pt", "best.pt"))


def write_report(report: dict[str, Any], out_dir: str | Path, overwrite: bool = False
                 ) -> tuple[Path, Path]:
    """Atomically write the report (strict JSON) and its plot into ``out_dir``.

    The names follow the report's ``checkpoint`` (:func:`report_names`; ``anytime.json`` and
    ``anytime.png`` for best or when it is absent).

    Raises:
        FileExistsError: see :func:`report_paths`; nothing is written then.
        OSError: a write failed; the message names the file, which is unchanged.
    """
    names = report_names(report.get("checkpoint", "best"))
    json_path, png_path = report_paths(out_dir, overwrite, names)
    text = (jsonio.dumps(report, indent=2) + "\n").encode()
    atomic_write(json_path, lambda f: f.write(text))
    plot_report(report, png_path)
    return json_path, png_path


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Accuracy against mean MFLOPs per image: early-exit curves and the single exits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    first = next(iter(report["exits"].values()))
    splits = [s for s in ("val", "test") if s in first]
    for i, split in enumerate(splits):
        rows = report["early_exit"].get(split, [])  # none for a single-exit model
        if rows:
            ax.plot([r["mean_flops"] / 1e6 for r in rows], [r["top1"] for r in rows],
                    "-" if split == "test" else "--", marker=".", color=f"C{i}",
                    label=f"early exit, {split}")
        points = [(e["flops"] / 1e6, e[split]["top1"]) for e in report["exits"].values()]
        ax.scatter(*zip(*points, strict=True), color=f"C{i}", zorder=3,
                   marker="o" if split == "test" else "s", label=f"single exits, {split}")
    for name, e in report["exits"].items():
        ax.annotate(name, (e["flops"] / 1e6, e[splits[-1]]["top1"]), fontsize=8,
                    xytext=(4, -10), textcoords="offset points")
    ax.set(xlabel="MFLOPs per image (mean over samples for early exit)", ylabel="top-1 (%)")
    ax.set_title(f"{report['run']} (step {report['step']}): anytime accuracy", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
