"""Command line: ``auxilia train | rounds | compare | report | eval | export | list``."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table


EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``auxilia`` command."""
    try:
        return _main(argv)
    except KeyboardInterrupt as err:  # SIGINT: 130, SIGTERM: 143 (128 + signal number)
        if not hasattr(err, "exit_code"):  # not a stop flag's Interrupted: came while importing
            print("SIGINT received: stopped", file=sys.stderr, flush=True)
        return int(getattr(err, "exit_code", EXIT_INTERRUPTED))


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for "Resume with: ..." lines
    takes_items = args.command in ("train", "compare", "scale")
    if extra and (not takes_items or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if takes_items:
        args.items = [*args.items, *extra]  # key=value items may follow the options
    try:
        return int(args.func(args) or 0)
    except Exception as err:  # one readable line instead of a traceback
        if os.environ.get("AUXILIA_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auxilia", description=(
        "Train image classifiers with auxiliary supervision. Set AUXILIA_DEBUG=1 for tracebacks."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a run from a YAML config and key=value overrides "
                                     "(or a pipeline file's rounds, as auxilia rounds does)")
    p.add_argument("items", nargs="*", metavar="CONFIG | key=value",
                   help="an optional YAML file first, then dotted overrides like optim.lr=0.1")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                   help="continue a run exactly from its last checkpoint (the run folder, or the "
                        "one the config names)")
    p.set_defaults(func=_train)

    p = sub.add_parser("rounds", help="train a pipeline of rounds (e.g. pretrain, then "
                                      "fine-tune), skipping finished ones and resuming the rest")
    p.add_argument("pipeline", metavar="PIPELINE.yaml",
                   help="the pipeline file: name, base config, overrides, rounds")
    p.add_argument("items", nargs="*", metavar="key=value",
                   help="overrides for every round, applied after the rounds' own")
    p.set_defaults(func=_rounds)

    from auxilia.compare.command import add_compare, add_report
    from auxilia.compare.scale_command import add_scale

    add_compare(sub)
    add_report(sub)
    add_scale(sub)

    p = sub.add_parser("eval", help="evaluate every exit of a run folder or checkpoint")
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which checkpoint of a run folder (default: best on validation)")
    p.add_argument("--split", choices=("val", "test", "both"), default="both")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for the report: anytime.json/.png for best, anytime-last.* for "
                        "last, X-anytime.* for a checkpoint file X.pt (default: the run "
                        "folder, or beside the file)")
    p.add_argument("--latency-batch", type=int, default=64, metavar="N",
                   help="batch size of the CPU latency measurement (default: 64)")
    p.add_argument("--thresholds", type=_thresholds, default=None, metavar="T,T,...",
                   help="early-exit confidence thresholds (default: chosen on val so that "
                        "100%% to 5%% of it leaves early, and 1 = always final; a fixed grid "
                        "without a val split)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the report's files in a folder that is not an auxilia run "
                        "folder (in a run folder they are always replaced)")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="the run's data.root when the data moved since training (its "
                        "fingerprint must match)")
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="where to compute the logits: auto, cpu, cuda, cuda:N or mps (default: "
                        "the run's train.device, or the best one here when this machine lacks "
                        "it, with a note)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("export", help="export a run's deployable classifier (heads removed)")
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx", "state_dict"),
                   help="torchscript (.pt), onnx (.onnx) or state_dict (.safetensors)")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="file (or folder) to write (default: <run>/export/model.<suffix>)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which checkpoint of a run folder (default: best on validation)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="the run's data.root when the data moved since training (its "
                        "fingerprint must match)")
    p.set_defaults(func=_export)

    p = sub.add_parser("list", help="list registered methods, models or datasets")
    p.add_argument("what", choices=("methods", "models", "datasets"))
    p.set_defaults(func=_list)
    return parser


def _train(args: argparse.Namespace) -> int:
    from auxilia.config import load_config
    from auxilia.engine import train
    from auxilia.ranks import launched_rank

    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    kind = "config" if path is None else _kind(Path(path))
    if kind == "sweep":
        raise ValueError(f"{path} is a sweep file (it has variants), not a training config: "
                         f"run it with auxilia compare {path}")
    if kind == "pipeline":
        if args.resume is not None or args.overwrite:
            raise ValueError(f"{path} is a pipeline: it resumes its rounds by itself (finished "
                             "rounds are skipped, an interrupted one resumed); --resume and "
                             "--overwrite are for single runs")
        args.pipeline, args.items = path, items
        return _rounds(args)
    if args.resume is not None and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
    if args.resume and path is None:
        from auxilia.engine.resume_config import resume_config

        config = resume_config(Path(args.resume), items)
    else:
        config = load_config(path, items)
    if args.resume:
        from auxilia.engine.auto import resolve

        # named as training names it: after auto's model and size are resolved
        folder = Path(config.run.dir) / resolve(config)[0].run_name()
        if Path(args.resume).resolve() != folder.resolve():
            raise ValueError(f"--resume {args.resume} but the config's run folder is {folder}")
    result = train(config, resume=args.resume is not None, overwrite=args.overwrite)
    if launched_rank() == 0:  # under torchrun every rank returns the summary rank 0 wrote
        _print_summary(result.summary)
    return 0


def _kind(path: Path) -> str:
    """``pipeline`` (a YAML file with ``rounds``), ``sweep`` (with ``variants``) or ``config``."""
    from auxilia.config import read_yaml

    raw = read_yaml(path)
    return "pipeline" if "rounds" in raw else "sweep" if "variants" in raw else "config"


def _rounds(args: argparse.Namespace) -> int:
    from auxilia.engine.rounds import load_pipeline, run_pipeline
    from auxilia.engine.signals import StopFlag

    bad = [item for item in args.items if "=" not in item]
    if bad:
        raise ValueError(f"auxilia rounds takes one pipeline file, then key=value overrides; "
                         f"got {' '.join(bad)}")
    resume = "Resume with: " + shlex.join(["auxilia", *args.argv])
    with StopFlag() as stop:  # a signal at any moment, the table's printing included
        try:
            results = run_pipeline(load_pipeline(args.pipeline, args.items))
        except KeyboardInterrupt:
            print(resume, file=sys.stderr, flush=True)
            raise
        for r in results:
            print(f"{r.name:16s} {r.status:8s} {_round_figures(r.summary, r.val_top1, r.test_top1)}"
                  f"  {r.run_dir}")
        if stop.requested:
            print(f"{stop.name} received as the pipeline ended: every round is finished. "
                  f"{resume}", file=sys.stderr, flush=True)
            stop.check()
    return 0


def _print_summary(summary: dict) -> None:
    """The final table: every evaluated model (:mod:`auxilia.summary_table`), why the deployed
    one is, and the run's size and speed."""
    from rich.console import Console

    from auxilia.summary_table import deployed_line, summary_table

    console = Console()
    if not summary.get("best_val"):
        console.print(f"{summary['run']}: no evaluation had a finite validation loss and top-1, "
                      "so no checkpoint was selected (no best.pt); see metrics.jsonl")
        return
    console.print(summary_table(summary))
    line = deployed_line(summary)
    if line:
        console.print(line, highlight=False, markup=False)
    console.print(f"{summary['steps']} steps, {summary['train_seconds']:.1f} s of training, "
                  f"{summary['train_images_per_s']:.0f} images/s; parameters "
                  f"{summary['params']['total']:,} in training ("
                  f"{summary['params']['trainable']:,} trainable), "
                  f"{summary['params']['deployed']:,} deployed")


def _round_figures(summary: dict, val: float | None, test: float | None) -> str:
    """A training round's val and test top-1; a labelling round's entries and the
    pseudo-labels' top-1 on the images whose truth is known (reporting only)."""
    if "entries" not in summary:
        return f"val top1 {_fmt(val):>6s}  test top1 {_fmt(test):>6s}"
    accuracy = (summary.get("accuracy") or {}).get("entries")
    return (f"{summary['entries']:,} pseudo-labels, top1 {_fmt(accuracy):>6s} "
            "where known")


def _fmt(value: float | None) -> str:
    from auxilia.summary_table import fmt

    return fmt(value)


def _thresholds(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"--thresholds wants comma-separated numbers >= 0 like 0.5,0.9,1, got {text!r}")
    return values


def _eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from auxilia.engine.anytime import (
        anytime_report,
        checkpoint_label,
        report_names,
        report_paths,
        write_report,
    )
    from auxilia.engine.export import run_folder_of

    if args.latency_batch < 1:
        raise ValueError(f"--latency-batch must be >= 1, got {args.latency_batch}")
    own = run_folder_of(args.path)
    out = args.out or own
    _refuse_another_runs_folder(Path(out), own)
    names = report_names(checkpoint_label(args.path, args.checkpoint))
    report_paths(out, args.overwrite, names)  # refuse before the evaluation, not after it
    splits = ("val", "test") if args.split == "both" else (args.split,)
    report = anytime_report(args.path, args.checkpoint, splits, thresholds=args.thresholds,
                            latency_batch=args.latency_batch, data_root=args.data_root,
                            device=args.device)
    console = Console()
    for line in report["header"]:
        console.print(line, highlight=False, markup=False)
    console.print(_exit_table(report, f"{args.path} (step {report['step']})"))
    console.print(
        f"params, MFLOPs per image and CPU ms per batch of {report['latency_batch']} count what "
        "each exit needs: the backbone up to it and its head (ms: summed op times, fastest of "
        f"{report['latency_repeats']} runs; one untraced forward of every exit takes "
        f"{report['forward_latency_ms']:.1f} ms)")
    skipped = report["early_exit"].get("skipped")
    console.print(skipped or _early_exit_table(report))
    json_path, png_path = write_report(report, out, args.overwrite)
    console.print(f"wrote {json_path} and {png_path}")
    return 0


def _refuse_another_runs_folder(out: Path, own: Path) -> None:
    """``eval --out`` never writes into another run's folder (its anytime files are its own)."""
    from auxilia.engine.owned import enclosing_run

    run = enclosing_run(out)
    if run is not None and run != own.resolve():
        raise ValueError(f"--out {out} is inside the run folder {run}, another run than {own}: "
                         f"its anytime files are that run's; leave --out out (the report goes "
                         f"to {own}) or choose a folder outside run folders")


def _exit_table(report: dict, title: str) -> Table:
    from rich.table import Table

    splits = [s for s in ("val", "test") if s in next(iter(report["exits"].values()))]
    table = Table(title=title)
    table.add_column("exit")
    for split in splits:
        table.add_column(f"{split} top1", justify="right")
        table.add_column(f"{split} top5", justify="right")
    for col in ("params", "MFLOPs", f"ms / {report['latency_batch']} img"):
        table.add_column(col, justify="right")
    for name, e in report["exits"].items():
        row = [name]
        for split in splits:
            row += [_fmt(e[split]["top1"]), _fmt(e[split]["top5"])]
        table.add_row(*row, f"{e['params']:,}", f"{e['flops'] / 1e6:.3f}", f"{e['latency_ms']:.1f}")
    return table


def _early_exit_table(report: dict) -> Table:
    from rich.table import Table

    early = report["early_exit"]
    splits = [s for s in ("val", "test") if s in early]
    shown = splits[-1]  # test when evaluated; exit shares and costs are of this split
    source = {"val": "quantiles of val confidence", "given": "--thresholds",
              "fixed": "a fixed grid, as the run has no val split"}[early["threshold_source"]]
    table = Table(title=f"early exit at max softmax >= threshold (thresholds: {source}; costs "
                        f"and exit shares on {shown}; no threshold is selected on test)")
    table.add_column("threshold", justify="right")
    for split in splits:
        table.add_column(f"{split} top1", justify="right")
    table.add_column("mean MFLOPs", justify="right")
    for name in early["order"]:
        table.add_column(f"% {name}", justify="right")
    for i, row in enumerate(early[shown]):
        t = row["threshold"]
        cells = [f"{t:g}" + (" (final)" if t >= 1 else "")]
        cells += [_fmt(early[split][i]["top1"]) for split in splits]
        cells.append(f"{row['mean_flops'] / 1e6:.3f}")
        cells += [f"{row['fraction'][name]:.1f}" for name in early["order"]]
        table.add_row(*cells)
    return table


def _export(args: argparse.Namespace) -> int:
    from auxilia.engine.export import export_run

    result = export_run(args.path, args.format, args.out, args.checkpoint, args.overwrite,
                        data_root=args.data_root)
    removed = result.params_trained - result.params_exported
    for line in result.header:
        print(line)
    print(f"exported {args.format} to {result.path} (described in {result.sidecar})")
    print(f"parameters: {result.params_exported:,} exported, {result.params_trained:,} trained "
          f"({removed:,} in training-only heads removed)")
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
