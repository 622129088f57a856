import json
import math
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import torch

from analysis import lesion, study
from analysis.models import BasicBlock, Bottleneck, build_model

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "lesion_study.ipynb"


def _batches(n_batches=3, size=16, classes=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=generator), torch.randint(0, classes, (size,), generator=generator))
            for _ in range(n_batches)]


def _model(depth=14, **options):
    torch.manual_seed(0)
    return build_model(depth, width=4, **options).eval()


def _forward_without(model, deleted, x, replace):
    """The model's forward pass written out, with block ``deleted`` computed as ``replace(block, x)``."""
    x = model.stem(x)
    for index, block in enumerate(b for stage in model.stages for b in stage):
        x = replace(block, x) if index == deleted else block(x)
    return model.fc(torch.flatten(model.pool(x), 1))


def _state(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_zero_branches_give_exactly_zero_increase():
    model = _model(14)
    for module in model.modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            torch.nn.init.zeros_(module.branch[-1].weight)
            torch.nn.init.zeros_(module.branch[-1].bias)
    table = lesion.lesion_table(model, _batches())
    assert list(table.columns) == list(lesion.LESION_COLUMNS)
    assert len(table) == 6 and table["deletable"].all() and (table["reason"] == "").all()
    assert (table["increase"] == 0.0).all()
    assert (table["error"] == table["baseline_error"]).all()


def _input_of(model, index, x):
    """What block ``index`` receives in the model's forward pass."""
    x = model.stem(x)
    for block in [b for stage in model.stages for b in stage][:index]:
        x = block(x)
    return x


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_deleting_a_residual_block_leaves_relu_of_its_shortcut(shortcut):
    model = _model(14, shortcut=shortcut)
    x = _batches(1)[0][0]
    for index in (1, 2):  # an identity shortcut, then the first block of stage 2 (zero-pad or projection)
        stage, position = divmod(index, 2)
        block = model.stages[stage][position]
        with torch.no_grad():
            inputs = _input_of(model, index, x)
            intact = model(x)
            with lesion.lesion(model, index) as info:
                lesioned_block = model.stages[stage][position](inputs)
                lesioned = model(x)
            expected_block = torch.relu(block.shortcut(inputs))
            expected = _forward_without(model, index, x, lambda b, h: torch.relu(b.shortcut(h)))
        assert info.deletable and info.residual and (info.stage, info.position) == (stage, position)
        assert torch.equal(lesioned_block, expected_block)
        assert torch.equal(lesioned, expected)
        assert not torch.equal(lesioned, intact)


def test_deleting_a_plain_block_of_unchanged_shape_makes_it_the_identity():
    model = _model(14, residual=False)
    x = _batches(1)[0][0]
    with torch.no_grad(), lesion.lesion(model, 3) as info:
        lesioned = model(x)
    assert info.deletable and not info.residual
    with torch.no_grad():
        assert torch.equal(lesioned, _forward_without(model, 3, x, lambda b, h: h))


def test_plain_block_that_changes_shape_is_reported_and_skipped():
    model = _model(14, residual=False)
    infos = lesion.blocks_of(model)
    assert [info.deletable for info in infos] == [True, True, False, True, False, True]
    assert infos[2].reason.startswith("plain block changes the shape (4 -> 8 channels, stride 2)")
    x = _batches(1)[0][0]
    with torch.no_grad():
        before = model(x)
        with lesion.lesion(model, 2) as info:
            during = model(x)
    assert not info.deletable and torch.equal(before, during)
    table = lesion.lesion_table(model, _batches())
    skipped = table[~table["deletable"]]
    assert list(skipped["block_index"]) == [2, 4]
    assert skipped["error"].isna().all() and skipped["increase"].isna().all()
    assert table.loc[table["deletable"], "increase"].notna().all()


def test_model_is_restored_bit_exactly_also_after_an_error():
    model = _model(14)
    x = _batches(1)[0][0]
    with torch.no_grad():
        before_out = model(x)
    before_state, block = _state(model), model.stages[1][0]
    with lesion.lesion(model, 2):
        assert model.stages[1][0] is not block
    with pytest.raises(RuntimeError, match="inside"), lesion.lesion(model, 2):
        raise RuntimeError("inside")
    lesion.lesion_table(model, _batches())
    assert model.stages[1][0] is block and not model.training
    after_state = model.state_dict()
    assert list(after_state) == list(before_state)
    assert all(torch.equal(after_state[name], before_state[name]) for name in before_state)
    with torch.no_grad():
        assert torch.equal(model(x), before_out)


def test_error_rate_counts_wrong_predictions_and_keeps_the_mode():
    model = _model(8).train()
    batches = _batches(2)
    with torch.no_grad():
        model.eval()
        wrong = sum((model(x).argmax(1) != y).sum().item() for x, y in batches)
        model.train()
    assert lesion.error_rate(model, batches) == wrong / 32
    assert model.training


def test_bad_block_index_names_the_range():
    with pytest.raises(ValueError, match=r"^block_index: must be an integer in 0\.\.5, got 6$"):
        with lesion.lesion(_model(14), 6):
            pass


def _frame():
    rows = []
    for variant, increases in (("plain", {0: [0.3, 0.5], 1: [None, None], 2: [0.1, 0.2]}),
                               ("residual", {0: [0.01, 0.03], 1: [-0.01, 0.02], 2: [0.0, 0.05]})):
        for block, values in increases.items():
            for seed, increase in enumerate(values):
                baseline = 0.2 + seed / 10
                rows.append({"variant": variant, "seed": seed, "block_index": block, "deletable": increase is not None,
                             "baseline_error": baseline, "error": math.nan if increase is None else baseline + increase,
                             "increase": math.nan if increase is None else increase})
    return pd.DataFrame(rows)


def test_numbers_match_a_direct_mean_and_are_plain_json():
    frame = _frame()
    numbers = lesion.lesion_numbers(frame)
    increase = numbers["mean_error_increase"]
    assert list(increase) == ["residual", "plain"]
    for variant in increase:
        deleted = frame[(frame["variant"] == variant) & frame["deletable"]]
        assert increase[variant] == pytest.approx((deleted["error"] - deleted["baseline_error"]).mean())
    assert increase["residual"] == pytest.approx((0.01 + 0.03 - 0.01 + 0.02 + 0.0 + 0.05) / 6)
    assert increase["plain"] == pytest.approx((0.3 + 0.5 + 0.1 + 0.2) / 4)
    assert numbers["max_error_increase"]["plain"] == pytest.approx(0.4)
    assert numbers["max_increase_block"] == {"residual": 2, "plain": 0}
    assert numbers["blocks"] == {"residual": 3, "plain": 3}
    assert numbers["blocks_deleted"] == {"residual": 3, "plain": 2}
    assert numbers["skipped"] == {"residual": 0, "plain": 1}
    assert numbers["baseline_error"]["plain"] == pytest.approx(0.25) and numbers["seeds"] == [0, 1]
    assert "depth" not in numbers and set(numbers) == {*lesion.NUMBER_NAMES, "seeds"}
    assert json.loads(json.dumps(numbers)) == numbers
    sentences = lesion.lesion_sentences(numbers)
    assert f"raised the error {increase['plain'] / increase['residual']:.1f} times as much" in sentences[-1]
    assert "1 block that change the shape could not be deleted" in sentences[1]
    assert sentences._repr_markdown_().startswith("- Deleting one block of the trained residual network")


def test_numbers_of_a_network_with_nothing_deletable_are_null():
    frame = _frame()
    frame = frame[frame["variant"] == "plain"].assign(deletable=False, increase=math.nan, depth=14)
    numbers = lesion.lesion_numbers(frame)
    assert numbers["mean_error_increase"] == {"plain": None} and numbers["max_increase_block"] == {"plain": None}
    assert numbers["skipped"] == {"plain": 3} and numbers["depth"] == 14
    assert "n/a" in lesion.lesion_sentences(numbers)[0]


def test_parameters_mirror_the_depth_study_and_share_its_runs():
    defaults = lesion.parameter_defaults()
    assert defaults["depth"] == 20 and defaults["seeds"] == [0, 1, 2] and defaults["findings_path"] is None
    assert list(lesion.LESION_DEFAULTS) == ["depth"] and lesion.LESION_DEFAULTS["depth"][0] == 20
    assert list(lesion.PARAMETERS) == [name for name in study.PARAMETERS if name != "variants"]
    shared = [name for name in lesion.PARAMETERS if name not in ("depth", "findings_path")]
    assert all(lesion.PARAMETERS[name] == study.PARAMETERS[name] for name in shared)
    assert lesion.PARAMETERS["depth"][1] == study.PARAMETERS["depth"][1]
    params = lesion.validate_parameters({"steps": 5, "warmup_steps": 0, "seeds": 1, "threads": 1})
    depth_study = study.validate_parameters({"depth": 20, "steps": 5, "warmup_steps": 0, "seeds": [1]})
    assert lesion.run_ids_for(params) == study.run_ids_for(depth_study)
    assert list(params.to_dict()) == list(lesion.PARAMETERS) and params.to_dict()["seeds"] == [1]
    assert lesion.validate_parameters(params.to_dict()) == params
    assert {c.residual for c in lesion.configs_for(params)} == {True, False}


@pytest.mark.parametrize("namespace, message", [
    ({"dpeth": 20}, "dpeth: unknown parameter (did you mean 'depth'?)"),
    ({"variants": "plain"}, "variants: unknown parameter"),
    ({"depth": 21}, "depth: 21 is not supported"),
    ({"seeds": [0, 0]}, "seeds: must be an integer or a non-empty list of distinct integers >= 0, got [0, 0]"),
    ({"findings_path": 3}, "findings_path: must be a file path string or None, got 3"),
])
def test_bad_parameters_raise_one_line_errors_naming_them(namespace, message):
    with pytest.raises(study.ParameterError) as caught:
        lesion.validate_parameters(namespace)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_tiny_notebook_runs_and_writes_its_numbers(tmp_path):
    out, findings = tmp_path / "lesion.ipynb", tmp_path / "findings.json"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        parameters=dict(depth=8, width=4, steps=3, batch_size=8, seeds=0, warmup_steps=0, stats_every=0,
                        val_every=3, val_batches=1, device="cpu", runs_dir=str(tmp_path / "runs"),
                        findings_path=str(findings)))
    nb = nbformat.read(out, as_version=4)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 1
    markdown = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(markdown) == 1 and "Deleting one block of the trained residual network" in markdown[0]
    numbers = json.loads(findings.read_text())
    assert numbers["skipped"] == {"residual": 0, "plain": 2} and numbers["blocks"] == {"residual": 3, "plain": 3}
    assert numbers["seeds"] == [0] and numbers["depth"] == 8
