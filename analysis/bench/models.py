"""The models every benchmark trains, by key."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def _resnet56() -> nn.Module:
    from analysis.models import build_model

    return build_model(56)


def _resnet50() -> nn.Module:
    from analysis.models import build_model

    return build_model(50, stem="imagenet")


def _resnet8() -> nn.Module:
    from analysis.models import build_model

    return build_model(8)


def _torchvision_resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "resnet56": ("ResNet-56 (CIFAR, analysis.models)", _resnet56),
    "resnet50": ("ResNet-50 (ImageNet stem, analysis.models)", _resnet50),
    "tv-resnet18": ("resnet18 (torchvision, ReLU inplace)", _torchvision_resnet18),
    "resnet8": ("ResNet-8 (CIFAR, analysis.models)", _resnet8),
}
"""key -> (name in tables, builder)."""
