"""Memory a network needs, estimated before it is built, and the memory there is to hold it.

Estimates (float32 throughout):

- *parameters*: weights, their gradients and the optimizer's state per weight
  (:data:`OPTIMIZER_STATES`: SGD's momentum buffer, Adam's two moments);
- *activations*: :data:`ACTIVATION_FACTOR` x the bytes of every leaf module's
  output in one forward pass, which autograd keeps for the backward pass.

Shapes come from the networks themselves, built on PyTorch's meta device (no
memory, no arithmetic). A CIFAR-family network (depth 6n+2) is counted at
n = 1 and n = 2 and extrapolated: every block of a stage has the same shapes, so
both counts are linear in n, and the extrapolation is exact.

``python -m analysis.memory`` prints the deepest CIFAR-family network that fits
in this machine's available memory for given settings.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from analysis.config import ConfigError, TrainConfig
from analysis.models import IMAGENET_DEPTHS, build_model

BYTES_PER_ELEMENT = 4
ACTIVATION_FACTOR = 1.5
"""Activation memory = this x the bytes of every leaf module's output. Measured on CPU (peak resident memory
during forward and backward, depths 110 and 218, batch 32, width 8): about 1.0 x; the rest is margin."""
OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2}
"""Tensors of optimizer state per weight (SGD without momentum keeps none)."""


@dataclass(frozen=True)
class Network:
    """The settings that decide a network's shapes."""

    depth: int
    residual: bool = True
    shortcut: str | None = None
    norm: str = "batch"
    width: int | None = None
    stem: str | None = None
    init: str = "kaiming"
    in_channels: int = 3
    num_classes: int = 10


@dataclass(frozen=True)
class Estimate:
    """Bytes one training step needs: ``parameters`` (with gradients and optimizer state) and ``activations``."""

    parameters: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.activations


def counts(network: Network, image_size: int) -> tuple[int, int]:
    """(parameters, leaf-output elements of one image's forward pass), exact, without building the network
    at full depth when it is a CIFAR-family one."""
    if network.depth in IMAGENET_DEPTHS or network.depth in (8, 14):
        return _counted(network, image_size)
    one, two = (_counted(_at_depth(network, depth), image_size) for depth in (8, 14))
    blocks = (network.depth - 2) // 6
    return tuple(a + (blocks - 1) * (b - a) for a, b in zip(one, two))


def _at_depth(network: Network, depth: int) -> Network:
    return Network(**{**network.__dict__, "depth": depth})


@lru_cache(maxsize=64)
def _counted(network: Network, image_size: int) -> tuple[int, int]:
    with torch.device("meta"):
        model = build_model(network.depth, residual=network.residual, shortcut=network.shortcut,
                            norm=network.norm, width=network.width, stem=network.stem, init=network.init,
                            in_channels=network.in_channels, num_classes=network.num_classes)
    model.eval()  # the shapes of training, without batch norm's check for more than one value per channel
    elements = [0]

    def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        elements[0] += output.numel()

    handles = [module.register_forward_hook(count) for module in model.modules()
               if not any(module.children()) and not isinstance(module, nn.Identity)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, network.in_channels, image_size, image_size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return sum(p.numel() for p in model.parameters()), elements[0]


def activation_bytes(network: Network, *, batch_size: int, image_size: int) -> int:
    """Estimated bytes autograd keeps for one forward and backward pass of ``batch_size`` images."""
    _, elements = counts(network, image_size)
    return int(ACTIVATION_FACTOR * BYTES_PER_ELEMENT * elements * batch_size)


def training_estimate(network: Network, *, batch_size: int, image_size: int, optimizer: str = "sgd",
                      momentum: float = 0.9) -> Estimate:
    """Bytes of one training step: parameters, gradients and optimizer state, and activations."""
    parameters, _ = counts(network, image_size)
    states = OPTIMIZER_STATES[optimizer] if optimizer != "sgd" or momentum else 0
    return Estimate(BYTES_PER_ELEMENT * parameters * (2 + states),
                    activation_bytes(network, batch_size=batch_size, image_size=image_size))


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes free now on ``device``: the GPU's free memory for CUDA, else the host's (``MemAvailable`` on Linux)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def too_big(estimate: Estimate, limit: int, *, what: str) -> str | None:
    """None when ``estimate`` fits in ``limit`` bytes, else a one-line reason with both numbers."""
    if estimate.total <= limit:
        return None
    return (f"{what} needs about {readable(estimate.total)} (parameters, gradients and optimizer state "
            f"{readable(estimate.parameters)}, activations {readable(estimate.activations)}), "
            f"more than the {readable(limit)} available")


def check_training_memory(config: TrainConfig, *, in_channels: int = 3, num_classes: int = 10,
                          device: str | torch.device | None = None, limit: int | None = None) -> None:
    """Raise a ConfigError naming ``depth`` when one training step of ``config`` cannot fit in ``limit`` bytes
    (default: the memory available now on ``device``, default the config's)."""
    if device is None:
        from analysis.train import resolve_device

        device = resolve_device(config.device)
    network = Network(config.depth, residual=config.residual, shortcut=config.shortcut, norm=config.norm,
                      width=config.width, stem=config.stem, init=config.init, in_channels=in_channels,
                      num_classes=num_classes)
    estimate = training_estimate(network, batch_size=config.batch_size, image_size=config.image_size,
                                 optimizer=config.optimizer, momentum=config.momentum)
    limit = available_memory(device) if limit is None else limit
    what = (f"{config.depth} (width {config.width or 'default'}, batch {config.batch_size}, "
            f"{config.image_size}x{config.image_size} images, {config.optimizer})")
    reason = too_big(estimate, limit, what=what)
    if reason:
        raise ConfigError("depth", f"{reason} on {torch.device(device).type}; use a smaller depth, width, "
                                   "batch_size or image_size")


def largest_cifar_depth(limit: int, network: Network, *, batch_size: int, image_size: int,
                        optimizer: str = "sgd") -> int | None:
    """The deepest 6n+2 network whose training step fits in ``limit`` bytes (None when not even depth 8 does)."""
    def need(depth: int) -> int:
        return training_estimate(_at_depth(network, depth), batch_size=batch_size, image_size=image_size,
                                 optimizer=optimizer).total

    first, per_block = need(8), need(14) - need(8)
    if first > limit:
        return None
    return 8 + 6 * ((limit - first) // per_block)


def readable(n: float) -> str:
    """Bytes in decimal units, three significant digits: '1.5 GB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.memory",
                                     description="The deepest CIFAR-family network that fits in available memory.")
    parser.add_argument("--width", type=int, default=16, help="base width (default: 16)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default: 128)")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels (default: 32)")
    parser.add_argument("--optimizer", choices=list(OPTIMIZER_STATES), default="sgd")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default: cpu)")
    args = parser.parse_args(argv)
    limit = available_memory(args.device)
    depth = largest_cifar_depth(limit, Network(8, width=args.width), batch_size=args.batch_size,
                                image_size=args.image_size, optimizer=args.optimizer)
    settings = f"width {args.width}, batch {args.batch_size}, {args.image_size}x{args.image_size}, {args.optimizer}"
    print(f"{readable(limit)} available on {args.device}: deepest CIFAR-family network ({settings}): "
          + (f"depth {depth}" if depth else "none, not even depth 8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
