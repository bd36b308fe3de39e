"""Tables and plots from run folders."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxilia.atomic_files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def summarize(evals: list[dict[str, Any]], best: dict[str, Any] | None, k: int
              ) -> dict[str, Any]:
    """Summary of a run's evaluations: last, best-on-validation, and median of the last ``k``.

    Model selection looks at ``val/final/top1`` only; test numbers are reported alongside.
    With ``train.test_eval: selected`` some evaluations have no test numbers: the last one
    always has them, ``best_val["test"]`` holds the selected step's, and a test median is taken
    over the ``k_test`` of the last ``k`` evaluations that evaluated test.
    """
    if not evals:
        return {}
    last = evals[-1]
    tail = evals[-k:]
    keys = [key for key in last if key.startswith(("val/", "test/")) and key.endswith("top1")]
    if not keys:  # a dense task: its losses
        keys = [key for key in last if key.startswith(("val/", "test/"))
                and key.endswith(("/loss", "_mse"))]
    median: dict[str, Any] = {"k": len(tail)}
    if any(key.startswith("test/") for key in keys):
        median["k_test"] = sum(1 for e in tail if any(key.startswith("test/") for key in e))
    for key in keys:
        values = [e[key] for e in tail if key in e]
        if values:
            median[key] = statistics.median(values)
    return {
        "last": {key: last[key] for key in last if key.startswith(("val/", "test/"))},
        "best_val": best,
        "median_last_k": median,
    }


def selected_test_only(evals: list[dict[str, Any]]) -> bool:
    """Whether some evaluations skipped the test split (``train.test_eval: selected``)."""
    has_test = [any(k.startswith("test/") for k in r) for r in evals]
    return any(has_test) and not all(has_test)


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Training loss and per-exit val/test top-1 against the step, saved atomically as a PNG.

    Raises:
        OSError: the write failed; the message names ``path``, which is unchanged.
    """
    import matplotlib.pyplot as plt

    fig = curves_figure(records)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def curves_figure(records: list[dict[str, Any]]) -> Figure:
    """The figure :func:`plot_curves` saves: loss on the left, top-1 per exit on the right.

    Test lines carry a marker at each evaluation that has test numbers; when test was not
    evaluated every time the panel's title says so.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records
             if any(k.startswith(("val/", "test/")) and k.endswith("/top1") for k in r)]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot([r["step"] for r in train], [r["train/loss"] for r in train], label="train")
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_loss.set_yscale("log")
    exits = sorted({k.split("/")[1] for r in evals for k in r if k.endswith("/top1")})
    for i, exit_name in enumerate(exits):  # one colour per exit: val solid, test dashed
        for split, style in (("val", "-"), ("test", "--o")):
            key = f"{split}/{exit_name}/top1"
            pts = [(r["step"], r[key]) for r in evals if key in r]
            if pts:
                ax_acc.plot(*zip(*pts, strict=True), style, color=f"C{i}", markersize=3,
                            label=f"{split} {exit_name}")
    selected = " (test at selected checkpoints)" if selected_test_only(evals) else ""
    ax_acc.set(xlabel="step", ylabel="top-1 (%)", title=f"accuracy per exit{selected}")
    ax_acc.legend(fontsize=7)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
