"""Run every study on the embedded data and build the report that answers the five questions.

``make report`` runs this, sized to finish within a quarter of an hour on a
2-core CPU:

- depth studies at CIFAR-style depths 8, 20 and 56, residual and plain side by
  side, at the notebook's defaults (width 8, batch 32, synthetic data) but
  200 steps on 16x16 images (:data:`BUDGET`), each network trained with seeds
  0, 1 and 2;
- the normalization, initialisation and optimizer comparison at depth 20
  (:data:`TRAINING_CONFIGS`), the same budget and seeds;
- the initialisation study (no training), the architecture costs, and the
  lesion study of the trained depth-20 networks (which reuses their runs);
- then every executed notebook, the cross-run summary, ``summary.json``,
  ``answers.json`` and ``reports/index.html``.

Completed points are skipped, so running it again only rebuilds the report.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from analysis.extras import require_extra

# The command line imports this module first: without the report extra it stops here, naming the extra.
require_extra("report", feature="the command line (it runs notebooks and compiles reports)")

from analysis import report, sweep  # noqa: E402

DEPTHS = (8, 20, 56)
SEEDS = (0, 1, 2)
BUDGET = {"image_size": 16, "steps": 200, "stats_every": 20}
"""Settings every trained network of the default report takes besides the notebook's defaults: the synthetic
images at 16x16 pixels (a quarter of the notebook's compute per step), 200 steps and statistics every 20 steps,
so that three seeds of every network fit the quarter-hour budget on 2 CPU cores."""
TRAINING_DEPTH = 20
ADAM_LR = 0.001
"""Adam and AdamW take this peak learning rate (their usual scale); SGD keeps the notebook's 0.05."""
STEP_MILESTONES = [100, 150]
"""Where the 'step' schedule divides the rate by 10 in a 200-step run (half and three quarters, as He et al.)."""
TRAINING_CONFIGS = (
    # Normalization and initialisation, with SGD and the cosine schedule. The options that only change the
    # residual branches train the residual network alone: its plain counterpart is the same run as the
    # configuration without them (and one run is never trained by two points at once).
    ("both", {"norm": "batch"}),
    ("residual", {"norm": "batch", "zero_init_residual": True}),
    ("residual", {"norm": "batch", "init": "skipinit"}),
    ("both", {"norm": "none"}),
    ("residual", {"norm": "none", "init": "fixup"}),
    ("residual", {"norm": "none", "init": "skipinit"}),
    # Optimizer x schedule, with batch norm; all with the notebook's warmup.
    ("both", {"schedule": "step", "milestones": STEP_MILESTONES}),
    ("both", {"optimizer": "adam", "lr": ADAM_LR}),
    ("both", {"optimizer": "adam", "lr": ADAM_LR, "schedule": "step", "milestones": STEP_MILESTONES}),
    ("both", {"optimizer": "adamw", "lr": ADAM_LR}),
    ("both", {"optimizer": "adamw", "lr": ADAM_LR, "schedule": "step", "milestones": STEP_MILESTONES}),
)
"""(variants, settings that differ from the notebook's defaults): one configuration each."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs and studies go (default: runs)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="report folder (default: reports)")
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS),
                        help=f"depths of the depth studies (default: {' '.join(map(str, DEPTHS))})")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help=f"seeds of every network (default: {' '.join(map(str, SEEDS))})")
    parser.add_argument("--workers", type=int, default=None, help="parallel notebook executions (default: by cores)")


def training_points(seeds: list[int]) -> list[sweep.Point]:
    """The normalization / initialisation / optimizer comparison at :data:`TRAINING_DEPTH`."""
    points = []
    for variants, config in TRAINING_CONFIGS:
        settings = sweep.with_seeds({name: [value] for name, value in {**BUDGET, **config}.items()}, seeds)
        points += sweep.expand_grid([TRAINING_DEPTH], [variants], settings)
    return points


def run(args: argparse.Namespace) -> int:
    report.checked_out_dir(args.out)
    seeds = {"seeds": [list(args.seeds)]}
    budget = {name: [value] for name, value in BUDGET.items()}
    first = [
        *sweep.expand_grid(args.depths, ["residual", "plain"], {**budget, **seeds}),
        *training_points(args.seeds),
        *sweep.expand_grid(None, None, seeds, kind="init"),
        *sweep.expand_grid(None, None, seeds, kind="costs"),
    ]
    results = [sweep.run_sweep(first, runs_dir=args.runs_dir, workers=args.workers)]
    # The lesion study deletes blocks of the depth-20 networks trained above, so it runs after them.
    lesion = sweep.expand_grid([TRAINING_DEPTH], None, {**budget, **seeds}, kind="lesion")
    results.append(sweep.run_sweep(lesion, runs_dir=args.runs_dir, workers=args.workers))
    index = report.build_reports(args.runs_dir, args.out)
    results = pd.concat(results, ignore_index=True)
    failed = int((results["status"] != "complete").sum())
    print(f"report: {index.resolve()}" + (f" ({failed} point(s) failed; see the index)" if failed else ""))
    return 1 if failed else 0
