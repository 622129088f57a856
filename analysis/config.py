"""One validated configuration object for a training run.

Every knob of a run lives in :class:`TrainConfig`. :meth:`TrainConfig.validate`
checks every field before any work starts and raises :class:`ConfigError`
naming the field and the allowed values. The run id is derived from the
configuration, so the same configuration always maps to the same run folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from analysis.checks import shown
from analysis.data import DATASETS
from analysis.models import INITS, NORMS, SHORTCUTS, STEMS, describe_valid_depths, valid_depth

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Model: ``depth``, ``residual``, ``shortcut`` (None: family default),
    ``norm``, ``width`` (None: family default), ``stem`` (None: family
    default), ``zero_init_residual``, ``init`` ('kaiming'; 'fixup' for residual
    networks with norm='none'; 'skipinit' for residual networks; see
    :func:`analysis.models.build_model`).
    Data: ``dataset``, ``data_root``, ``image_size``, ``download``.
    Optimisation: ``batch_size``, ``steps``, ``optimizer``, ``lr``,
    ``momentum``, ``nesterov``, ``weight_decay``, ``betas`` (Adam/AdamW),
    ``schedule`` ('constant', 'step' with ``milestones`` and ``gamma``,
    'cosine' to ``min_lr``), ``warmup_steps`` (linear warmup from ``lr/warmup``
    steps before the schedule starts).
    Bookkeeping: ``seed``, ``device`` ('auto' picks cuda, then mps, else cpu),
    ``val_every`` (validation cadence in steps; the last step is always
    validated), ``val_batches`` (cap on validation batches, None for all),
    ``stats_every`` (hook statistics cadence in steps; 0 disables them),
    ``threads`` (torch CPU threads, None leaves torch's default).
    """

    depth: int = 20
    residual: bool = True
    shortcut: str | None = None
    norm: str = "batch"
    width: int | None = None
    stem: str | None = None
    zero_init_residual: bool = False
    init: str = "kaiming"
    dataset: str = "synthetic"
    data_root: str | None = None
    image_size: int = 32
    download: bool = False
    batch_size: int = 64
    steps: int = 200
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup_steps: int = 0
    seed: int = 0
    device: str = "auto"
    val_every: int = 50
    val_batches: int | None = None
    stats_every: int = 10
    threads: int | None = None

    def __post_init__(self) -> None:
        # JSON and YAML give lists; keep the frozen object hashable and canonical.
        object.__setattr__(self, "milestones", tuple(self.milestones))
        object.__setattr__(self, "betas", tuple(self.betas))

    def validate(self) -> "TrainConfig":
        """Check every field; raise ConfigError naming the first bad one."""
        _check_int(self, "depth", minimum=1)
        if not valid_depth(self.depth):
            raise ConfigError("depth", f"{shown(self.depth)} is not supported; valid depths: {describe_valid_depths()}")
        _check_bool(self, "residual")
        _check_choice(self, "shortcut", SHORTCUTS, optional=True)
        _check_choice(self, "norm", NORMS)
        if self.width is not None:
            _check_int(self, "width", minimum=1)
        _check_choice(self, "stem", STEMS, optional=True)
        _check_bool(self, "zero_init_residual")
        _check_choice(self, "init", INITS)
        if self.zero_init_residual and self.init != "kaiming":
            raise ConfigError("zero_init_residual", f"requires init='kaiming' (init={shown(self.init)} already zeroes each branch)")
        if self.zero_init_residual and not self.residual:
            raise ConfigError("zero_init_residual", "requires residual=True (it would zero every plain block)")
        if self.zero_init_residual and self.norm == "none":
            raise ConfigError("zero_init_residual", "requires norm='batch' (it zeroes the last batch-norm gamma)")
        if self.init != "kaiming" and not self.residual:
            raise ConfigError("init", f"{shown(self.init)} requires residual=True (plain networks allow only 'kaiming')")
        if self.init == "fixup" and self.norm != "none":
            raise ConfigError("init", "'fixup' requires norm='none' (with norm='batch' use 'kaiming' or 'skipinit')")
        _check_choice(self, "dataset", DATASETS)
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError("data_root", f"must be a path string or None, got {shown(self.data_root)}")
        _check_int(self, "image_size", minimum=8)
        _check_bool(self, "download")
        _check_int(self, "batch_size", minimum=1)
        _check_int(self, "steps", minimum=1)
        _check_choice(self, "optimizer", OPTIMIZERS)
        _check_float(self, "lr", positive=True)
        _check_float(self, "momentum", minimum=0.0, below=1.0)
        _check_bool(self, "nesterov")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov", "requires optimizer='sgd' and momentum > 0")
        _check_float(self, "weight_decay", minimum=0.0)
        if len(self.betas) != 2:
            raise ConfigError("betas", f"must be two numbers in [0, 1), got {shown(self.betas)}")
        for beta in self.betas:
            if not _is_number(beta) or not 0.0 <= beta < 1.0:
                raise ConfigError("betas", f"must be two numbers in [0, 1), got {shown(self.betas)}")
        _check_choice(self, "schedule", SCHEDULES)
        for milestone in self.milestones:
            if not _is_int(milestone) or not 0 < milestone <= self.steps:
                raise ConfigError("milestones", f"must be steps in 1..steps={self.steps}, got {shown(list(self.milestones))}")
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError("milestones", f"must be strictly increasing, got {shown(list(self.milestones))}")
        if self.schedule == "step" and not self.milestones:
            raise ConfigError("milestones", "schedule='step' needs at least one milestone")
        _check_float(self, "gamma", positive=True)
        _check_float(self, "min_lr", minimum=0.0)
        if self.min_lr > self.lr:
            raise ConfigError("min_lr", f"must not exceed lr={self.lr}, got {self.min_lr}")
        _check_int(self, "warmup_steps", minimum=0)
        if self.warmup_steps >= self.steps:
            raise ConfigError("warmup_steps", f"must be less than steps={self.steps}, got {self.warmup_steps}")
        _check_int(self, "seed", minimum=0)
        _check_choice(self, "device", DEVICES)
        _check_int(self, "val_every", minimum=1)
        if self.val_batches is not None:
            _check_int(self, "val_batches", minimum=1)
        _check_int(self, "stats_every", minimum=0)
        if self.threads is not None:
            _check_int(self, "threads", minimum=1)
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a dict; unknown keys are an error naming the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown field; known fields: {', '.join(sorted(known))}")
        return cls(**data)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (unknown names are an error)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def run_id(self) -> str:
        """Stable id: depth, variant, seed and a hash of the whole config.

        ``threads`` and ``download`` do not change what is trained, so they
        are left out of the hash.
        """
        payload = {k: v for k, v in self.to_dict().items() if k not in ("threads", "download")}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
        variant = "residual" if self.residual else "plain"
        return f"d{self.depth}-{variant}-s{self.seed}-{digest}"


def config_fields() -> tuple[str, ...]:
    """Names of every TrainConfig field, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(config: TrainConfig, name: str, *, minimum: int) -> None:
    value = getattr(config, name)
    if not _is_int(value) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {shown(value)}")


def _check_float(config: TrainConfig, name: str, *, positive: bool = False,
                 minimum: float | None = None, below: float | None = None) -> None:
    value = getattr(config, name)
    if not _is_number(value) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {shown(value)}")
    if positive and value <= 0:
        raise ConfigError(name, f"must be > 0, got {shown(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {shown(value)}")
    if below is not None and value >= below:
        raise ConfigError(name, f"must be < {below}, got {shown(value)}")


def _check_bool(config: TrainConfig, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise ConfigError(name, f"must be True or False, got {shown(value)}")


def _check_choice(config: TrainConfig, name: str, allowed: tuple[str, ...], *, optional: bool = False) -> None:
    value = getattr(config, name)
    if optional and value is None:
        return
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed) + (", or None" if optional else "")
        raise ConfigError(name, f"{shown(value)} is not one of {options}")
