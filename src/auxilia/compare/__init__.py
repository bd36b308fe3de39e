"""Honest comparisons: sweeps of variants × seeds on one budget, and their reports.

``auxilia compare`` / ``auxilia report`` on the command line; from Python:

>>> from auxilia.compare import collect, load_sweep, run_sweep, write_report
>>> outcome = run_sweep(load_sweep("benchmarks/sweeps/cds_cifar10.yaml"))  # doctest: +SKIP
>>> write_report(collect([outcome.folder]), outcome.folder / "results")    # doctest: +SKIP
"""

from auxilia.compare.collect import Collection, RunRecord, collect
from auxilia.compare.report import write_report
from auxilia.compare.runner import SweepOutcome, run_sweep
from auxilia.compare.spec import Sweep, SweepError, Variant, load_sweep, quick_sweep

__all__ = ["Collection", "RunRecord", "Sweep", "SweepError", "SweepOutcome", "Variant",
           "collect", "load_sweep", "quick_sweep", "run_sweep", "write_report"]
