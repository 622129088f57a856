import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.findings import compute_findings
from analysis.frames import TRAIN_WINDOW
from analysis.gradient_flow import GROWS, SHRINKS

STATS_COLUMNS = ["run_id", "step", "module", "module_type", "index", "call", "kind", "stat", "value", "param"]
SEEDS = (0, 1, 2)


def make_runs(seeds=SEEDS, diverged=()):
    rows = []
    for variant in ("residual", "plain"):
        for seed in seeds:
            bad = (variant, seed) in diverged
            rows.append({"variant": variant, "seed": seed, "run_id": f"{variant}-{seed}",
                         "status": "diverged" if bad else "complete", "diverged_step": 17 if bad else None,
                         "diverged_layer": "stages.0.2.branch.0" if bad else None})
    return pd.DataFrame(rows)


def make_metrics(runs, final_loss, steps=25):
    """Train loss constant at ``final_loss[(variant, seed)]``, a peak lr at step 10, validation every 10 steps."""
    rows = []
    for run in runs.itertuples():
        loss = final_loss[(run.variant, run.seed)]
        for step in range(1, steps + 1):
            lr = 0.1 * min(step, 10) / 10 * (1 - (step - 10) / steps if step > 10 else 1)
            rows += [(run.run_id, step, "train", "loss", loss), (run.run_id, step, "train", "accuracy", 0.5),
                     (run.run_id, step, "train", "lr", lr)]
            if step % 10 == 0 or step == steps:
                rows += [(run.run_id, step, "val", "loss", loss), (run.run_id, step, "val", "accuracy", 0.4 + run.seed / 100)]
    return pd.DataFrame(rows, columns=["run_id", "step", "split", "metric", "value"])


def make_stats(runs, factor):
    """Six main-path convs whose gradient norm changes by ``factor[variant]`` per layer towards the input.

    Steps 1 and 20; update ratios 0.01 * layer at step 10 (the peak lr) and 1.0 elsewhere; residual blocks with ratio 0.5.
    """
    rows = []
    for run in runs.itertuples():
        for step in (1, 10, 20):
            for layer in range(1, 7):
                module = "stem.0" if layer == 1 else f"stages.0.{layer}.branch.0"
                grad = factor[run.variant] ** (6 - layer) * (1 + run.seed / 10)
                rows.append((run.run_id, step, module, "Conv2d", 2 * layer, 0, "param_grad", "norm", grad, "weight"))
                rows.append((run.run_id, step, module, "Conv2d", 2 * layer, 0, "weight", "norm", 3.0, "weight"))
                update = 0.01 * layer if step == 10 else 1.0
                rows.append((run.run_id, step, module, "Conv2d", 2 * layer, 0, "update", "ratio", update, "weight"))
                rows.append((run.run_id, step, f"relu{layer}", "ReLU", 2 * layer + 1, 0, "activation",
                             "dead_fraction", 0.1 * (run.variant == "plain"), None))
            rows.append((run.run_id, step, "fc", "Linear", 20, 0, "param_grad", "norm", 100.0, "weight"))
            if run.variant == "residual":
                rows.append((run.run_id, step, "stages.0.2", "BasicBlock", 5, 0, "block", "ratio", 0.5, None))
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def losses(plain, residual):
    return {**{("plain", s): v for s, v in zip(SEEDS, plain)}, **{("residual", s): v for s, v in zip(SEEDS, residual)}}


def test_values_over_seeds_match_direct_computations():
    runs = make_runs()
    final = losses(plain=[2.0, 2.2, 2.4], residual=[1.0, 1.1, 1.5])
    found = compute_findings(runs, make_metrics(runs, final), make_stats(runs, {"plain": 1.5, "residual": 0.8}))
    per_run = found.per_run.set_index(["variant", "seed"])
    assert per_run.loc[("plain", 1), "final_train_loss"] == pytest.approx(2.2)
    assert per_run.loc[("plain", 0), "grad_growth_init"] == pytest.approx(1.5)
    assert per_run.loc[("plain", 2), "grad_ratio_init"] == pytest.approx(1.5 ** 5)  # stem over last conv, not fc
    assert per_run.loc[("residual", 0), "grad_growth_final"] == pytest.approx(0.8)
    assert per_run.loc[("plain", 0), "update_ratio_peak_lr"] == pytest.approx(np.median(0.01 * np.arange(1, 7)))
    assert per_run.loc[("plain", 0), "peak_lr"] == pytest.approx(0.1)
    assert per_run.loc[("residual", 0), "block_ratio_final"] == 0.5
    assert math.isnan(per_run.loc[("plain", 0), "block_ratio_final"])
    row = found.table.loc[("plain", "final_train_loss")]
    assert row["mean"] == pytest.approx(2.2) and row["min"] == 2.0 and row["max"] == pytest.approx(2.4)
    assert row["n"] == 3
    assert row["sd"] == pytest.approx(np.std([2.0, 2.2, 2.4], ddof=1))
    assert found.comparison["plain_loss_higher"] is True and found.comparison["seeds_plain_higher"] == 3
    assert found.comparison["loss_gap"]["values"] == pytest.approx([1.0, 1.1, 0.9])


def test_gradient_wording_follows_the_planted_profiles():
    runs = make_runs()
    final = losses(plain=[2.0, 2.2, 2.4], residual=[1.0, 1.1, 1.5])
    text = compute_findings(runs, make_metrics(runs, final),
                            make_stats(runs, {"plain": 1.5, "residual": 0.8})).to_markdown()
    assert f"plain network's convolutions {GROWS} in all 3 seeds: a fitted factor of 1.5 per layer" in text
    assert f"residual network's convolutions {SHRINKS} in all 3 seeds: a fitted factor of 0.8 per layer" in text
    swapped = compute_findings(runs, make_metrics(runs, final),
                               make_stats(runs, {"plain": 0.8, "residual": 1.0})).to_markdown()
    assert f"plain network's convolutions {SHRINKS}" in swapped
    assert "residual network's convolutions is about flat in all 3 seeds" in swapped
    assert "vanish" not in text + swapped and "explod" not in text + swapped


def test_a_comparison_that_holds_for_only_some_seeds_is_unresolved():
    runs = make_runs()
    final = losses(plain=[2.0, 1.0, 2.4], residual=[1.0, 1.1, 1.5])
    found = compute_findings(runs, make_metrics(runs, final), make_stats(runs, {"plain": 1.5, "residual": 0.8}))
    assert found.comparison["plain_loss_higher"] is None and found.comparison["seeds_plain_higher"] == 2
    assert "Unresolved at this budget: the plain network ended with the higher train loss in 2 of 3 seeds" \
        in found.to_markdown()
    held = compute_findings(runs, make_metrics(runs, losses([2.0, 2.2, 2.4], [1.0, 1.1, 1.5])),
                            make_stats(runs, {"plain": 1.5, "residual": 0.8}))
    assert "The plain network ended with the higher train loss in every one of 3 seeds" in held.to_markdown()


def test_one_seed_is_not_called_a_conclusion():
    runs = make_runs(seeds=(0,))
    final = {("plain", 0): 2.0, ("residual", 0): 1.0}
    found = compute_findings(runs, make_metrics(runs, final), make_stats(runs, {"plain": 1.5, "residual": 0.8}))
    assert "in the one seed run (not yet a conclusion)" in found.to_markdown()


def test_diverged_seeds_are_reported_and_make_the_mean_non_finite():
    runs = make_runs(diverged={("plain", 1)})
    final = losses(plain=[2.0, math.nan, 2.4], residual=[1.0, 1.1, 1.5])
    found = compute_findings(runs, make_metrics(runs, final), make_stats(runs, {"plain": 1.5, "residual": 0.8}))
    assert ("The plain network diverged in 1 of 3 seeds: seed 1: non-finite loss at step 17, first non-finite "
            "output in stages.0.2.branch.0.") in found.sentences
    assert math.isnan(found.table.loc[("plain", "final_train_loss"), "mean"])
    assert found.comparison["plain_loss_higher"] is None


def test_json_has_one_group_per_variant_with_per_seed_values():
    runs = make_runs()
    final = losses(plain=[2.0, 2.2, 2.4], residual=[1.0, 1.1, 1.5])
    found = compute_findings(runs, make_metrics(runs, final), make_stats(runs, {"plain": 1.5, "residual": 0.8}))
    data = json.loads(json.dumps(found.to_json(), allow_nan=False))
    assert data["varying"] == ["variant"]
    groups = {group["settings"]["variant"]: group for group in data["groups"]}
    assert groups["plain"]["n_seeds"] == 3 and groups["plain"]["seeds"] == [0, 1, 2]
    assert groups["plain"]["metrics"]["final_train_loss"]["values"] == pytest.approx([2.0, 2.2, 2.4])
    assert groups["residual"]["metrics"]["block_ratio_final"]["mean"] == 0.5
    assert groups["plain"]["metrics"]["block_ratio_final"]["mean"] is None
    assert groups["plain"]["metrics"]["diverged"] == 0
    assert data["sentences"] == found.sentences
    assert TRAIN_WINDOW == 10
