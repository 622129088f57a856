"""Fixup (Zhang et al. 2019) and SkipInit (De & Smith 2020): zero branches at init, parameter
counts, Fixup's scaled He init, every depth, invalid combinations, and a few training steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from analysis.config import TrainConfig
from analysis.models import (
    IMAGENET_DEPTHS,
    NORMS,
    BasicBlock,
    Bias,
    Bottleneck,
    ResNet,
    Scale,
    build_model,
)
from analysis.train import model_for

CIFAR_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
# (init, norm) pairs that build a residual network.
SCHEMES = [("fixup", "none"), ("skipinit", "batch"), ("skipinit", "none")]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


def branch_convs(block: nn.Module) -> list[nn.Conv2d]:
    return [m for m in block.branch if isinstance(m, nn.Conv2d)]


def record_blocks(model: ResNet) -> list[list[torch.Tensor]]:
    """Forward hooks that collect [block input, branch output, block output] of every block."""
    records: list[list[torch.Tensor]] = []
    for block in blocks(model):
        block.branch.register_forward_hook(lambda m, args, out: records.append([args[0], out]))
        block.register_forward_hook(lambda m, args, out: records[-1].append(out))
    return records


def shortcut_chain(model: ResNet, x: torch.Tensor) -> torch.Tensor:
    """Pre-classifier features of the network with every branch removed: relu(shortcut(x)) chained."""
    h = model.stem(x)
    for block in blocks(model):
        h = torch.relu(block.shortcut(h))
    return torch.flatten(model.pool(h), 1)


@pytest.mark.parametrize(("depth", "shortcut"), [(20, "A"), (20, "B"), (18, "B"), (50, "B"), (50, "A")])
@pytest.mark.parametrize("norm", NORMS)
def test_skipinit_branches_contribute_exactly_zero(depth, shortcut, norm):
    torch.manual_seed(0)
    model = build_model(depth, shortcut=shortcut, norm=norm, width=4, init="skipinit").eval()
    records = record_blocks(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        features = shortcut_chain(model, x)
        assert len(records) == len(blocks(model))
        for block, (block_in, branch_out, block_out) in zip(blocks(model), records):
            alpha = block.branch[-1]
            assert isinstance(alpha, Scale) and torch.equal(alpha.scale, torch.zeros(1))
            f = block.branch[:-1](block_in)
            assert f.abs().sum() > 0  # the branch itself is not zero, alpha makes it so
            assert torch.equal(alpha.scale * f, torch.zeros_like(f))
            assert torch.equal(branch_out, torch.zeros_like(branch_out))
            assert torch.equal(block_out, torch.relu(block.shortcut(block_in)))
        assert torch.equal(out, model.fc(features))
    assert out.abs().sum() > 0


@pytest.mark.parametrize(("depth", "shortcut"), [(20, "A"), (20, "B"), (18, "B"), (50, "B"), (50, "A")])
def test_fixup_branches_and_logits_are_exactly_zero(depth, shortcut):
    torch.manual_seed(0)
    model = build_model(depth, shortcut=shortcut, norm="none", width=4, init="fixup").eval()
    records = record_blocks(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        features = shortcut_chain(model, x)
        for block, (block_in, branch_out, block_out) in zip(blocks(model), records):
            assert torch.equal(branch_out, torch.zeros_like(branch_out))
            assert torch.equal(block_out, torch.relu(block.shortcut(block_in)))
        assert features.abs().sum() > 0
        # Biases are 0, so the classifier sees the shortcut chain; its zero weights give 0.
        assert torch.equal(model.head_bias(features), features)
        assert torch.equal(out, torch.zeros(2, 10))
        assert torch.equal(model.fc.weight, torch.zeros_like(model.fc.weight))
        assert torch.equal(model.fc.bias, torch.zeros_like(model.fc.bias))


@pytest.mark.parametrize("depth", [20, 50])
def test_fixup_block_layout(depth):
    model = build_model(depth, norm="none", width=4, init="fixup")
    m = type(blocks(model)[0]).num_convs
    expected = [Bias, nn.Conv2d, Bias, nn.ReLU] * (m - 1) + [Bias, nn.Conv2d, Scale, Bias]
    for block in blocks(model):
        assert [type(layer) for layer in block.branch] == expected
        assert torch.equal(block.branch[-2].scale, torch.ones(1))
        assert all(torch.equal(b.bias, torch.zeros(1)) for b in block.branch if isinstance(b, Bias))
        assert torch.equal(branch_convs(block)[-1].weight, torch.zeros_like(branch_convs(block)[-1].weight))
    assert isinstance(model.stem[1], Bias) and isinstance(model.stem[2], nn.ReLU)
    assert isinstance(model.head_bias, Bias)


def test_skipinit_layout_and_kaiming_unchanged():
    torch.manual_seed(0)
    default = build_model(20, width=4)
    torch.manual_seed(0)
    kaiming = build_model(20, width=4, init="kaiming")
    torch.manual_seed(0)
    skipinit = build_model(20, width=4, init="skipinit")
    assert default.head_bias is None and skipinit.head_bias is None
    assert not any(isinstance(m, (Bias, Scale)) for m in default.modules())
    assert default.state_dict().keys() == kaiming.state_dict().keys()
    assert all(torch.equal(v, kaiming.state_dict()[k]) for k, v in default.state_dict().items())
    # SkipInit is the kaiming network (same weights) with alpha appended to each branch.
    assert [type(m) for m in blocks(skipinit)[0].branch] == [
        *[type(m) for m in blocks(default)[0].branch],
        Scale,
    ]
    skipinit_state = skipinit.state_dict()
    assert all(torch.equal(v, skipinit_state[k]) for k, v in default.state_dict().items())


@pytest.mark.parametrize("depth", [20, 110, 18, 50])
def test_parameter_counts(depth):
    models = {
        (init, norm): build_model(depth, norm=norm, width=4, init=init)
        for init, norm in [("kaiming", "batch"), ("kaiming", "none"), *SCHEMES]
    }
    block_list = blocks(models["kaiming", "none"])
    m = type(block_list[0]).num_convs
    num_blocks = (depth - 2) // m  # every block but the stem conv and classifier has m convs
    assert len(block_list) == num_blocks
    fixup_scalars = (2 * m + 1) * num_blocks + 2  # per block: m + (m-1) biases, scale, bias
    assert n_params(models["fixup", "none"]) == n_params(models["kaiming", "none"]) + fixup_scalars
    for norm in NORMS:
        assert n_params(models["skipinit", norm]) == n_params(models["kaiming", norm]) + num_blocks
    if depth == 20:  # at the default width: ResNet-20's 269,722 (He et al. 2015) + 9 alphas
        assert n_params(build_model(20, init="skipinit")) == 269_722 + 9
        assert fixup_scalars == 9 * 5 + 2
    if depth == 50:
        assert fixup_scalars == 16 * 7 + 2


@pytest.mark.parametrize(("depth", "width", "stage_width"), [(20, 64, 256), (50, 16, 128)])
def test_fixup_scales_he_init_of_inner_branch_convs(depth, width, stage_width):
    torch.manual_seed(0)
    kaiming = build_model(depth, norm="none", width=width)
    torch.manual_seed(0)
    fixup = build_model(depth, norm="none", width=width, init="fixup")
    num_blocks = len(blocks(fixup))
    m = type(blocks(fixup)[0]).num_convs
    factor = num_blocks ** (-1 / (2 * m - 2))

    # Statistically: the widest stage's 3x3 conv has std sqrt(2 / fan_out) * L^(-1/(2m-2)).
    conv = [c for c in branch_convs(blocks(fixup)[-1]) if c.kernel_size == (3, 3)][0]
    assert conv.out_channels == stage_width
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out) * factor, rel=0.02)
    assert conv.weight.mean().item() == pytest.approx(0, abs=0.01 * math.sqrt(2 / fan_out))

    # Exactly: the same seed gives the kaiming weights times the factor (last conv: zero).
    for ours, theirs in zip(blocks(fixup), blocks(kaiming)):
        *inner, last = branch_convs(ours)
        for conv, reference in zip(inner, branch_convs(theirs)):
            assert torch.equal(conv.weight, reference.weight * factor)
        assert torch.equal(last.weight, torch.zeros_like(last.weight))
        if isinstance(ours.shortcut, nn.Sequential):  # projections keep the plain He init
            assert torch.equal(ours.shortcut[0].weight, theirs.shortcut[0].weight)
    assert torch.equal(fixup.stem[0].weight, kaiming.stem[0].weight)


@pytest.mark.parametrize(("init", "norm"), SCHEMES)
@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_every_cifar_depth_builds_and_runs(depth, init, norm):
    torch.manual_seed(0)
    model = build_model(depth, norm=norm, width=2, init=init).eval()
    assert model.depth == depth and len(blocks(model)) == (depth - 2) // 2
    with torch.no_grad():
        out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    if init == "fixup":
        assert torch.equal(out, torch.zeros(2, 10))


@pytest.mark.parametrize(("init", "norm"), SCHEMES)
@pytest.mark.parametrize("depth", IMAGENET_DEPTHS)
def test_every_imagenet_depth_builds(depth, init, norm):
    model = build_model(depth, norm=norm, width=2, init=init)
    m = 2 if depth < 50 else 3
    assert model.depth == depth and len(blocks(model)) == (depth - 2) // m
    scales = [b.branch[-2 if init == "fixup" else -1] for b in blocks(model)]
    expected = 1.0 if init == "fixup" else 0.0
    assert all(isinstance(s, Scale) and s.scale.item() == expected for s in scales)


@pytest.mark.parametrize("depth", [20, 50])
@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"init": "xavier"}, ["init: 'xavier' is not one of 'kaiming', 'fixup', 'skipinit'"]),
        ({"init": None}, ["init: None is not one of 'kaiming', 'fixup', 'skipinit'"]),
        ({"init": "fixup"}, ["init: 'fixup'", "norm='none'", "norm='batch'"]),
        ({"init": "fixup", "norm": "none", "residual": False}, ["init: 'fixup'", "residual=True"]),
        ({"init": "skipinit", "residual": False}, ["init: 'skipinit'", "residual=True"]),
        ({"init": "skipinit", "norm": "none", "residual": False}, ["init: 'skipinit'", "residual=True"]),
        ({"init": "skipinit", "zero_init_residual": True}, ["zero_init_residual:", "init='kaiming'"]),
        (
            {"init": "fixup", "norm": "none", "zero_init_residual": True},
            ["zero_init_residual:", "init='kaiming'"],
        ),
    ],
)
def test_disallowed_combinations_raise(depth, kwargs, words):
    with pytest.raises(ValueError) as info:
        build_model(depth, width=2, **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(("init", "norm"), SCHEMES)
@pytest.mark.parametrize("depth", [20, 50])
def test_sgd_steps_reduce_the_loss(depth, init, norm):
    torch.manual_seed(0)
    model = build_model(depth, norm=norm, width=8, init=init, num_classes=4)
    x = torch.randn(8, 3, 16, 16)
    y = torch.randint(0, 4, (8,))
    params = list(model.parameters())
    # SGD with momentum 0.9 written out (torch.optim.SGD's update; its first use costs seconds).
    velocity = [torch.zeros_like(p) for p in params]
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, v, g in zip(params, velocity, grads):
                v.mul_(0.9).add_(g)
                p.sub_(0.05 * v)
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses)
    if init == "fixup":
        assert losses[0] == pytest.approx(math.log(4), abs=1e-6)  # zero logits
    assert losses[-1] < 0.85 * losses[0]


def test_model_for_passes_init():
    config = TrainConfig(depth=8, width=2, init="fixup", norm="none").validate()
    model = model_for(config, num_classes=3, in_channels=1)
    assert isinstance(model.head_bias, Bias) and sum(isinstance(m, Scale) for m in model.modules()) == 3
    model = model_for(TrainConfig(depth=8, width=2, init="skipinit"), num_classes=3, in_channels=1)
    assert sum(isinstance(m, Scale) for m in model.modules()) == 3 and model.head_bias is None
