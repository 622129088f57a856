"""Monitor on other people's models: torchvision (in-place ReLU), eval/no_grad, transformers."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from analysis.hooks import Monitor


def test_torchvision_resnet18_training_step_with_inplace_relu():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    grads = {}

    def capture(name):
        def hook(module, args, output):
            if output.requires_grad:
                output.register_hook(lambda g: grads.__setitem__(name, g.clone()))  # keeps the last step's
        return hook

    # bn1 is followed by ReLU(inplace=True); layer1.0.bn2 by `out += identity`
    handles = [model.get_submodule(n).register_forward_hook(capture(n)) for n in ("bn1", "layer1.0.bn2")]
    with Monitor(model, optimizer=optimizer, every=1) as monitor:
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for handle in handles:
        handle.remove()
    frame = monitor.frame()
    assert sorted(frame.step.unique()) == [0, 1]
    # update ratios of zero-initialised BatchNorm biases are inf at step 0; the rest is finite
    assert frame.query("kind != 'update'").value.map(math.isfinite).all()
    rows = frame.query("kind == 'activation_grad' and step == 1 and call == 0")
    grad = dict(zip(zip(rows.module, rows.stat), rows.value))
    for name, g in grads.items():
        assert grad[(name, "rms")] == pytest.approx(g.double().square().mean().sqrt().item(), rel=1e-5)
        assert grad[(name, "absmax")] == pytest.approx(g.abs().max().item(), rel=1e-5)
    # each block's single ReLU module runs twice per forward pass
    calls = frame.query("kind == 'activation' and module == 'layer2.1.relu'").call
    assert sorted(calls.unique()) == [0, 1]
    kinds = set(frame.kind)
    assert kinds == {"activation", "activation_grad", "param_grad", "weight", "update", "global"}


@pytest.mark.parametrize("mode", ["no_grad", "eval", "inference_mode"])
def test_eval_and_no_grad_record_activations_only(mode):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    with Monitor(model, every=1) as monitor:
        if mode == "eval":
            model.eval()
            model(x)
        elif mode == "no_grad":
            with torch.no_grad():
                model(x)
        else:
            with torch.inference_mode():
                model(x)
        monitor.step()
    frame = monitor.frame()
    assert set(frame.kind) == {"activation", "weight"}
    assert (frame.query("kind == 'activation'").groupby("module").size() >= 7).all()


def test_transformer_encoder_batch_first():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(3, 5, 16)
    with Monitor(model, optimizer=optimizer, every=1) as monitor:
        for _ in range(2):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():  # the fused fast path: no module hooks run, no error
            model(x, src_key_padding_mask=torch.zeros(3, 5, dtype=torch.bool))
    frame = monitor.frame()
    types = set(frame.query("kind == 'activation'").module_type)
    assert {"MultiheadAttention", "Linear", "LayerNorm"} <= types
    attention = frame.query("kind == 'activation' and module == 'layers.0.self_attn' and step == 0")
    assert len(attention) == 7 and attention.value.map(math.isfinite).all()
    params = set(frame.query("kind == 'param_grad' and module == 'layers.0.self_attn'").param)
    assert {"in_proj_weight", "in_proj_bias"} <= params
    assert set(frame.query("kind == 'update'").param) >= {"weight", "bias", "in_proj_weight"}
