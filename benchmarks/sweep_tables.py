"""A finished or partly finished sweep's report into ``benchmarks/results`` and docs/benchmarks.md.

The comparison itself is ``auxilia compare benchmarks/sweeps/<name>.yaml``; this script only
re-runs ``auxilia report`` on its folder, copies ``results.md`` / ``results.csv`` /
``runs.csv`` and the plots to ``benchmarks/results/<name>/``, and replaces docs/benchmarks.md's
``<!-- bench:<name> -->`` block with the table.

Usage: ``python benchmarks/sweep_tables.py runs/bench/cds_cifar10``
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import write_readme_section

from auxilia.compare.collect import collect
from auxilia.compare.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the sweep folder (<run.dir>/<sweep name>)")
    parser.add_argument("--name", default=None, help="results folder and docs block "
                                                     "(default: the sweep folder's name)")
    args = parser.parse_args()
    folder = Path(args.sweep)
    name = args.name or folder.name
    files = write_report(collect([folder]), folder / "results")
    out = ROOT / "benchmarks" / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, out / path.name)
    table = (out / "results.md").read_text().strip()
    write_readme_section(name, table)
    print(table)


if __name__ == "__main__":
    main()
