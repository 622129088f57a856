import json

import numpy as np
import pandas as pd
import pytest

from analysis import answers
from analysis.config import TrainConfig

DEFAULTS = TrainConfig(width=8, stem="cifar").to_dict()


def run_rows(losses, *, depth_configs=None):
    """Runs of the depth configuration: ``losses[(variant, depth)]`` is the per-seed final train loss."""
    rows = []
    for (variant, depth), per_seed in losses.items():
        for seed, loss in enumerate(per_seed):
            config = {**DEFAULTS, **(depth_configs or {}), "depth": depth, "residual": variant == "residual",
                      "seed": seed}
            rows.append({**config, "run_id": f"{variant}-{depth}-{config['optimizer']}-{config['norm']}-{seed}",
                         "variant": variant, "status": "complete", "final_train_loss": loss,
                         "block_ratio_final": 0.4 + 0.1 * seed if variant == "residual" else np.nan})
    return rows


def runs_frame(rows):
    frame = pd.DataFrame(rows)
    for column in ("milestones", "betas"):
        frame[column] = frame[column].map(tuple)
    return frame


def study_rows(tmp_path, findings):
    rows = []
    for kind, data in findings.items():
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "findings.json").write_text(json.dumps(data))
        rows.append({"study_id": f"{kind}-abc", "kind": kind, "status": "complete", "depth": None,
                     "notebook": str(folder / "x.ipynb"), "end_time": "2026-01-01T00:00:00"})
    return pd.DataFrame(rows)


INIT = {"grad_ratio_init": {"plain": {"8": 3.0, "56": 2000.0}, "residual": {"8": 1.5, "56": 9.0}},
        "no_norm_variance_growth_per_block": {"residual": 1.9, "plain": 0.7}}
LESION = {"mean_error_increase": {"residual": 0.02, "plain": 0.4}, "skipped": {"residual": 0, "plain": 2},
          "seeds": [0, 1, 2], "depth": 20}
COSTS = {"basic_block": {"params": 1_180_160, "macs": 3_699_376_128},
         "bottleneck_block": {"params": 70_400, "macs": 218_103_808},
         "resnet50": {"params": 25_557_032, "macs": 4_089_184_256, "blocks": 16},
         "resnet152": {"params": 60_192_808, "macs": 11_514_365_952, "blocks": 50}}


def build(tmp_path, losses, findings=None):
    runs = runs_frame(run_rows(losses))
    studies = study_rows(tmp_path, findings if findings is not None else {"init": INIT, "lesion": LESION,
                                                                        "costs": COSTS})
    return answers.build_answers(runs, studies)


def by_id(result):
    return {question["id"]: question for question in result["questions"]}


def test_five_questions_with_numbers_from_the_data(tmp_path):
    losses = {("plain", 8): [1.0, 1.1, 1.2], ("plain", 56): [2.0, 2.1, 2.2],
              ("residual", 8): [0.9, 1.0, 1.1], ("residual", 56): [0.8, 0.9, 1.0]}
    result = build(tmp_path, losses)
    json.dumps(result, allow_nan=False)
    found = by_id(result)
    assert list(found) == ["q1", "q2", "q3", "q4", "q5"]
    q1 = found["q1"]["numbers"]
    assert q1["final_train_loss_by_depth"]["plain"]["56"] == pytest.approx(2.1)
    assert q1["deepest"]["plain_loss_higher_every_seed"] is True
    assert q1["grad_ratio_init"] == INIT["grad_ratio_init"] and q1["lesion"] == {"residual": 0.02, "plain": 0.4}
    assert q1["no_norm_variance_growth_per_block"] == {"residual": 1.9, "plain": 0.7}
    assert "at depth 56 the plain network ended above the residual one in every one of 3 seeds" in found["q1"]["answer"]
    assert "2e+03 times the last conv's" in found["q1"]["answer"]
    assert found["q2"]["numbers"]["block_ratio_final"]["mean"] == pytest.approx(np.mean([0.4, 0.5, 0.6] * 2))
    assert "2 plain blocks change the shape" in found["q2"]["answer"]
    assert found["q3"]["numbers"]["bottleneck_block"] == COSTS["bottleneck_block"]
    assert "17 times fewer operations" in found["q3"]["answer"] and "70,400 parameters" in found["q3"]["answer"]
    assert found["q4"]["numbers"]["resnet152"]["blocks"] == 50
    assert "(2.36x)" in found["q4"]["answer"] and "(2.82x)" in found["q4"]["answer"]
    assert "60.2 M parameters against 25.6 M" in found["q4"]["answer"]
    assert found["q1"]["evidence"] == ["summary.html", "studies/init-abc.html", "studies/lesion-abc.html"]


def test_changing_the_runs_changes_the_numbers_and_the_wording(tmp_path):
    flipped = {("plain", 8): [1.0, 1.1, 1.2], ("plain", 56): [0.5, 2.1, 2.2],
               ("residual", 8): [0.9, 1.0, 1.1], ("residual", 56): [0.8, 0.9, 1.0]}
    q1 = by_id(build(tmp_path, flipped))["q1"]
    assert q1["numbers"]["deepest"]["plain_loss_higher_every_seed"] is None
    assert q1["numbers"]["final_train_loss_by_depth"]["plain"]["56"] == pytest.approx(1.6)
    assert "the order differs between seeds, so this budget does not settle it" in q1["answer"]


def test_missing_studies_are_said_to_be_missing(tmp_path):
    losses = {("plain", 8): [1.0], ("residual", 8): [0.9]}
    found = by_id(build(tmp_path, losses, findings={}))
    assert "Not measured: no complete depth study with two or more depths" in found["q1"]["answer"]
    assert "The initialisation study has not been run." in found["q1"]["answer"]
    assert found["q3"]["answer"] == "The architecture-cost study has not been run."
    assert found["q5"]["answer"].startswith("Not measured")


def test_training_comparison_groups_each_configuration_and_variant(tmp_path):
    rows = run_rows({("plain", 20): [2.0, 2.1, 2.2], ("residual", 20): [1.0, 1.1, 1.2]})
    rows += run_rows({("plain", 20): [1.5, 1.6, 1.7], ("residual", 20): [1.3, 0.9, 1.4]},
                     depth_configs={"optimizer": "adam", "lr": 0.001})
    diverged = run_rows({("plain", 20): [np.nan, 3.0, 3.1]}, depth_configs={"norm": "none"})
    diverged[0]["status"] = "diverged"
    runs = runs_frame(rows + diverged)
    depth, groups = answers.training_groups(runs)
    assert depth == 20 and len(groups) == 5
    adam_plain = [g for g in groups if g["settings"]["variant"] == "plain" and g["settings"]["optimizer"] == "adam"]
    assert adam_plain[0]["final_train_loss"]["values"] == pytest.approx([1.5, 1.6, 1.7])
    none_plain = [g for g in groups if g["settings"]["norm"] == "none"]
    assert none_plain[0]["diverged"] == 1
    q5 = answers.answer_q5(runs, {})
    assert q5["numbers"]["varying"] == ["norm", "optimizer", "lr"]
    text = q5["answer"]
    # Settings are named where they differ from the depth-study notebook's defaults (sgd, lr 0.05, batch norm).
    assert ("the plain network ended with the lowest final train loss under optimizer=adam, lr=0.001 (1.6, mean of "
            "3 seeds), ahead of lr=0.1 (2.1) in every seed; 1 of its runs diverged (norm=none, lr=0.1).") in text
    # Residual: sgd (mean 1.1) is ahead of adam (mean 1.2) in two seeds, behind in one: unresolved.
    assert ("the residual network ended with the lowest final train loss under lr=0.1 (1.1, mean of 3 seeds), "
            "ahead of optimizer=adam, lr=0.001 (1.2) but not in every seed (unresolved at this budget); "
            "none diverged.") in text
