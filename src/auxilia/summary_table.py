"""The table ``auxilia train`` prints at the end of a run, from its ``summary.json``.

One row per exit of the deployed model at its checkpoint selected on validation; when more than
one model was evaluated (a student and its EMA model, DML's peer...), every model's exits, each
at its own checkpoint selected on its own validation numbers (``summary["models"]``), the
deployed one marked, and a line saying why that one is deployed
(``summary["deployed_because"]``, from :func:`auxilia.recipes.deploy_reason`).
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

__all__ = ["COLUMNS", "deployed_line", "fmt", "summary_table"]

COLUMNS = ("val top1", "test top1", "test top5", "last test top1")


def fmt(value: float | None) -> str:
    """A percentage with two decimals, ``-`` when absent."""
    return "-" if value is None else f"{value:.2f}"


def summary_table(summary: dict[str, Any]) -> Table:
    """The final table of a run whose summary selected a checkpoint (``best_val`` is set)."""
    models = summary.get("models") or {}
    scores = [*summary["best_val"].get("val", {}), *summary["best_val"].get("test", {})]
    if not any(k.endswith("/top1") for k in scores) and any(k.endswith("_mse") for k in scores):
        return _dense_table(summary)  # a dense task (maps, not classes): each field's error
    if len(models) < 2:
        table = Table(title=f"{summary['run']}  (selected on val at step "
                            f"{summary['best_val']['step']})")
        table.add_column("exit")
        for col in COLUMNS:
            table.add_column(col, justify="right")
        for row in _rows(summary, summary["exits"]):
            table.add_row(*row)
        return table
    deployed = summary.get("deployed", "student")
    table = Table(title=f"{summary['run']}  (each model at its own checkpoint selected on val)")
    table.add_column("model", no_wrap=True)
    table.add_column("exit")
    table.add_column("step", justify="right")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    order = [deployed, *(name for name in models if name != deployed)]
    for name in order:
        label = f"{name} (deployed)" if name == deployed else name
        best = models[name].get("best_val")
        step = str(best["step"]) if best else "-"
        rows = _rows(models[name], summary["exits"]) or [["final", *("-" for _ in COLUMNS)]]
        for i, row in enumerate(rows):
            table.add_row(label if i == 0 else "", *([row[0], step] if i == 0 else [row[0], ""]),
                          *row[1:])
    return table


def deployed_line(summary: dict[str, Any]) -> str | None:
    """``deployed: <model>, because ...`` when more than one model was evaluated or the model
    deployed is not the student; None otherwise."""
    deployed = summary.get("deployed", "student")
    if len(summary.get("models") or {}) < 2 and deployed == "student":
        return None
    reason = summary.get("deployed_because") or (
        "the student is deployed" if deployed == "student" else f"{deployed} is deployed")
    return f"deployed: {deployed} ({reason})"


def _rows(model: dict[str, Any], exits: list[str]) -> list[list[str]]:
    """``[exit, val top1, test top1, test top5, last test top1]`` for each exit ``model``'s
    selected checkpoint has numbers for (``model``: a summary or one of its ``models``)."""
    best = model.get("best_val") or {"val": {}, "test": {}}
    last = model.get("last") or {}
    rows = []
    for exit_name in exits:
        key = f"{exit_name}/top1"
        if key not in best["test"] and key not in best["val"]:
            continue
        rows.append([exit_name, fmt(best["val"].get(key)), fmt(best["test"].get(key)),
                     fmt(best["test"].get(f"{exit_name}/top5")), fmt(last.get(f"test/{key}"))])
    return rows


def _dense_table(summary: dict[str, Any]) -> Table:
    """A dense task's table: the mean squared error of every exit's every field, on val and
    test at the selected checkpoint and on test at the last evaluation."""
    best, last = summary["best_val"], summary.get("last") or {}
    table = Table(title=f"{summary['run']}  (selected on val loss at step {best['step']})")
    for col in ("exit", "field", "val MSE", "test MSE", "last test MSE"):
        table.add_column(col, justify="left" if col in ("exit", "field") else "right")
    keys = sorted({k for k in (*best["val"], *best.get("test", {})) if k.endswith("_mse")},
                  key=lambda k: (_order(summary["exits"], k.split("/")[0]), k))
    for key in keys:
        exit_name, field = key.split("/")[0], key.split("/")[1][: -len("_mse")]
        table.add_row(exit_name, field, *(_mse(d.get(k)) for d, k in (
            (best["val"], key), (best.get("test", {}), key), (last, f"test/{key}"))))
    return table


def _order(exits: list[str], name: str) -> int:
    return exits.index(name) if name in exits else len(exits)


def _mse(value: float | None) -> str:
    """An error with four significant digits, ``-`` when absent."""
    return "-" if value is None else f"{value:.4g}"
