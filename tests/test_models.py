from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from analysis.models import (
    IMAGENET_DEPTHS,
    BasicBlock,
    Bottleneck,
    ModelSummary,
    ResNet,
    ZeroPadShortcut,
    build_model,
    describe_valid_depths,
    summarize,
    valid_depth,
)

TORCHVISION_PARAMS = {
    18: 11_689_512,
    34: 21_797_672,
    50: 25_557_032,
    101: 44_549_160,
    152: 60_192_808,
}
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


def manual_forward(model: ResNet, x: torch.Tensor) -> torch.Tensor:
    """The network written out block by block, as the paper describes it."""
    x = model.stem(x)
    for block in blocks(model):
        y = block.branch(x)
        if block.shortcut is not None:
            y = y + block.shortcut(x)
        x = torch.relu(y)
    return model.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("depth", IMAGENET_DEPTHS)
def test_imagenet_parameter_counts_match_torchvision(depth):
    with torch.device("meta"):
        ours = build_model(depth, residual=True, shortcut="B", stem="imagenet", num_classes=1000)
        theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert n_params(ours) == n_params(theirs) == TORCHVISION_PARAMS[depth]
    assert ours.family == "imagenet"
    assert ours.depth == depth
    assert ours.residual is True


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_parameter_counts(depth):
    residual = build_model(depth)
    plain = build_model(depth, residual=False)
    assert n_params(residual) == n_params(plain) == CIFAR_PARAMS[depth]
    assert residual.family == plain.family == "cifar"
    assert residual.depth == plain.depth == depth
    assert plain.residual is False


@pytest.mark.parametrize("depth", [8, 14, 20, 56, 110, 302, 18, 34, 50, 101, 152])
def test_summary_layers_equal_depth(depth):
    with torch.device("meta"):
        model = build_model(depth)
    summary = summarize(model)
    assert summary.layers == depth
    assert summary.params == n_params(model)
    assert summary.flops > 0
    assert summary.macs == summary.flops // 2


def test_summary_layers_exclude_projection_shortcuts():
    with torch.device("meta"):
        model = build_model(20, shortcut="B")
    projections = [b for b in blocks(model) if isinstance(b.shortcut, nn.Sequential)]
    assert len(projections) == 2
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 + 2
    assert summarize(model).layers == 20


def test_resnet50_macs_match_torchvision():
    model = build_model(50, num_classes=1000)
    summary = summarize(model, input_size=(3, 224, 224))

    with torch.device("meta"):
        reference = torchvision.models.resnet50(weights=None).eval()
        x = torch.zeros(1, 3, 224, 224)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        reference(x)

    assert summary.flops == counter.get_total_flops()
    assert summary.macs == summary.flops // 2
    assert summary.macs == pytest.approx(4.09e9, rel=0.01)
    assert (summary.layers, summary.params) == (50, 25_557_032)
    with torch.device("meta"):
        assert summarize(build_model(50, num_classes=1000), input_size=(3, 224, 224)) == summary


def test_summary_restores_training_modes_and_to_dict():
    model = build_model(8, width=4)
    model.train()
    model.stages[1].eval()
    before = {name: m.training for name, m in model.named_modules()}
    summary = summarize(model, input_size=(3, 16, 16))
    assert {name: m.training for name, m in model.named_modules()} == before
    assert model.training and not model.stages[1].training
    assert summary.to_dict() == {
        "layers": 8,
        "params": n_params(model),
        "macs": summary.macs,
        "flops": summary.flops,
    }


def test_summary_counts_batch_of_one():
    model = nn.Linear(5, 3)
    summary = summarize(model, input_size=(5,))
    assert summary == ModelSummary(layers=1, params=18, macs=15, flops=30)


@pytest.mark.parametrize("depth", [*IMAGENET_DEPTHS, 8, 20, 56])
@pytest.mark.parametrize("residual", [True, False])
def test_forward_shapes(depth, residual):
    torch.manual_seed(0)
    model = build_model(depth, residual=residual, width=4, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("depth", [18, 50, 20])
def test_single_channel_input(depth):
    model = build_model(depth, width=4, in_channels=1, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert model.stem[0].in_channels == 1


def test_family_defaults():
    cifar = build_model(20)
    assert [type(m) for m in cifar.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert cifar.stem[0].kernel_size == (3, 3) and cifar.stem[0].stride == (1, 1)
    assert cifar.stem[0].out_channels == 16
    assert [len(stage) for stage in cifar.stages] == [3, 3, 3]
    assert [stage[-1].branch[-2].out_channels for stage in cifar.stages] == [16, 32, 64]
    assert [stage[0].branch[0].stride for stage in cifar.stages] == [(1, 1), (2, 2), (2, 2)]
    assert sum(isinstance(m, ZeroPadShortcut) for m in cifar.modules()) == 2
    assert isinstance(cifar.pool, nn.AdaptiveAvgPool2d) and cifar.fc.in_features == 64

    with torch.device("meta"):
        imagenet = build_model(50)
    assert [type(m) for m in imagenet.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert imagenet.stem[0].kernel_size == (7, 7) and imagenet.stem[0].stride == (2, 2)
    assert [len(stage) for stage in imagenet.stages] == [3, 4, 6, 3]
    assert [stage[0].branch[-2].out_channels for stage in imagenet.stages] == [256, 512, 1024, 2048]
    # Stride on the 3x3 convolution, as in torchvision v1.5.
    assert imagenet.stages[1][0].branch[3].stride == (2, 2)
    assert imagenet.stages[1][0].branch[0].stride == (1, 1)
    assert not any(isinstance(m, ZeroPadShortcut) for m in imagenet.modules())
    projections = [b for b in blocks(imagenet) if not isinstance(b.shortcut, nn.Identity)]
    assert len(projections) == 4


def test_options_override_family_defaults():
    model = build_model(18, shortcut="A", stem="cifar", width=8)
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].out_channels == 8
    assert [stage[0].branch[0].out_channels for stage in model.stages] == [8, 16, 32, 64]
    assert sum(isinstance(m, ZeroPadShortcut) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())

    model = build_model(20, shortcut="B", stem="imagenet", width=4)
    assert isinstance(model.stem[-1], nn.MaxPool2d)
    projections = [b.shortcut for b in blocks(model) if isinstance(b.shortcut, nn.Sequential)]
    assert [p[0].out_channels for p in projections] == [8, 16]


def test_relu_modules_are_distinct_and_not_inplace():
    model = build_model(50, width=4)
    relus = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus}) == 1 + 16 * 3
    assert not any(m.inplace for m in relus)


@pytest.mark.parametrize(
    ("depth", "shortcut"), [(20, "A"), (20, "B"), (18, "B"), (50, "A"), (50, "B")]
)
def test_forward_is_the_written_out_network(depth, shortcut):
    torch.manual_seed(0)
    residual = build_model(depth, shortcut=shortcut, width=4).eval()
    plain = build_model(depth, shortcut=shortcut, width=4, residual=False).eval()
    result = plain.load_state_dict(residual.state_dict(), strict=False)
    assert result.missing_keys == []
    assert all(".shortcut." in key for key in result.unexpected_keys)
    assert (result.unexpected_keys == []) == (shortcut == "A")

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out_residual = residual(x)
        out_plain = plain(x)
        torch.testing.assert_close(out_residual, manual_forward(residual, x))
        torch.testing.assert_close(out_plain, manual_forward(plain, x))
    assert not torch.allclose(out_residual, out_plain)


@pytest.mark.parametrize("depth", [20, 50])
def test_plain_blocks_have_no_shortcut(depth):
    plain = build_model(depth, residual=False, width=4)
    assert all(block.shortcut is None for block in blocks(plain))
    assert not any(isinstance(m, ZeroPadShortcut) for m in plain.modules())
    convs = [m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(convs) == depth


@pytest.mark.parametrize("depth", [18, 50, 20])
def test_plain_with_projection_shortcuts_has_fewer_parameters(depth):
    residual = build_model(depth, shortcut="B", width=4)
    plain = build_model(depth, shortcut="B", width=4, residual=False)
    projection = sum(n_params(b.shortcut) for b in blocks(residual))
    assert projection > 0
    assert n_params(plain) == n_params(residual) - projection


@pytest.mark.parametrize(
    "block",
    [
        BasicBlock(4, 4),
        BasicBlock(4, 8, 2, shortcut="A"),
        BasicBlock(4, 8, 2, shortcut="B"),
        Bottleneck(8, 2),
        Bottleneck(8, 4, 2, shortcut="B"),
        Bottleneck(8, 4, 2, shortcut="A"),
    ],
)
def test_block_with_zeroed_branch_is_relu_of_shortcut(block):
    torch.manual_seed(0)
    block.eval()
    block.branch.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
    x = torch.randn(2, block.branch[0].in_channels, 8, 8)
    with torch.no_grad():
        out = block(x)
        expected = torch.relu(block.shortcut(x))
    torch.testing.assert_close(out, expected)
    assert out.abs().sum() > 0


def test_zero_pad_shortcut_matches_direct_computation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6)
    out = ZeroPadShortcut(3, 7, stride=2)(x)
    expected = torch.zeros(2, 7, 3, 3)
    for i in range(3):
        for j in range(3):
            expected[:, :3, i, j] = x[:, :, 2 * i, 2 * j]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(ZeroPadShortcut(3, 3)(x), x)
    with pytest.raises(ValueError, match="out_channels"):
        ZeroPadShortcut(4, 2)

    model = build_model(20)
    shortcut = model.stages[1][0].shortcut
    assert isinstance(shortcut, ZeroPadShortcut)
    assert (shortcut.in_channels, shortcut.out_channels, shortcut.stride) == (16, 32, 2)
    assert n_params(shortcut) == 0


@pytest.mark.parametrize(("depth", "shortcut"), [(20, "A"), (18, "B"), (50, "B"), (50, "A")])
def test_zero_init_residual(depth, shortcut):
    torch.manual_seed(0)
    model = build_model(depth, shortcut=shortcut, width=4, zero_init_residual=True).eval()
    for block in blocks(model):
        assert isinstance(block.branch[-1], nn.BatchNorm2d)
        assert torch.equal(block.branch[-1].weight, torch.zeros_like(block.branch[-1].weight))

    x = model.stem(torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        for block in blocks(model):
            out = block(x)
            torch.testing.assert_close(out, torch.relu(block.shortcut(x)))
            x = out

    default = build_model(depth, shortcut=shortcut, width=4)
    for block in blocks(default):
        assert torch.equal(block.branch[-1].weight, torch.ones_like(block.branch[-1].weight))


def test_weight_init_like_torchvision():
    torch.manual_seed(0)
    model = build_model(20, width=32)
    conv = model.stages[2][1].branch[0]
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
        if isinstance(m, nn.Conv2d):
            assert m.bias is None


@pytest.mark.parametrize("depth", [20, 50])
def test_norm_none_has_no_batchnorm(depth):
    torch.manual_seed(0)
    model = build_model(depth, norm="none", width=4)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(model.stem[1], nn.Identity)
    assert all(isinstance(b.branch[-1], nn.Identity) for b in blocks(model))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_valid_depths():
    assert describe_valid_depths() == (
        "18, 34, 50, 101, 152, or 6n+2 (8, 14, 20, 32, 44, 56, 110, 1202, ...)"
    )
    for depth in [*IMAGENET_DEPTHS, 8, 14, 20, 26, 32, 44, 56, 110, 1202]:
        assert valid_depth(depth)
    for depth in [19, 51, 0, 2, -4, 100, "20", True, 20.0, None]:
        assert not valid_depth(depth)


def test_shared_depths_build_imagenet_family():
    # 50 and 152 are also 6n+2; the ImageNet family takes them.
    with torch.device("meta"):
        assert build_model(50).family == build_model(152).family == "imagenet"
        assert isinstance(build_model(50).stages[0][0], Bottleneck)


@pytest.mark.parametrize("depth", [19, 51, 0, -4, 2, 100, "20", True, 20.0, None])
def test_bad_depth_raises(depth):
    with pytest.raises(ValueError) as info:
        build_model(depth)
    message = str(info.value)
    assert message.startswith("depth: ")
    assert describe_valid_depths() in message


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"shortcut": "C"}, ["shortcut", "'A'", "'B'"]),
        ({"shortcut": "a"}, ["shortcut", "'A'", "'B'"]),
        ({"norm": "layer"}, ["norm", "'batch'", "'none'"]),
        ({"norm": None}, ["norm", "'batch'", "'none'"]),
        ({"stem": "resnet"}, ["stem", "'cifar'", "'imagenet'"]),
        ({"width": 0}, ["width: must be an integer >= 1 or None, got 0"]),
        ({"width": -8}, ["width: must be an integer >= 1 or None, got -8"]),
        ({"width": 2.5}, ["width: must be an integer >= 1 or None, got 2.5"]),
        ({"width": True}, ["width: must be an integer >= 1 or None, got True"]),
        ({"num_classes": 0}, ["num_classes: must be an integer >= 1, got 0"]),
        ({"num_classes": "10"}, ["num_classes: must be an integer >= 1, got '10'"]),
        ({"in_channels": 0}, ["in_channels: must be an integer >= 1, got 0"]),
        ({"residual": "yes"}, ["residual: must be True or False, got 'yes'"]),
        ({"zero_init_residual": 1}, ["zero_init_residual: must be True or False, got 1"]),
        ({"zero_init_residual": True, "residual": False}, ["zero_init_residual:", "residual=True"]),
        ({"zero_init_residual": True, "norm": "none"}, ["zero_init_residual:", "norm='batch'"]),
        ({"init": "he"}, ["init: 'he' is not one of 'kaiming', 'fixup', 'skipinit'"]),
        ({"init": "fixup"}, ["init: 'fixup'", "norm='none'"]),
        ({"init": "skipinit", "residual": False}, ["init: 'skipinit'", "residual=True"]),
    ],
)
def test_bad_options_raise(kwargs, names):
    with pytest.raises(ValueError) as info:
        build_model(20, **kwargs)
    for name in names:
        assert name in str(info.value)
