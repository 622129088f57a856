"""Residual networks and their plain counterparts (He et al. 2015).

`build_model` builds the ImageNet-style ResNets (18, 34, 50, 101, 152 layers) and the
CIFAR-style ResNets (6n+2 layers), each either with shortcut connections (`residual=True`)
or as the plain network with the same branch layers and no shortcuts (`residual=False`).
Blocks expose their residual branch as `block.branch` and their shortcut as
`block.shortcut`, and every ReLU is its own module, so forward hooks see each call apart.
Initialisation, as torchvision: every conv weight is drawn kaiming normal with
``mode='fan_out'`` (variance 2 / (out_channels * kernel area)), batch-norm weights 1 and
biases 0, the classifier keeps PyTorch's default (uniform in +-1/sqrt(fan_in)). The fan
mode is part of any gradient-flow number: with fan_in the stem-to-last-conv gradient
ratio of a given seed changes too. `zero_init_residual` zeroes the last batch-norm weight of each branch
(Goyal et al. 2017). `init` chooses how residual branches start: 'kaiming' (the above,
the default), 'fixup' (Zhang et al. 2019, no normalization) or 'skipinit' (De & Smith
2020); the last two make every residual branch contribute exactly zero at initialisation.
`summarize` reports weight layers, parameters and multiply-accumulates of a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from analysis import checks
from analysis.checks import shown

__all__ = [
    "IMAGENET_DEPTHS",
    "BasicBlock",
    "Bias",
    "Bottleneck",
    "ModelSummary",
    "ResNet",
    "Scale",
    "ZeroPadShortcut",
    "build_model",
    "check_network",
    "describe_valid_depths",
    "summarize",
    "valid_depth",
]

IMAGENET_DEPTHS = (18, 34, 50, 101, 152)
"""Depths of the ImageNet family; every other valid depth is 6n+2 (CIFAR family)."""

SHORTCUTS = ("A", "B")
NORMS = ("batch", "none")
STEMS = ("cifar", "imagenet")
INITS = ("kaiming", "fixup", "skipinit")

# Blocks per stage for the ImageNet family (He et al. 2015, Table 1).
_IMAGENET_LAYOUTS: dict[int, list[int]] = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def _no_norm(num_features: int) -> nn.Module:
    """Stand-in for a normalization layer when `norm='none'`."""
    return nn.Identity()


class Bias(nn.Module):
    """A learnable scalar, initialised to 0, added to every element (Fixup's scalar bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class Scale(nn.Module):
    """A learnable scalar multiplying every element: Fixup's multiplier (initialised to 1)
    or SkipInit's alpha (initialised to 0)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _scalar_bias(num_features: int) -> nn.Module:
    """Fixup's stand-in for the stem's norm layer: a scalar bias before the stem's ReLU."""
    return Bias()


class ZeroPadShortcut(nn.Module):
    """Parameter-free option-A shortcut: identity with spatial subsampling and zero channels.

    Keeps every `stride`-th pixel (x[:, :, ::stride, ::stride]) and appends
    `out_channels - in_channels` all-zero channels after the input's channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise checks.CheckError(
                "out_channels", f"must be >= in_channels={in_channels} for a zero-pad shortcut, got {out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _make_shortcut(
    in_planes: int, out_planes: int, stride: int, shortcut: str, norm_layer: NormLayer
) -> nn.Module:
    """Identity where shapes match, else option A (zero pad) or option B (1x1 projection + norm)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    if shortcut == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride)
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), norm_layer(out_planes))


def _make_branch(convs: Sequence[nn.Conv2d], norm_layer: NormLayer, init: str) -> nn.Sequential:
    """A residual branch: conv, norm, relu, ..., conv, norm.

    'fixup' drops the norms and puts a `Bias` before each conv and each relu, then a `Scale`
    (1) and a `Bias` after the last conv: bias, conv, bias, relu, ..., bias, conv, scale, bias.
    'skipinit' appends alpha, a `Scale` initialised to 0, so `branch(x)` is already
    `alpha * f(x)`: what the block adds to its shortcut, as forward hooks on `branch` see it.
    """
    fixup = init == "fixup"
    layers: list[nn.Module] = []
    for conv in convs[:-1]:
        if fixup:
            layers += [Bias(), conv, Bias(), nn.ReLU()]
        else:
            layers += [conv, norm_layer(conv.out_channels), nn.ReLU()]
    last = convs[-1]
    if fixup:
        layers += [Bias(), last, Scale(1.0), Bias()]
    else:
        layers += [last, norm_layer(last.out_channels)]
    if init == "skipinit":
        layers.append(Scale(0.0))
    return nn.Sequential(*layers)


class _Block(nn.Module):
    """A block: `relu(branch(x) + shortcut(x))`, or `relu(branch(x))` in a plain network.

    Subclasses give the branch's convolutions (`_convs`). `init` ('kaiming', 'fixup',
    'skipinit') sets the branch's layers (see `_make_branch`); the weights themselves are
    initialised by `ResNet`. Options are taken as given: `build_model` checks them.
    """

    expansion: int
    num_convs: int

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        residual: bool = True,
        shortcut: str = "B",
        norm_layer: NormLayer = nn.BatchNorm2d,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.branch = _make_branch(self._convs(in_planes, planes, out_planes, stride), norm_layer, init)
        self.shortcut = (
            _make_shortcut(in_planes, out_planes, stride, shortcut, norm_layer)
            if residual
            else None
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return self.relu(self.branch(x))
        return self.relu(self.branch(x) + self.shortcut(x))


class BasicBlock(_Block):
    """Two 3x3 convolutions."""

    expansion = 1
    num_convs = 2

    @staticmethod
    def _convs(in_planes: int, planes: int, out_planes: int, stride: int) -> list[nn.Conv2d]:
        return [conv3x3(in_planes, planes, stride), conv3x3(planes, out_planes)]


class Bottleneck(_Block):
    """1x1 reduce, 3x3 (carrying the stride, as in torchvision v1.5), 1x1 expand by 4."""

    expansion = 4
    num_convs = 3

    @staticmethod
    def _convs(in_planes: int, planes: int, out_planes: int, stride: int) -> list[nn.Conv2d]:
        return [conv1x1(in_planes, planes), conv3x3(planes, planes, stride), conv1x1(planes, out_planes)]


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """Stem, stages of blocks, global average pool, linear classifier.

    `layers` gives the number of blocks per stage and `widths` their planes; the first stage
    has stride 1 and every later one halves the resolution. Four stages make the
    ImageNet family, three the CIFAR family (`family`). `depth` counts the weight layers on
    the main path: stem conv, branch convs and the classifier. `init` is described in
    `build_model`; Fixup also puts a `Bias` in the stem's norm slot and one before the
    classifier (`head_bias`, None otherwise). Options are taken as given: `build_model`
    checks them.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        widths: Sequence[int],
        *,
        residual: bool = True,
        shortcut: str = "B",
        norm: str = "batch",
        stem: str = "imagenet",
        num_classes: int = 10,
        in_channels: int = 3,
        zero_init_residual: bool = False,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        if len(layers) != len(widths) or not layers:
            raise checks.CheckError(
                "layers", f"must be non-empty and as long as widths={widths}, got {layers}"
            )

        self.depth = block.num_convs * sum(layers) + 2
        self.residual = residual
        self.family = "imagenet" if len(layers) == 4 else "cifar"
        norm_layer: NormLayer = nn.BatchNorm2d if norm == "batch" else _no_norm

        stem_norm = _scalar_bias if init == "fixup" else norm_layer
        self.stem = self._make_stem(stem, in_channels, widths[0], stem_norm)
        stages = []
        in_planes = widths[0]
        for i, (blocks, planes) in enumerate(zip(layers, widths)):
            first_stride = 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stride = first_stride if j == 0 else 1
                stage.append(
                    block(
                        in_planes,
                        planes,
                        stride,
                        residual=residual,
                        shortcut=shortcut,
                        norm_layer=norm_layer,
                        init=init,
                    )
                )
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_bias: Bias | None = Bias() if init == "fixup" else None
        self.fc = nn.Linear(in_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            # Each residual block then starts as relu(shortcut(x)) (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.constant_(m.branch[-1].weight, 0)
        if init == "fixup":
            # Zhang et al. 2019: zero the classifier and the last conv of each branch, and
            # scale the other branch convs' He init by L^(-1/(2m-2)) (L branches of m convs).
            factor = sum(layers) ** (-1.0 / (2 * block.num_convs - 2))
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    *inner, last = [c for c in m.branch if isinstance(c, nn.Conv2d)]
                    with torch.no_grad():
                        for conv in inner:
                            conv.weight.mul_(factor)
                    nn.init.zeros_(last.weight)

    @staticmethod
    def _make_stem(stem: str, in_channels: int, width: int, norm_layer: NormLayer) -> nn.Sequential:
        if stem == "cifar":
            return nn.Sequential(conv3x3(in_channels, width), norm_layer(width), nn.ReLU())
        return nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False),
            norm_layer(width),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        if self.head_bias is not None:
            x = self.head_bias(x)
        return self.fc(x)


def valid_depth(depth: Any) -> bool:
    """True for an ImageNet depth (18, 34, 50, 101, 152) or a CIFAR depth 6n+2 with n >= 1."""
    if not checks.is_integer(depth):
        return False
    return depth in IMAGENET_DEPTHS or (depth >= 8 and (depth - 2) % 6 == 0)


def describe_valid_depths() -> str:
    """Human-readable list of valid depths, for error messages."""
    return "18, 34, 50, 101, 152, or 6n+2 (8, 14, 20, 32, 44, 56, 110, 1202, ...)"


def check_network(
    depth: Any,
    *,
    residual: Any,
    shortcut: Any,
    norm: Any,
    width: Any,
    stem: Any,
    zero_init_residual: Any,
    init: Any,
) -> None:
    """Check the network options of `build_model` (and `TrainConfig`), each and together.

    Raises `analysis.checks.CheckError` naming the first bad option: the valid depths, the
    allowed values, or the combination an option needs.
    """
    if not valid_depth(depth):
        if not checks.is_integer(depth):
            raise checks.CheckError("depth", f"must be an integer, one of {describe_valid_depths()}, got {shown(depth)}")
        raise checks.CheckError("depth", f"{shown(depth)} is not supported; valid depths: {describe_valid_depths()}")
    checks.boolean("residual", residual)
    checks.choice("shortcut", shortcut, SHORTCUTS, optional=True)
    checks.choice("norm", norm, NORMS)
    checks.integer("width", width, minimum=1, optional=True)
    checks.choice("stem", stem, STEMS, optional=True)
    checks.boolean("zero_init_residual", zero_init_residual)
    checks.choice("init", init, INITS)
    if zero_init_residual and init != "kaiming":
        raise checks.CheckError("zero_init_residual",
                                f"requires init='kaiming' (init={shown(init)} already zeroes each branch)")
    if zero_init_residual and not residual:
        raise checks.CheckError("zero_init_residual", "requires residual=True (it would zero every plain block)")
    if zero_init_residual and norm == "none":
        raise checks.CheckError("zero_init_residual", "requires norm='batch' (it zeroes the last batch-norm gamma)")
    if init != "kaiming" and not residual:
        raise checks.CheckError("init", f"{shown(init)} requires residual=True (plain networks allow only 'kaiming')")
    if init == "fixup" and norm != "none":
        raise checks.CheckError("init", "'fixup' requires norm='none' (with norm='batch' use 'kaiming' or 'skipinit')")


def build_model(
    depth: int,
    *,
    residual: bool = True,
    shortcut: str | None = None,
    norm: str = "batch",
    width: int | None = None,
    stem: str | None = None,
    num_classes: int = 10,
    in_channels: int = 3,
    zero_init_residual: bool = False,
    init: str = "kaiming",
) -> ResNet:
    """Build a ResNet of `depth` weight layers, or its plain counterpart.

    Families:
        - depth in IMAGENET_DEPTHS (18, 34, 50, 101, 152): ImageNet family of He et al. 2015,
          Table 1. Basic blocks for 18 and 34, bottleneck blocks for 50, 101, 152; stages of
          [2,2,2,2], [3,4,6,3], [3,4,6,3], [3,4,23,3], [3,8,36,3] blocks with
          width*[1, 2, 4, 8] planes. With the defaults and num_classes=1000 the parameter
          counts equal torchvision's resnet18..resnet152.
        - depth = 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, 1202, ...): CIFAR family,
          three stages of n basic blocks with width*[1, 2, 4] planes and strides 1, 2, 2.
          50 and 152 are also 6n+2; they build the ImageNet family.

    Args:
        depth: number of weight layers on the main path (convs + classifier).
        residual: True adds the shortcut to each block; False builds the plain network with
            exactly the same branch layers, blocks with `shortcut = None` and no projection
            layers. With shortcut 'A' plain and residual nets have the same parameter count;
            with 'B' the plain net lacks the projection convs and norms.
        shortcut: 'A' parameter-free zero-pad identity (`ZeroPadShortcut`) or 'B' 1x1
            projection conv + norm, each only where the shape changes, identity elsewhere.
            Default (None): 'B' for the ImageNet family (as torchvision), 'A' for CIFAR.
        norm: 'batch' (BatchNorm2d) or 'none' (nn.Identity in its place; convs stay
            bias-free). Default 'batch'.
        width: base width, also the stem's output channels. Default (None): 64 for the
            ImageNet family, 16 for CIFAR.
        stem: 'cifar' (3x3 stride-1 conv + norm + relu) or 'imagenet' (7x7 stride-2 conv +
            norm + relu + 3x3 stride-2 max-pool). Default (None): the family's own stem.
        num_classes: outputs of the final linear layer. Default 10.
        in_channels: input image channels. Default 3.
        zero_init_residual: set the last BatchNorm weight of every branch to 0 so each
            block starts as relu(shortcut(x)). Needs residual=True, norm='batch' and
            init='kaiming'. Default False.
        init: how the network starts. Default 'kaiming'.
            - 'kaiming': He normal init (fan_out) of every conv, BatchNorm weight 1 and
              bias 0, PyTorch's default for the classifier; no extra parameters.
            - 'fixup': Fixup (Zhang, Dauphin & Ma 2019, "Fixup initialization: residual
              learning without normalization"), which trains deep residual networks without
              normalization by making each branch start at zero and scaling the rest so the
              L branches together change the output by O(1) per SGD step. Needs
              residual=True and norm='none'. Classifier weight and bias 0; last conv of
              each branch 0; the other branch convs He init times L^(-1/(2m-2)) (L residual
              branches of m convs: m=2 basic, 3 bottleneck); stem and projection convs keep
              the plain He init; scalar biases (init 0) before
              each branch conv and each branch ReLU, a scalar multiplier (init 1) and a
              scalar bias after the last branch conv, as in the paper's reference code; plus
              a scalar bias before the stem's ReLU and one before the classifier. Adds
              2m+1 scalars per block (5 basic, 7 bottleneck) + 2.
            - 'skipinit': SkipInit (De & Smith 2020, "Batch normalization biases residual
              blocks towards the identity function in deep networks"): a learnable scalar
              alpha, initialised to 0, multiplies each residual branch, so each block
              starts as relu(shortcut(x)). This mimics what batch normalization does in
              deep residual networks (it shrinks each branch relative to the shortcut, biasing
              blocks towards the identity), which the paper finds is what lets them train;
              alpha is the branch's
              last layer, so `block.branch` outputs alpha * f(x). Needs residual=True; norm
              'batch' or 'none'. Adds 1 scalar per block.

    Raises:
        ValueError: an invalid depth (message lists the valid ones) or option value
            (message names the argument and its allowed values), see `check_network`.
    """
    check_network(depth, residual=residual, shortcut=shortcut, norm=norm, width=width, stem=stem,
                  zero_init_residual=zero_init_residual, init=init)
    num_classes = checks.integer("num_classes", num_classes, minimum=1)
    in_channels = checks.integer("in_channels", in_channels, minimum=1)
    depth = int(depth)
    width = None if width is None else int(width)

    block: Block
    if depth in IMAGENET_DEPTHS:
        block = BasicBlock if depth < 50 else Bottleneck
        layers = _IMAGENET_LAYOUTS[depth]
        width = width or 64
        widths = [width, 2 * width, 4 * width, 8 * width]
        shortcut = shortcut or "B"
        stem = stem or "imagenet"
    else:
        block = BasicBlock
        layers = [(depth - 2) // 6] * 3
        width = width or 16
        widths = [width, 2 * width, 4 * width]
        shortcut = shortcut or "A"
        stem = stem or "cifar"

    return ResNet(
        block,
        layers,
        widths,
        residual=residual,
        shortcut=shortcut,
        norm=norm,
        stem=stem,
        num_classes=num_classes,
        in_channels=in_channels,
        zero_init_residual=zero_init_residual,
        init=init,
    )


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Size of a model: main-path weight layers, parameters, and compute for one input."""

    layers: int
    params: int
    macs: int
    flops: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _main_path_layers(model: nn.Module) -> int:
    """Conv2d and Linear modules, not counting those inside the shortcut of a block."""
    in_shortcut: set[int] = set()
    for m in model.modules():
        if isinstance(m, (BasicBlock, Bottleneck)) and m.shortcut is not None:
            in_shortcut.update(id(s) for s in m.shortcut.modules())
    return sum(
        1
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in in_shortcut
    )


def summarize(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> ModelSummary:
    """Count main-path weight layers, parameters, and FLOPs/MACs for one (C, H, W) input.

    FLOPs come from `torch.utils.flop_counter.FlopCounterMode` on a batch of 1 in eval mode
    (convolutions and matrix products; norms, activations and pooling count 0); MACs are
    FLOPs // 2. The input follows the model's device and dtype, so a model on the 'meta'
    device is summarized without computing anything. Training modes are restored afterwards.
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    x = torch.zeros(1, *input_size, device=device, dtype=dtype)

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        for m, training in modes:
            m.training = training
    flops = int(counter.get_total_flops())
    params = sum(p.numel() for p in model.parameters())
    layers = _main_path_layers(model)
    return ModelSummary(layers=layers, params=params, macs=flops // 2, flops=flops)
