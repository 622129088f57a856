import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import torch
import torchvision

from analysis import costs, study
from analysis.config import settings
from analysis.store import run_dirs
from analysis.parameters import ParameterError

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "architecture_costs.ipynb"
LAYOUTS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@pytest.fixture(scope="module")
def blocks():
    return costs.block_costs()


@pytest.fixture(scope="module")
def family():
    return costs.family_costs()


def _conv(cin, cout, k, size):
    """Parameters and MACs of a bias-free k x k convolution with a ``size`` x ``size`` output."""
    return cin * cout * k * k, cin * cout * k * k * size * size


def _direct_bottleneck_resnet(layout):
    """Parameters and MACs of an ImageNet bottleneck ResNet counted by hand (torchvision v1.5 layout)."""
    params, macs = 0, 0

    def add(counts, norm_channels=0):
        nonlocal params, macs
        params += counts[0] + 2 * norm_channels
        macs += counts[1]

    add(_conv(3, 64, 7, 112), 64)  # stem, then a stride-2 max-pool to 56x56
    cin, size = 64, 56
    for stage, blocks in enumerate(layout):
        planes = 64 * 2 ** stage
        for index in range(blocks):
            out_size = size // 2 if stage > 0 and index == 0 else size
            add(_conv(cin, planes, 1, size), planes)
            add(_conv(planes, planes, 3, out_size), planes)
            add(_conv(planes, 4 * planes, 1, out_size), 4 * planes)
            if index == 0:
                add(_conv(cin, 4 * planes, 1, out_size), 4 * planes)  # projection shortcut
            cin, size = 4 * planes, out_size
    params += cin * 1000 + 1000
    macs += cin * 1000
    return params, macs


def test_blocks_match_a_direct_count(blocks):
    assert list(blocks.columns) == list(costs.BLOCK_COLUMNS)
    assert list(blocks["block_type"]) == ["basic", "bottleneck", "basic"]
    assert list(blocks["weight_layers"]) == [2, 3, 2]
    pixels = 56 * 56
    basic_256 = 2 * 9 * 256 * 256
    bottleneck = 256 * 64 + 9 * 64 * 64 + 64 * 256
    basic_64 = 2 * 9 * 64 * 64
    assert list(blocks["params"]) == [basic_256 + 2 * 2 * 256, bottleneck + 2 * (64 + 64 + 256),
                                      basic_64 + 2 * 2 * 64]
    assert list(blocks["macs"]) == [basic_256 * pixels, bottleneck * pixels, basic_64 * pixels]


def test_family_matches_torchvision_and_a_direct_count(family):
    assert list(family.columns) == list(costs.FAMILY_COLUMNS)
    rows = family.set_index("depth")
    assert rows.loc[50, "params"] == 25_557_032 and rows.loc[50, "macs"] == 4_089_184_256
    assert rows.loc[152, "params"] == 60_192_808
    with torch.device("meta"):
        for depth in rows.index:
            reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
            assert rows.loc[depth, "params"] == sum(p.numel() for p in reference.parameters())
    for depth, layout in LAYOUTS.items():
        assert (rows.loc[depth, "params"], rows.loc[depth, "macs"]) == _direct_bottleneck_resnet(layout)
        assert rows.loc[depth, "blocks_per_stage"] == layout and rows.loc[depth, "blocks"] == sum(layout)
    assert list(rows["weight_layers"]) == list(rows.index)
    assert list(rows["block_type"]) == ["basic", "basic", "bottleneck", "bottleneck", "bottleneck"]


def test_numbers_are_plain_json_with_the_report_keys(blocks, family):
    trained = pd.DataFrame({"network": ["ResNet-34", "ResNet-50"] * 2, "block_type": ["basic", "bottleneck"] * 2,
                            "params": [10, 11] * 2, "macs": [100, 105] * 2, "seed": [0, 0, 1, 1], "steps": [9] * 4,
                            "final_train_loss": [1.0, 2.0, 3.0, float("nan")],
                            "final_val_accuracy": [0.5, 0.25, 0.7, 0.45]})
    with_trained = costs.cost_numbers(blocks, family, trained)
    assert json.loads(json.dumps(with_trained)) == with_trained
    assert with_trained["trained"]["ResNet-50 (bottleneck)"] == {
        "params": 11, "macs": 105, "steps": 9, "final_train_loss": {"0": 2.0, "1": None},
        "final_val_accuracy": {"0": 0.25, "1": 0.45}}
    numbers = costs.cost_numbers(blocks, family)
    assert json.loads(json.dumps(numbers)) == numbers
    assert numbers == {
        "basic_block": {"params": 1_180_672, "macs": 2 * 9 * 256 * 256 * 56 * 56},
        "bottleneck_block": {"params": 70_400, "macs": 69_632 * 56 * 56},
        "resnet50": {"params": 25_557_032, "macs": 4_089_184_256, "blocks": 16, "blocks_per_stage": [3, 4, 6, 3]},
        "resnet152": {"params": 60_192_808, "macs": _direct_bottleneck_resnet(LAYOUTS[152])[1], "blocks": 50,
                      "blocks_per_stage": list(LAYOUTS[152])},
    }


def test_matched_pair_is_within_tolerance_and_gives_its_configs():
    pair = costs.matched_pair(4)
    table = pair.table.set_index("network")
    assert list(table.index) == ["ResNet-34", "ResNet-50"]
    assert list(table["block_type"]) == ["basic", "bottleneck"] and list(table["weight_layers"]) == [34, 50]
    assert table.loc["ResNet-34", "blocks_per_stage"] == table.loc["ResNet-50", "blocks_per_stage"]
    assert pair.mac_ratio == table.loc["ResNet-50", "macs"] / table.loc["ResNet-34", "macs"]
    assert abs(pair.mac_ratio - 1) <= costs.MAC_TOLERANCE
    basic, bottleneck = pair.configs(3, steps=7)
    assert (basic.depth, bottleneck.depth, basic.seed, basic.steps) == (34, 50, 3, 7)
    assert (bottleneck.width, bottleneck.stats_every, bottleneck.val_every) == (pair.bottleneck_width, 0, 7)
    assert basic.validate() and bottleneck.validate()


@pytest.mark.parametrize("kwargs, message", [
    ({"tolerance": 0.001}, "tolerance: no bottleneck width brings ResNet-50's MACs within 0.1% of ResNet-34's"),
    ({"bottleneck_depth": 34}, "bottleneck_depth: 34 is not one of 50, 101, 152"),
    ({"basic_depth": 50}, "basic_depth: must be a depth built of basic blocks"),
    ({"width": 0}, "width: must be an integer >= 1, got 0"),
    ({"tolerance": 0}, "tolerance: must be > 0, got 0"),
])
def test_matched_pair_errors_name_the_argument(kwargs, message):
    with pytest.raises(ValueError) as caught:
        costs.matched_pair(**{"width": 4, **kwargs})
    assert str(caught.value).startswith(message)


def test_sentences_are_computed_from_the_frames(blocks, family):
    trained = pd.DataFrame({"network": ["ResNet-34", "ResNet-50"] * 2, "block_type": ["basic", "bottleneck"] * 2,
                            "macs": [100, 105] * 2, "seed": [0, 0, 1, 1], "steps": [9] * 4,
                            "final_train_loss": [1.0, 2.0, 3.0, 4.0], "final_val_accuracy": [0.5, 0.25, 0.7, 0.45]})
    sentences = costs.cost_sentences(blocks, family, trained)
    assert len(sentences) == 5
    assert f"{1_180_672 / 70_400:.1f} times fewer parameters" in sentences[0]
    assert (f"ResNet-152 has {60_192_808 / 25_557_032:.2f} times the parameters" in sentences[3]
            and f"{50 / 16:.2f} times the blocks (50 vs 16" in sentences[3])
    assert "after 9 steps" in sentences[4] and "accuracy of 35.0% and a final train loss of 3.000" in sentences[4]
    assert "the basic network 60.0% and 2.000 (means over 2 seeds)" in sentences[4]
    changed = family.assign(params=family["params"] * family["depth"].map({152: 2}).fillna(1).astype(int))
    assert f"{2 * 60_192_808 / 25_557_032:.2f} times the parameters" in costs.cost_sentences(blocks, changed)[3]


def test_training_parameters_are_the_depth_studys_but_for_the_documented_defaults():
    # width is the basic network's (the bottleneck network's is matched to it), not a TrainConfig width.
    training = [name for name in costs.PARAMETERS if name in settings() and name != "width"]
    assert training == ["steps", "batch_size", "lr", "warmup_steps", "device", "threads"]
    assert {name: default for name, (default, _) in costs.COST_DEFAULTS.items()} == {"steps": 100, "warmup_steps": 10}
    for name in training:
        default, description = costs.PARAMETERS[name]
        assert description == settings()[name].help
        assert default == costs.COST_DEFAULTS.get(name, study.PARAMETERS[name])[0], name


def test_parameters_are_checked_with_one_line_errors():
    params = costs.validate_parameters({"seeds": 3, "lr": 1, "steps": 5, "warmup_steps": 0})
    assert params.seeds == (3,) and params.settings["lr"] == 1.0 and params.settings["steps"] == 5
    assert costs.validate_parameters({"seeds": "[0, 2]"}).seeds == (0, 2)
    assert costs.validate_parameters({}).settings == {name: costs.PARAMETERS[name][0] for name in params.settings}
    assert params.to_dict() == {**costs.parameter_defaults(), "seeds": [3], "lr": 1.0, "steps": 5, "warmup_steps": 0}
    assert costs.validate_parameters(params.to_dict()) == params
    run_ids = costs.run_ids_for(params)
    assert len(run_ids) == 2 and run_ids[0].startswith("d34-residual-s3-") and run_ids[1].startswith("d50-")
    for namespace, message in [
        ({"seed": 0}, "seed: unknown parameter (did you mean 'seeds'?)"),
        ({"seeds": [1, 1]}, "seeds: must be an integer or a non-empty list of distinct integers >= 0, got [1, 1]"),
        ({"seeds": "a,b"}, "seeds: must be an integer or a non-empty list of distinct integers >= 0, got 'a,b'"),
        ({"steps": 5}, "warmup_steps: must be less than steps=5, got 10"),
        ({"width": "4"}, "width: must be an integer >= 1, got '4'"),
        ({"device": "tpu"}, "device: 'tpu' is not one of"),
        ({"findings_path": ""}, "findings_path: must be a file path string or None, got ''"),
    ]:
        with pytest.raises(ParameterError) as caught:
            costs.validate_parameters(namespace)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_tiny_notebook_runs_and_writes_its_numbers(tmp_path, blocks, family):
    out, findings, runs = tmp_path / "costs.ipynb", tmp_path / "findings.json", tmp_path / "runs"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        parameters=dict(seeds=0, steps=2, width=2, batch_size=8, warmup_steps=0, device="cpu",
                        runs_dir=str(runs), findings_path=str(findings)))
    nb = nbformat.read(out, as_version=4)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 3
    markdown = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(markdown) == 1 and "At matched cost (ResNet-34" in markdown[0]
    numbers = json.loads(findings.read_text())
    assert {key: numbers[key] for key in costs.cost_numbers(blocks, family)} == costs.cost_numbers(blocks, family)
    assert list(numbers["trained"]) == ["ResNet-34 (basic)", "ResNet-50 (bottleneck)"]
    assert set(numbers["trained"]["ResNet-50 (bottleneck)"]["final_train_loss"]) == {"0"}
    records = [json.loads((path / "config.json").read_text()) for path in run_dirs(runs)]
    assert sorted(r["config"]["depth"] for r in records) == [34, 50]
    assert {r["status"] for r in records} == {"complete"}
