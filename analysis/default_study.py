"""Run the default depth study on the embedded data and build its HTML report.

A small sweep over CIFAR-style depths (8, 20, 56) at the notebook's defaults
(width 8, 300 steps, batch 32 on the built-in synthetic data), residual and
plain side by side, each trained with seeds 0, 1 and 2, sized to finish
within a quarter of an hour on a 2-core CPU; then every executed notebook,
the cross-run summary, ``summary.json`` and ``reports/index.html``.
``make report`` runs this. Completed points are skipped, so running it again
only rebuilds the report.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from analysis import report, sweep

DEPTHS = (8, 20, 56)
SEEDS = (0, 1, 2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs and studies go (default: runs)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="report folder (default: reports)")
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS),
                        help=f"depths to study (default: {' '.join(map(str, DEPTHS))})")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help=f"seeds of every network (default: {' '.join(map(str, SEEDS))})")
    parser.add_argument("--workers", type=int, default=None, help="parallel notebook executions (default: by cores)")


def run(args: argparse.Namespace) -> int:
    points = sweep.expand_grid(args.depths, ["residual", "plain"], sweep.with_seeds({}, args.seeds))
    results = sweep.run_sweep(points, runs_dir=args.runs_dir, workers=args.workers)
    index = report.build_reports(args.runs_dir, args.out)
    failed = int((results["status"] != "complete").sum())
    print(f"report: {index.resolve()}" + (f" ({failed} point(s) failed; see the index)" if failed else ""))
    return 1 if failed else 0
