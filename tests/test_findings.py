import math

import numpy as np
import pandas as pd
import pytest

from analysis.findings import COLUMNS, FINAL_WINDOW, compute_findings, study_findings

STATS_COLUMNS = ["variant", "step", "module", "module_type", "index", "call", "kind", "stat", "value", "param"]


def make_metrics(steps=25, plain_offset=0.7):
    rng = np.random.default_rng(0)
    rows = []
    for variant, offset in (("residual", 0.0), ("plain", plain_offset)):
        for step in range(1, steps + 1):
            rows += [(variant, step, "train", "loss", 2.3 - step / steps + offset + 0.1 * rng.random()),
                     (variant, step, "train", "accuracy", 0.1 + 0.02 * step - offset / 10),
                     (variant, step, "train", "lr", 0.1)]
            if step % 10 == 0 or step == steps:
                rows += [(variant, step, "val", "loss", 2.0 - step / 50 + offset),
                         (variant, step, "val", "accuracy", 0.2 + step / 100 - offset / 2)]
    return pd.DataFrame(rows, columns=["variant", "step", "split", "metric", "value"])


def make_stats():
    """Two recorded steps; layers in forward order stem.0, branch.0, (shortcut.0), fc."""
    rows = []
    grads = {"residual": {0: (0.5, 0.4, 9.0, 1.0), 20: (0.3, 0.2, 9.0, 1.5)},
             "plain": {0: (0.01, 0.1, None, 2.0), 20: (0.02, 0.1, None, 4.0)}}
    dead = {"residual": {0: (0.0, 0.1), 20: (0.05, 0.15)}, "plain": {0: (0.2, 0.3), 20: (0.4, 0.6)}}
    for variant in ("residual", "plain"):
        for step in (0, 20):
            stem, branch, shortcut, fc = grads[variant][step]
            layers = [("stem.0", "Conv2d", 0, stem), ("stages.0.0.branch.0", "Conv2d", 3, branch),
                      ("stages.0.0.shortcut.0", "Conv2d", 5, shortcut), ("fc", "Linear", 9, fc)]
            for module, module_type, index, value in layers:
                if value is not None:
                    rows.append((variant, step, module, module_type, index, 0, "param_grad", "norm", value, "weight"))
                    rows.append((variant, step, module, module_type, index, 0, "param_grad", "norm", 50.0, "bias"))
                    rows.append((variant, step, module, module_type, index, 0, "update", "ratio",
                                 value / 100, "weight"))
                    rows.append((variant, step, module, module_type, index, 0, "update", "ratio", 7.0, "bias"))
            for (module, index), value in zip((("stem.2", 2), ("stages.0.0.relu", 7)), dead[variant][step]):
                rows.append((variant, step, module, "ReLU", index, 0, "activation", "dead_fraction", value, None))
                rows.append((variant, step, module, "ReLU", index, 0, "activation", "std", 1.0, None))
            if variant == "residual":
                for block, index, ratio in (("stages.0.0", 8, 0.2 + step / 100), ("stages.0.1", 12, 0.6),
                                            ("stages.0.2", 16, 0.9)):
                    rows.append((variant, step, block, "BasicBlock", index, 0, "block", "ratio", ratio, None))
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def test_values_match_direct_pandas_computations():
    metrics, stats = make_metrics(), make_stats()
    found = compute_findings(metrics, stats, statuses={"residual": "complete", "plain": "complete"})
    table = found.table
    assert list(table.index) == ["residual", "plain"] and list(table.columns) == list(COLUMNS)
    for variant in ("residual", "plain"):
        mine = metrics[metrics["variant"] == variant]
        loss = mine[(mine["split"] == "train") & (mine["metric"] == "loss")].sort_values("step")["value"]
        accuracy = mine[(mine["split"] == "train") & (mine["metric"] == "accuracy")].sort_values("step")["value"]
        val = mine[mine["split"] == "val"].pivot(index="step", columns="metric", values="value").sort_index()
        row = table.loc[variant]
        assert row["final_train_loss"] == pytest.approx(loss.tail(FINAL_WINDOW).mean())
        assert row["final_train_accuracy"] == pytest.approx(accuracy.tail(FINAL_WINDOW).mean())
        assert row["final_val_loss"] == pytest.approx(val["loss"].iloc[-1])
        assert row["final_val_accuracy"] == pytest.approx(val["accuracy"].iloc[-1])
        assert row["steps"] == 25 and row["status"] == "complete"

        grads = stats[(stats["variant"] == variant) & (stats["kind"] == "param_grad") & (stats["param"] == "weight")]
        for column, step in (("grad_ratio_first", 0), ("grad_ratio_last", 20)):
            at = grads[grads["step"] == step].set_index("module")["value"]
            assert row[column] == pytest.approx(at["stem.0"] / at["fc"])
        updates = stats[(stats["variant"] == variant) & (stats["kind"] == "update") & (stats["param"] == "weight")
                        & ~stats["module"].str.contains("shortcut")]
        assert row["max_update_ratio_first"] == pytest.approx(updates[updates["step"] == 0]["value"].max())
        assert row["median_update_ratio_last"] == pytest.approx(updates[updates["step"] == 20]["value"].median())
        relu = stats[(stats["variant"] == variant) & (stats["stat"] == "dead_fraction") & (stats["step"] == 20)]
        assert row["dead_fraction"] == pytest.approx(relu["value"].mean())
        assert row["max_dead_fraction"] == pytest.approx(relu["value"].max())
        assert (row["first_stats_step"], row["last_stats_step"]) == (0, 20)
    blocks = stats[(stats["kind"] == "block") & (stats["step"] == 20)]
    assert table.loc["residual", "block_ratio"] == pytest.approx(blocks["value"].median())
    assert math.isnan(table.loc["plain", "block_ratio"])

    gap = table.loc["plain", "final_train_loss"] - table.loc["residual", "final_train_loss"]
    assert found.comparison["lower_loss"] == "residual"
    assert found.comparison["loss_gap"] == pytest.approx(gap)
    assert found.comparison["val_accuracy_gap"] == pytest.approx(
        table.loc["residual", "final_val_accuracy"] - table.loc["plain", "final_val_accuracy"])


def test_sentences_carry_the_computed_numbers():
    found = compute_findings(make_metrics(), make_stats())
    table, text = found.table, found.to_markdown()
    assert text == "\n".join(f"- {s}" for s in found.sentences) and found._repr_markdown_() == text
    lower = f"{table.loc['residual', 'final_train_loss']:.3g}"
    higher = f"{table.loc['plain', 'final_train_loss']:.3g}"
    assert (f"The residual network reached the lower train loss: {lower} against {higher}, a gap of "
            f"{found.comparison['loss_gap']:.3g}; its validation accuracy was 35 percentage points higher.") in text
    assert ("In the plain network the first layer's weight-gradient norm was 0.005 times the last layer's "
            "at step 0 and 0.005 times at step 20.") in text
    assert "In the residual network the first layer's weight-gradient norm was 0.5 times" in text
    assert "At step 20, 50.0% of the plain network's ReLU channels were dead" in text
    assert "(at most 60.0% in one layer)" in text
    assert ("In the plain network the update at step 0 changed a layer's weights by up to 0.02 times their norm; "
            "at step 20 the median layer's update-to-weight ratio was 0.001.") in text
    assert "median block's branch output had 0.6 times the norm of its shortcut at step 20" in text
    assert f"validation accuracy {100 * table.loc['plain', 'final_val_accuracy']:.1f}% after 25 steps" in text


def test_the_other_variant_can_win_and_numbers_follow_the_data():
    found = compute_findings(make_metrics(plain_offset=-0.5), make_stats())
    assert found.comparison["lower_loss"] == "plain"
    assert found.comparison["loss_gap"] < 0
    assert "The plain network reached the lower train loss" in found.to_markdown()
    assert "percentage points higher" in found.to_markdown()


def test_diverged_run_is_reported_and_ranked_last():
    metrics = make_metrics()
    plain_loss = (metrics["variant"] == "plain") & (metrics["metric"] == "loss") & (metrics["split"] == "train")
    metrics.loc[plain_loss & (metrics["step"] == 25), "value"] = math.nan
    metrics = metrics[~((metrics["variant"] == "plain") & (metrics["split"] == "val"))]
    found = compute_findings(metrics, make_stats(), statuses={"residual": "complete", "plain": "diverged"},
                             diverged_steps={"plain": 25})
    assert found.sentences[0] == "The plain network diverged: its loss became non-finite at step 25."
    assert found.comparison["lower_loss"] == "residual"
    assert math.isnan(found.table.loc["plain", "final_val_accuracy"])
    assert "validation accuracy n/a" in found.to_markdown()


def test_without_statistics_only_metric_sentences_remain():
    stats = make_stats().iloc[:0]
    found = compute_findings(make_metrics(), stats)
    assert found.table[["grad_ratio_first", "max_update_ratio_first", "dead_fraction", "block_ratio"]].isna().all().all()
    assert len(found.sentences) == 3
    assert all("gradient" not in s and "ReLU" not in s for s in found.sentences)


def test_single_variant_has_no_comparison_sentence():
    metrics = make_metrics()
    found = compute_findings(metrics[metrics["variant"] == "plain"], make_stats())
    assert list(found.table.index) == ["plain"]
    assert found.comparison == {"lower_loss": "plain"}
    assert not any("lower train loss" in s for s in found.sentences)


def test_study_findings_reads_a_study_result():
    class Result:
        metrics, stats = make_metrics(), make_stats()
        statuses = {"residual": "complete", "plain": "diverged"}
        records = {"residual": {"diverged_step": None}, "plain": {"diverged_step": 24}}

    found = study_findings(Result())
    assert found.table.loc["plain", "status"] == "diverged" and found.table.loc["plain", "diverged_step"] == 24
