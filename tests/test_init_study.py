import copy
import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis import init_study, memory
from analysis.gradient_flow import direction, first_to_last, fit_growth
from analysis.models import BasicBlock, ResNet, build_model
from analysis.parameters import ParameterError

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "init_study.ipynb"
TINY = dict(batch_size=4, width=2, image_size=8)


def _batch(n=8, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _zero_branches(model):
    """Last norm of every branch to weight 0 and bias 0: each branch outputs exactly zero."""
    for stage in model.stages:
        for block in stage:
            last = [m for m in block.branch if isinstance(m, nn.BatchNorm2d)][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
    return model


# -- the residual stream -------------------------------------------------------

def test_identity_blocks_keep_the_stream_variance_exactly():
    # One stage: every shortcut is the identity, so relu(0 + x) = x for x = a relu output >= 0.
    torch.manual_seed(0)
    model = _zero_branches(ResNet(BasicBlock, [4], [8], stem="cifar"))
    stream = init_study.measure_network(model, *_batch()).stream
    assert stream["block"].tolist() == [0, 1, 2, 3, 4]
    assert stream["variance"].tolist() == [stream["variance"][0]] * 5
    growth = init_study.variance_growth_per_block(stream.assign(depth=10, variant="residual", norm="batch", seed=0,
                                                                kind=init_study.STREAM))
    assert growth["growth_per_block"].tolist() == [1.0] and growth["total_growth"].tolist() == [1.0]


def test_identity_blocks_in_a_cifar_network_keep_the_variance_within_each_stage():
    torch.manual_seed(0)
    model = _zero_branches(build_model(20, width=4))  # 3 stages of 3 blocks; blocks 4 and 7 change shape
    variance = init_study.measure_network(model, *_batch()).stream["variance"].tolist()
    assert len(variance) == 10
    for block in (1, 2, 3, 5, 6, 8, 9):
        assert variance[block] == variance[block - 1]
    assert variance[4] != variance[3]


def test_stream_variance_is_the_variance_of_each_block_output_over_all_elements():
    torch.manual_seed(0)
    model = build_model(8, norm="none", width=4)
    images, labels = _batch()
    found = init_study.measure_network(copy.deepcopy(model), images, labels)
    stem = model.stem(images)
    block = model.stages[0][0](stem)
    assert found.stream["variance"][0] == pytest.approx(stem.double().var(correction=0).item(), rel=1e-9)
    assert found.stream["variance"][1] == pytest.approx(block.double().var(correction=0).item(), rel=1e-9)


# -- gradient norms ------------------------------------------------------------

def test_layer_gradient_norms_equal_the_direct_computation():
    torch.manual_seed(0)
    model = build_model(14, width=4, shortcut="B")  # projection shortcuts, to be left out
    twin = copy.deepcopy(model)
    images, labels = _batch()
    found = init_study.measure_network(model, images, labels)

    twin.train()
    loss = F.cross_entropy(twin(images), labels)
    loss.backward()
    convs = [(name, m) for name, m in twin.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in name]
    assert any("shortcut" in name for name, m in twin.named_modules() if isinstance(m, nn.Conv2d))
    assert found.profile["module"].tolist() == [name for name, _ in convs]
    assert found.profile["layer"].tolist() == list(range(1, 14))
    assert found.profile["grad_norm"].tolist() == pytest.approx([m.weight.grad.norm().item() for _, m in convs],
                                                                rel=1e-6)
    assert found.profile["weight_norm"].tolist() == pytest.approx([m.weight.norm().item() for _, m in convs],
                                                                  rel=1e-6)
    assert found.classifier_grad_norm == pytest.approx(twin.fc.weight.grad.norm().item(), rel=1e-6)
    assert found.loss == pytest.approx(loss.item(), rel=1e-6)


def test_summary_is_gradient_flow_applied_to_each_profile():
    rng = np.random.default_rng(0)
    rows = []
    for seed, variant in [(0, "residual"), (1, "residual"), (0, "plain")]:
        grad = rng.uniform(0.1, 2.0, 6)
        weight = rng.uniform(0.5, 3.0, 6)
        if variant == "plain":
            grad[2] = np.nan
        rows.append(pd.DataFrame({"depth": 8, "variant": variant, "norm": "batch", "seed": seed,
                                  "layer": np.arange(1, 7), "module": [f"c{i}" for i in range(6)],
                                  "grad_norm": grad, "weight_norm": weight, "scaled": grad * weight}))
    profiles = pd.concat(rows, ignore_index=True)
    summary = init_study.init_summary(profiles.sample(frac=1, random_state=0))  # order must not matter
    assert len(summary) == 3
    for _, row in summary.iterrows():
        mine = profiles[(profiles["variant"] == row["variant"]) & (profiles["seed"] == row["seed"])]
        grad, scaled = mine["grad_norm"].to_numpy(), mine["scaled"].to_numpy()
        fit, scaled_fit = fit_growth(grad), fit_growth(scaled)
        np.testing.assert_equal([row["ratio"], row["growth"], row["r2"], row["scaled_ratio"], row["scaled_growth"],
                                 row["scaled_r2"]],
                                [first_to_last(grad), fit.factor, fit.r2, first_to_last(scaled), scaled_fit.factor,
                                 scaled_fit.r2])
        assert row["direction"] == direction(fit) and row["n_layers"] == 6
    assert math.isnan(summary.loc[summary["variant"] == "plain", "growth"].item())


# -- variance growth and report numbers ----------------------------------------

def _stream(depth, variant, norm, seed, variances):
    return pd.DataFrame({"depth": depth, "variant": variant, "norm": norm, "seed": seed,
                         "block": range(len(variances)), "kind": "k", "variance": variances})


def test_variance_growth_per_block_is_the_geometric_mean_factor():
    stream = pd.concat([_stream(8, "residual", "none", 0, [2.0, 4.0, 8.0, 16.0]),
                        _stream(8, "residual", "batch", 0, [1.0, 5.0, 3.0, 10.0]),
                        _stream(8, "plain", "none", 0, [1.0, np.inf, 2.0, np.nan])])
    growth = init_study.variance_growth_per_block(stream).set_index(["variant", "norm"])
    assert growth.loc[("residual", "none"), "growth_per_block"] == pytest.approx(2.0)
    assert growth.loc[("residual", "none"), "theory_total"] == 8.0
    assert growth.loc[("residual", "batch"), "total_growth"] == 10.0
    assert growth.loc[("residual", "batch"), "growth_per_block"] == pytest.approx(10 ** (1 / 3))
    assert growth.loc[("residual", "batch"), "theory_total"] == 4.0
    assert growth.loc[("residual", "batch"), "theory_per_block"] == pytest.approx(4 ** (1 / 3))
    assert math.isnan(growth.loc[("plain", "none"), "growth_per_block"])


def test_init_numbers_average_over_seeds_and_depths_and_write_non_finite_as_none():
    summary = pd.DataFrame([
        {"depth": 8, "variant": "residual", "norm": "batch", "seed": 0, "ratio": 2.0, "growth": 1.1},
        {"depth": 8, "variant": "residual", "norm": "batch", "seed": 1, "ratio": 4.0, "growth": 1.3},
        {"depth": 8, "variant": "plain", "norm": "batch", "seed": 0, "ratio": 10.0, "growth": np.nan},
        {"depth": 8, "variant": "plain", "norm": "batch", "seed": 1, "ratio": 20.0, "growth": 1.5},
        {"depth": 8, "variant": "plain", "norm": "none", "seed": 0, "ratio": np.inf, "growth": 1.0},
    ])
    stream = pd.concat([_stream(8, "residual", "none", 0, [1.0, 2.0, 4.0, 8.0]),     # 2 per block
                        _stream(8, "residual", "none", 1, [1.0, 1.0, 1.0, 27.0]),    # 3 per block
                        _stream(14, "residual", "none", 0, [1.0] * 6 + [64.0]),  # 2 per block
                        _stream(8, "residual", "batch", 0, [1.0, 2.0, 3.0, 4.0]),
                        _stream(8, "residual", "batch", 1, [2.0, 2.0, 2.0, 4.0])])
    numbers = init_study.init_numbers(summary, stream, skipped={1202: "depth 1202 skipped: too big"})
    assert json.loads(json.dumps(numbers, allow_nan=False)) == numbers
    assert numbers["grad_ratio_init"] == {"residual": {"8": 3.0}, "plain": {"8": 15.0}}
    assert numbers["grad_growth_init"] == {"residual": {"8": pytest.approx(1.2)}, "plain": {"8": None}}
    assert numbers["grad_ratio_init_no_norm"] == {"plain": {"8": None}}
    assert numbers["no_norm_variance_growth_per_block"] == {"residual": pytest.approx((2 + 3 + 2) / 3)}
    assert numbers["batch_norm_variance_growth"] == {"residual": {"8": 3.0}}
    assert numbers["batch_norm_variance_growth_theory"] == {"8": 4.0}
    assert numbers["seeds"] == [0, 1] and numbers["skipped"] == {"1202": "depth 1202 skipped: too big"}


# -- running -------------------------------------------------------------------

def test_too_deep_a_network_for_the_memory_limit_is_skipped_with_the_reason():
    limit = memory.activation_bytes(memory.Network(8, width=TINY["width"]), batch_size=TINY["batch_size"],
                                    image_size=TINY["image_size"]) + 1
    study = init_study.run_init_study([8, 1202], ["residual"], ["batch"], [0], memory_limit=limit, **TINY)
    assert list(study.skipped) == [1202]
    assert study.skipped[1202].startswith("depth 1202 skipped: one forward and backward pass needs about")
    assert "the given limit" in study.skipped[1202]
    assert set(study.profiles["depth"]) == {8} and set(study.stream["depth"]) == {8}
    sentences = init_study.init_sentences(init_study.init_summary(study.profiles, study.networks), study.stream,
                                          skipped=study.skipped)
    assert sentences[-1] == study.skipped[1202] + "."


def test_networks_of_a_seed_share_the_batch_and_the_run_is_deterministic():
    def run():
        return init_study.run_init_study([8], ["residual", "plain"], ["batch", "none"], [0, 1], **TINY)

    first, second = run(), run()
    pd.testing.assert_frame_equal(first.profiles, second.profiles)
    pd.testing.assert_frame_equal(first.stream, second.stream)
    stem = first.stream[first.stream["block"] == 0].pivot_table(index=["norm", "seed"], columns="variant",
                                                                values="variance")
    assert (stem["residual"] == stem["plain"]).all()  # same seed: same stem weights and the same batch
    assert stem.loc[("batch", 0), "residual"] != stem.loc[("batch", 1), "residual"]
    assert set(first.stream.loc[first.stream["variant"] == "plain", "kind"]) == {init_study.BLOCK_OUTPUT}
    assert first.networks["finite"].all() and len(first.networks) == 8
    assert (first.networks["n_layers"] == 7).all() and (first.networks["n_blocks"] == 3).all()


def test_non_finite_values_are_kept_and_reported(monkeypatch):
    def overflowing(depth, **kwargs):
        model = build_model(depth, **kwargs)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Conv2d):
                    module.weight.mul_(1e12)
        return model

    monkeypatch.setattr(init_study, "build_model", overflowing)
    study = init_study.run_init_study([8], ["plain"], ["none"], [0], **TINY)
    assert not study.networks["finite"].item()
    assert not np.isfinite(study.profiles["grad_norm"]).all()
    summary = init_study.init_summary(study.profiles, study.networks)
    assert math.isnan(summary["growth"].item())
    numbers = init_study.init_numbers(summary, study.stream)
    assert numbers["grad_growth_init_no_norm"] == {"plain": {"8": None}}
    text = " ".join(init_study.init_sentences(summary, study.stream))
    assert "no growth factor could be fitted for seeds 0" in text
    assert "Non-finite values (kept as NaN/inf, overflow): plain without normalization at depth 8 (seeds 0)" in text


def test_sentences_state_a_comparison_only_where_it_holds_for_every_seed():
    rows = []
    for depth, residual, plain in [(8, [2.0, 3.0], [5.0, 6.0]), (14, [2.0, 9.0], [5.0, 6.0])]:
        for seed in (0, 1):
            for variant, ratio in (("residual", residual[seed]), ("plain", plain[seed])):
                rows.append({"depth": depth, "variant": variant, "norm": "batch", "seed": seed, "ratio": ratio,
                             "growth": 1.2, "r2": 0.9, "direction": "grows towards the input"})
    stream = pd.concat([_stream(d, v, "batch", s, [1.0, 2.0]) for d in (8, 14) for v in ("residual", "plain")
                        for s in (0, 1)])
    sentences = init_study.init_sentences(pd.DataFrame(rows), stream)
    assert ("With batch norm, which first-to-last gradient ratio is further from 1 (log scale): the plain network's "
            "for every seed at depth 8; unresolved (not so for every seed, or not finite) at depth 14.") in sentences
    assert sentences[0] == ("At initialisation, the residual network with batch norm at depth 14: gradient grows "
                            "towards the input for every seed, fitted factor 1.2 per layer (r2 0.90), means over 2 "
                            "seeds (factor 1.2 to 1.2, r2 0.90 to 0.90).")


# -- parameters and notebook ---------------------------------------------------

def test_parameters_are_validated_with_one_line_errors_naming_the_parameter():
    params = init_study.validate_parameters({"seeds": 3, "include_1202": True, "depths": "[14, 8]"})
    assert params.seeds == (3,) and params.depths == (8, 14) and params.depth_list == [8, 14, 1202]
    assert init_study.validate_parameters({}).depth_list == list(init_study.DEFAULT_DEPTHS)
    for namespace, start in [({"depths": [50]}, "depths: 50 is not a CIFAR-family depth"),
                             ({"depths": [9]}, "depths: 9 is not a CIFAR-family depth"),
                             ({"variants": "all"}, "variants: 'all' is not one of"),
                             ({"norms": ["layer"]}, "norms: must be a non-empty list"),
                             ({"seeds": [-1]}, "seeds: must be an integer or a non-empty list"),
                             ({"batch_size": 1}, "batch_size: must be an integer >= 2"),
                             ({"include_1202": "yes"}, "include_1202: must be True or False"),
                             ({"dpeths": [8]}, "dpeths: unknown parameter (did you mean 'depths'?)")]:
        with pytest.raises(ParameterError) as error:
            init_study.validate_parameters(namespace)
        assert str(error.value).startswith(start) and "\n" not in str(error.value)


def test_notebook_runs_at_a_tiny_size_and_writes_the_numbers(tmp_path):
    out, findings = tmp_path / "out.ipynb", tmp_path / "numbers.json"
    parameters = dict(depths=[8, 14], seeds=0, norms=["batch"], batch_size=4, width=2, image_size=8,
                      findings_path=str(findings))
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)
    outputs = [o for cell in nbformat.read(out, as_version=4).cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 4
    text = "".join(o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    assert "At initialisation, the plain network with batch norm at depth 14: gradient" in text
    numbers = json.loads(findings.read_text())
    assert set(numbers["grad_ratio_init"]) == {"residual", "plain"}
    assert set(numbers["grad_ratio_init"]["plain"]) == {"8", "14"}
