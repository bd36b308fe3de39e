"""``auxilia compare`` and ``auxilia report``: the command-line side of comparisons."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from auxilia.engine.signals import StopFlag

__all__ = ["add_compare", "add_report"]


def add_compare(sub: Any) -> None:
    """Register ``auxilia compare``."""
    p = sub.add_parser(
        "compare", help="train variants x seeds on one budget and report them (resumable)",
        description="auxilia compare SWEEP.yaml [key=value ...], or for the quick case "
                    "auxilia compare CONFIG.yaml --methods a,b,[c,d] --seeds 3 [key=value ...]."
                    " Running it again skips finished runs and resumes interrupted ones.")
    p.add_argument("target", metavar="SWEEP_OR_CONFIG",
                   help="a sweep file, or with --methods a config file ('-' for the defaults)")
    p.add_argument("items", nargs="*", metavar="key=value", help="overrides for every run")
    p.add_argument("--methods", default=None, metavar="A,B,[C,D]",
                   help="quick mode: one variant per method; a bracketed list is a combination")
    p.add_argument("--seeds", default=None, metavar="N | S,S,...",
                   help="quick mode: a count (seeds 0..N-1) or a list (default 3)")
    p.add_argument("--name", default=None, help="quick mode: the sweep's folder name "
                                                "(default compare-<config name>)")
    p.add_argument("--baseline", default=None, help="the variant paired comparisons are "
                                                    "against (default: the first)")
    p.add_argument("--k", type=int, default=None, help="evaluations in the median-of-last-k "
                                                       "figure (default 3)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs at once, each in its own process (default 1; the CPU threads "
                        "are shared among them)")
    p.set_defaults(func=_compare)


def add_report(sub: Any) -> None:
    """Register ``auxilia report``."""
    p = sub.add_parser("report", help="tables and plots from sweep or run folders")
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP",
                   help="sweep folders, run folders, or folders holding run folders")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="report folder (default: <sweep>/results for one sweep, else ./report)")
    p.add_argument("--baseline", default=None, help="the variant of the paired comparison")
    p.add_argument("--k", type=int, default=None, help="evaluations in the median-of-last-k")
    p.set_defaults(func=_report)


def _seeds(text: str | None) -> int | list[int]:
    if text is None:
        return 3
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give a count (3) or seeds (0,1,2)") from None
    return values[0] if len(values) == 1 and "," not in text else values


def _positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse ``--workers 0``, ``--k 0``: argparse takes any integer."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name} {value}: give a whole number >= 1 (--{name} "
                             f"{'2' if name == 'workers' else '3'})")


def _compare(args: argparse.Namespace) -> int:
    from auxilia.compare.runner import run_sweep
    from auxilia.compare.spec import load_sweep, quick_sweep, sweep_folder

    bad = [item for item in args.items if "=" not in item]
    if bad:
        raise ValueError(f"auxilia compare takes one file, then key=value overrides; got "
                         f"{' '.join(bad)}")
    _positive(args, "workers", "k")
    options = {k: v for k, v in (("baseline", args.baseline), ("k", args.k)) if v is not None}
    if args.methods is not None:
        config = None if args.target == "-" else args.target
        sweep = quick_sweep(config, args.methods, _seeds(args.seeds), args.items, args.name,
                            **options)
    else:
        given = [f"--{n}" for n in ("seeds", "name") if getattr(args, n) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} go with --methods; a sweep file sets them "
                             "itself (seeds:, name:)")
        sweep = load_sweep(args.target, args.items)
        if options:
            import dataclasses

            sweep = dataclasses.replace(sweep, **options)
    resume = shlex.join(["auxilia", *getattr(args, "argv", ["compare", args.target])])
    # a signal at any moment, the report's writing included, stops here with its exit status
    with StopFlag() as stop:
        try:
            outcome = run_sweep(sweep, workers=args.workers)
        except KeyboardInterrupt as err:
            print(f"{str(err) or 'SIGINT'} received: sweep {sweep.name!r} stopped "
                  f"({sweep_folder(sweep)}: finished runs are kept, a stopped run resumes from "
                  f"its last.pt). Resume with: {resume}", file=sys.stderr, flush=True)
            raise
        code = _write([outcome.folder], None, sweep.baseline, sweep.k)
        _stopped_after_report(stop, f"Resume with: {resume}")
    if outcome.failed:
        for key, error in outcome.failed.items():
            print(f"failed: {key}: {error}", file=sys.stderr)
        return 1
    return code


def _report(args: argparse.Namespace) -> int:
    _positive(args, "k")
    with StopFlag() as stop:  # the report's files are written whole before a signal stops it
        code = _write(args.paths, Path(args.out) if args.out else None, args.baseline, args.k)
        _stopped_after_report(stop, "")
    return code


def _stopped_after_report(stop: StopFlag, then: str) -> None:
    """Raise :class:`Interrupted` for a signal that came while the report was written."""
    if stop.requested:
        print(f"{stop.name} received: the report was finished first, then stopped. {then}"
              .rstrip(), file=sys.stderr, flush=True)
        stop.check()


def _write(paths: list[Any], out: Path | None, baseline: str | None, k: int | None) -> int:
    from auxilia.compare.collect import SWEEP_FILE, collect
    from auxilia.compare.report import write_report
    from auxilia.compare.spec import RESULTS

    collection = collect(paths)
    if out is None:
        one_sweep = len(paths) == 1 and (Path(paths[0]) / SWEEP_FILE).is_file()
        out = Path(paths[0]) / RESULTS if one_sweep else Path("report")
    files = write_report(collection, out, baseline=baseline, k=k)
    print((out / "results.md").read_text())
    print(f"report: {', '.join(str(f) for f in files)}")
    return 0
