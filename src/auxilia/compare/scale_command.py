"""``auxilia scale``: the compound-scaling search on ``auxilia compare``'s runner."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_scale"]


def add_scale(sub: Any) -> None:
    """Register ``auxilia scale``."""
    p = sub.add_parser(
        "scale", help="search compound-scaling bases alpha, beta, gamma under "
                      "alpha*beta^2*gamma^2 ~ 2 on a budget (a resumable sweep)",
        description="auxilia scale CONFIG --budget steps=N [key=value ...]: trains the config's "
                    "model at phi=0 and at --phi for every (alpha, beta, gamma) on the grid, "
                    "as auxilia compare trains a sweep, and reports the grid. Running it again "
                    "skips finished runs and resumes interrupted ones.")
    p.add_argument("config", metavar="CONFIG", help="the baseline's config file ('-' for the "
                                                    "defaults)")
    p.add_argument("items", nargs="*", metavar="key=value", help="overrides for every run")
    p.add_argument("--budget", required=True, metavar="steps=N | epochs=E | time=30s",
                   help="every run's length")
    p.add_argument("--phi", type=float, default=1.0, help="the candidates' phi (default 1)")
    p.add_argument("--seeds", default="1", metavar="N | S,S,...",
                   help="a count (seeds 0..N-1) or a list (default 1)")
    p.add_argument("--step", type=float, default=0.1, help="the grid's spacing (default 0.1; "
                                                           "0.05 reaches the paper's point)")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="largest |alpha*beta^2*gamma^2 - 2| kept (default 0.1)")
    p.add_argument("--name", default=None, help="the sweep's folder (default scale-<config>)")
    p.add_argument("--workers", type=int, default=1, help="runs at once (default 1)")
    p.set_defaults(func=_scale)


def _scale(args: argparse.Namespace) -> int:
    from auxilia.atomic_files import atomic_write
    from auxilia.compare.collect import collect
    from auxilia.compare.report import write_report
    from auxilia.compare.runner import run_sweep
    from auxilia.compare.scale_search import candidates, grid_table, parse_budget, scale_sweep
    from auxilia.compare.spec import RESULTS

    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: give a whole number >= 1")
    seeds = [int(s) for s in args.seeds.split(",")] if "," in args.seeds else int(args.seeds)
    grid = candidates(args.step, tolerance=args.tolerance)
    sweep = scale_sweep(None if args.config == "-" else args.config, phi=args.phi,
                        budget=parse_budget(args.budget), seeds=seeds, grid=grid,
                        overrides=args.items, name=args.name, workers=args.workers)
    print(f"scale: {len(grid)} candidates at phi={args.phi:g} and the phi=0 baseline, "
          f"{len(sweep.seeds)} seed(s) each, into sweep {sweep.name!r}")
    outcome = run_sweep(sweep, workers=args.workers)
    collection = collect([outcome.folder])
    out = outcome.folder / RESULTS
    write_report(collection, out, baseline=sweep.baseline, k=sweep.k)  # compare's tables
    _, table = grid_table(collection, grid, sweep.k)
    data = table.encode()
    atomic_write(out / "scale_grid.md", lambda f: f.write(data))
    print(table + f"grid: {out / 'scale_grid.md'}; every figure: {out / 'results.md'}")
    return 1 if outcome.failed else 0
