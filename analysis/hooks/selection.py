"""Which modules and parameters of a model the Monitor records.

By default: the leaf layers that matter (convolutions, linear layers,
normalization layers, activation functions, embeddings, attention), the
`branch` and `shortcut` submodules of residual blocks, and every parameter.
`include` replaces the default with modules matching any of its items (module
types or fnmatch globs on qualified names); `exclude` removes matching modules
(and their parameters) from whatever was selected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Union

from torch import nn

Pattern = Union[str, type]
Patterns = Union[Pattern, Iterable[Pattern], None]

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LINEAR = (nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention)
_RMS_NORM = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()  # torch >= 2.4
NORM = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
) + _RMS_NORM
ACTIVATION = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.GLU,
)
DEFAULT_TYPES = CONV + LINEAR + NORM + ACTIVATION

# Layers whose 3-D outputs are (batch, channels, length) rather than (batch, sequence, features).
CHANNEL_FIRST = (
    nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.GroupNorm,
    nn.SyncBatchNorm, nn.LocalResponseNorm,
)
# Layers whose 3-D outputs are (batch, sequence, features).
CHANNEL_LAST = LINEAR + (nn.LayerNorm,) + _RMS_NORM


@dataclass(frozen=True)
class Selection:
    """Modules to hook, residual blocks to pair up, parameters to read."""

    modules: tuple[tuple[str, nn.Module], ...]
    blocks: tuple[tuple[str, nn.Module], ...]
    params: tuple[tuple[str, nn.Module, str, nn.Parameter], ...]  # owner name, owner, name, param


def is_block(module: nn.Module) -> bool:
    """A residual block: has `branch` and `shortcut` attributes that are both Modules."""
    return isinstance(getattr(module, "branch", None), nn.Module) and isinstance(
        getattr(module, "shortcut", None), nn.Module
    )


def _patterns(name: str, value: Patterns) -> tuple[tuple[type, ...], tuple[str, ...]] | None:
    """Split `value` into module types and name globs; ValueError on anything else."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, type)) or not isinstance(value, Iterable) else list(value)
    types, globs = [], []
    for item in items:
        if isinstance(item, str):
            globs.append(item)
        elif isinstance(item, type) and issubclass(item, nn.Module):
            types.append(item)
        else:
            raise ValueError(
                f"{name}: items must be nn.Module subclasses or fnmatch patterns on qualified "
                f"module names (str); got {item!r}"
            )
    return tuple(types), tuple(globs)


def _matches(name: str, module: nn.Module, patterns: tuple[tuple[type, ...], tuple[str, ...]]) -> bool:
    types, globs = patterns
    return isinstance(module, types) or any(fnmatchcase(name, g) for g in globs)


def select(model: nn.Module, include: Patterns = None, exclude: Patterns = None) -> Selection:
    """Resolve `include`/`exclude` against `model`; ValueError if nothing is selected."""
    included = _patterns("include", include)
    excluded = _patterns("exclude", exclude) or ((), ())
    named = list(model.named_modules())
    residual_parts = {
        id(part) for _, m in named if is_block(m) for part in (m.branch, m.shortcut)
    }

    def chosen(name: str, module: nn.Module, default: bool) -> bool:
        picked = default if included is None else _matches(name, module, included)
        return picked and not _matches(name, module, excluded)

    modules = tuple(
        (name, m) for name, m in named
        if chosen(name, m, isinstance(m, DEFAULT_TYPES) or id(m) in residual_parts)
    )
    hooked = {id(m) for _, m in modules}
    blocks = tuple(
        (name, m) for name, m in named
        if is_block(m) and id(m.branch) in hooked and id(m.shortcut) in hooked
        and not _matches(name, m, excluded)
    )
    params, seen = [], set()
    for name, m in named:
        if not chosen(name, m, True):
            continue
        for pname, p in m.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                params.append((name, m, pname, p))
    if not modules and not params:
        raise ValueError(
            f"include={include!r}, exclude={exclude!r} select no module or parameter of "
            f"{type(model).__name__}; use module types or fnmatch patterns on names such as "
            f"{[n for n, _ in named[1:4]]}"
        )
    return Selection(modules, blocks, tuple(params))


def channel_layout(module: nn.Module) -> int:
    """Channel dim for a 3-D output: 1 (channel-first), -1 (channel-last) or 0 (inherit)."""
    if isinstance(module, CHANNEL_FIRST):
        return 1
    if isinstance(module, CHANNEL_LAST):
        return -1
    return 0
