"""Command line: ``auxilia train | eval | list``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``auxilia`` command."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "train" or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "train":
        args.items = [*args.items, *extra]  # key=value items may follow the options
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:  # one readable line instead of a traceback
        if os.environ.get("AUXILIA_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auxilia", description=(
        "Train image classifiers with auxiliary supervision. Set AUXILIA_DEBUG=1 for tracebacks."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a run from a YAML config and key=value overrides")
    p.add_argument("items", nargs="*", metavar="CONFIG | key=value",
                   help="an optional YAML file first, then dotted overrides like optim.lr=0.1")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                   help="continue a run exactly from its last checkpoint (the run folder, or the "
                        "one the config names)")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate every exit of a run folder or checkpoint")
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which checkpoint of a run folder (default: best on validation)")
    p.add_argument("--split", choices=("val", "test", "both"), default="both")
    p.set_defaults(func=_eval)

    p = sub.add_parser("list", help="list registered methods, models or datasets")
    p.add_argument("what", choices=("methods", "models", "datasets"))
    p.set_defaults(func=_list)
    return parser


def _train(args: argparse.Namespace) -> int:
    from auxilia.config import load_config
    from auxilia.engine import train
    from auxilia.engine.runlog import RunFolder

    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    if args.resume and path is None and not items:
        config = load_config(RunFolder(args.resume).config)
    else:
        config = load_config(path, items)
    if args.resume:
        folder = Path(config.run.dir) / config.run_name()
        if Path(args.resume).resolve() != folder.resolve():
            raise ValueError(f"--resume {args.resume} but the config's run folder is {folder}")
    result = train(config, resume=args.resume is not None, overwrite=args.overwrite)
    _print_summary(result.summary)
    return 0


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    best = summary["best_val"]
    table = Table(title=f"{summary['run']}  (selected on val at step {best['step']})")
    table.add_column("exit")
    for col in ("val top1", "test top1", "test top5", "last test top1"):
        table.add_column(col, justify="right")
    for exit_name in summary["exits"]:
        key = f"{exit_name}/top1"
        if key not in best["test"] and key not in best["val"]:
            continue
        table.add_row(exit_name, _fmt(best["val"].get(key)), _fmt(best["test"].get(key)),
                      _fmt(best["test"].get(f"{exit_name}/top5")),
                      _fmt(summary["last"].get(f"test/{key}")))
    console = Console()
    console.print(table)
    console.print(f"{summary['steps']} steps, {summary['train_seconds']:.1f} s of training, "
                  f"{summary['train_images_per_s']:.0f} images/s; parameters "
                  f"{summary['params']['total']:,} trained, {summary['params']['deployed']:,} "
                  "deployed")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from auxilia.engine.reload import evaluate_run

    splits = ("val", "test") if args.split == "both" else (args.split,)
    results, checkpoint = evaluate_run(args.path, args.checkpoint, splits)
    table = Table(title=f"{args.path} (step {checkpoint['loop']['step']})")
    table.add_column("exit")
    for split in results:
        table.add_column(f"{split} top1", justify="right")
        table.add_column(f"{split} top5", justify="right")
    exits = [k.split("/")[0] for k in next(iter(results.values())) if k.endswith("/top1")]
    for exit_name in exits:
        row = [exit_name]
        for metrics in results.values():
            row += [_fmt(metrics[f"{exit_name}/top1"]), _fmt(metrics[f"{exit_name}/top5"])]
        table.add_row(*row)
    Console().print(table)
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from auxilia.recipes import RECIPES

        for name, recipe in sorted(RECIPES.items()):
            print(f"{name:20s} {recipe.summary}")
    elif args.what == "models":
        from auxilia.models.registry import list_models

        for name in list_models():
            print(name)
        print("timm/<name>          any timm model, e.g. timm/efficientnet_b0 (pretrained: false)")
    else:
        from auxilia.data.sources import SOURCES

        for name, spec in sorted(SOURCES.items()):
            print(f"{name:15s} {getattr(spec, 'description', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
