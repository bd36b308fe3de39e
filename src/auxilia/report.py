"""Tables and plots from run folders."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def summarize(evals: list[dict[str, Any]], best: dict[str, Any] | None, k: int
              ) -> dict[str, Any]:
    """Summary of a run's evaluations: last, best-on-validation, and median of the last ``k``.

    Model selection looks at ``val/final/top1`` only; test numbers are reported alongside.
    """
    if not evals:
        return {}
    last = evals[-1]
    tail = evals[-k:]
    keys = [key for key in last if key.startswith(("val/", "test/")) and key.endswith("top1")]
    return {
        "last": {key: last[key] for key in last if key.startswith(("val/", "test/"))},
        "best_val": best,
        "median_last_k": {"k": len(tail),
                          **{key: statistics.median(e[key] for e in tail) for key in keys}},
    }


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Training loss and per-exit val/test top-1 against the step, saved atomically as a PNG.

    Raises:
        OSError: the write failed; the message names ``path``, which is unchanged.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "val/final/top1" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot([r["step"] for r in train], [r["train/loss"] for r in train], label="train")
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_loss.set_yscale("log")
    exits = sorted({k.split("/")[1] for r in evals for k in r if k.endswith("/top1")})
    for i, exit_name in enumerate(exits):  # one colour per exit: val solid, test dashed
        for split, style in (("val", "-"), ("test", "--")):
            key = f"{split}/{exit_name}/top1"
            pts = [(r["step"], r[key]) for r in evals if key in r]
            if pts:
                ax_acc.plot(*zip(*pts, strict=True), style, color=f"C{i}",
                            label=f"{split} {exit_name}")
    ax_acc.set(xlabel="step", ylabel="top-1 (%)", title="accuracy per exit")
    ax_acc.legend(fontsize=7)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    from auxilia.engine.checkpoint import atomic_write  # here: auxilia.engine imports this module

    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
