"""One validated configuration object for a training run, and the one source of each setting.

Every knob of a run is a field of :class:`TrainConfig`, declared with its
default and its one-line help (:func:`setting`); :func:`settings` lists them,
and the study notebooks' parameters, their cells and the docs derive from
that list. :meth:`TrainConfig.validate` checks every field before any work
starts and raises :class:`ConfigError` naming the field and the allowed
values. The run id is derived from the configuration, so the same
configuration always maps to the same run folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from analysis import checks
from analysis.checks import shown
from analysis.data import DATASETS
from analysis.models import check_network

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")


class ConfigError(checks.CheckError):
    """An invalid configuration value; ``field`` names it and the message starts with it."""


def setting(default: Any, help: str, *, items: type | None = None) -> Any:
    """A TrainConfig field with its default and one-line ``help`` (``items``: the item type of a list setting)."""
    return dataclasses.field(default=default, metadata={"help": help, "items": items})


class Setting(NamedTuple):
    """One TrainConfig field as the notebooks show it: default (JSON-ready), help, item type of a list."""

    default: Any
    help: str
    items: type | None


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run: the model, the data, the optimisation and the bookkeeping.

    Each field's default and meaning are declared with it; :func:`settings`
    lists them. The model options are those of :func:`analysis.models.build_model`.
    """

    depth: int = setting(20, "weight layers: 18, 34, 50, 101, 152 (ImageNet family) or 6n+2 such as 20, 56, 110 "
                             "(CIFAR family)")
    residual: bool = setting(True, "shortcut connections; False builds the plain network with the same layers")
    shortcut: str | None = setting(None, "'A' (zero-pad identity) or 'B' (1x1 projection) where shapes change; "
                                         "None: family default")
    norm: str = setting("batch", "'batch' (BatchNorm) or 'none'")
    width: int | None = setting(None, "base width (channels of the first stage); None: the family default "
                                      "(64 ImageNet, 16 CIFAR)")
    stem: str | None = setting(None, "'cifar' (3x3 conv) or 'imagenet' (7x7 stride-2 conv + max-pool); None: the "
                                     "family default")
    zero_init_residual: bool = setting(False, "start each residual branch at zero (last BatchNorm gamma set to 0); "
                                              "residual network only")
    init: str = setting("kaiming", "'kaiming' (He normal, fan_out), 'fixup' (needs norm 'none') or 'skipinit'; "
                                   "residual network only")
    dataset: str = setting("synthetic", "'synthetic' (built in, no download), 'digits', 'mnist', 'cifar10', "
                                        "'cifar100', 'imagefolder'")
    data_root: str | None = setting(None, "folder of the dataset files (cifar: default 'data/'; imagefolder: "
                                          "required)")
    image_size: int = setting(32, "images are resized to image_size x image_size pixels")
    download: bool = setting(False, "fetch CIFAR into data_root when it is missing")
    batch_size: int = setting(64, "images per step")
    steps: int = setting(200, "optimizer steps per network")
    optimizer: str = setting("sgd", "'sgd', 'adam' or 'adamw'")
    lr: float = setting(0.1, "peak learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    nesterov: bool = setting(False, "Nesterov momentum (SGD only)")
    weight_decay: float = setting(5e-4, "L2 weight decay")
    betas: tuple[float, float] = setting((0.9, 0.999), "Adam/AdamW moment decay rates", items=float)
    schedule: str = setting("cosine", "learning-rate schedule after warmup: 'constant', 'step' or 'cosine'")
    milestones: tuple[int, ...] = setting((), "steps where the 'step' schedule multiplies the rate by gamma, "
                                              "e.g. [100, 200]", items=int)
    gamma: float = setting(0.1, "factor applied at each milestone of the 'step' schedule")
    min_lr: float = setting(0.0, "learning rate that the 'cosine' schedule ends at")
    warmup_steps: int = setting(0, "linear warmup steps before the schedule (fewer than steps)")
    seed: int = setting(0, "seed of the data split, the initialisation and the batch order")
    device: str = setting("auto", "'auto' (cuda, then mps, else cpu), 'cpu', 'cuda' or 'mps'")
    val_every: int = setting(50, "validate every this many steps (and at the last step)")
    val_batches: int | None = setting(None, "cap on validation batches per validation (None: the whole split)")
    stats_every: int = setting(10, "record per-layer hook statistics every this many steps (0: none)")
    threads: int | None = setting(None, "torch CPU threads (None: torch's default)")

    def __post_init__(self) -> None:
        # JSON and YAML give lists, NumPy gives its own scalars: keep the frozen object hashable and
        # canonical, so equal settings give equal run ids.
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _plain(getattr(self, f.name)))
        object.__setattr__(self, "milestones", tuple(self.milestones))
        object.__setattr__(self, "betas", tuple(self.betas))

    def validate(self) -> "TrainConfig":
        """Check every field; raise ConfigError naming the first bad one."""
        with checks.raising(ConfigError):
            check_network(self.depth, residual=self.residual, shortcut=self.shortcut, norm=self.norm,
                          width=self.width, stem=self.stem, zero_init_residual=self.zero_init_residual,
                          init=self.init)
            checks.choice("dataset", self.dataset, DATASETS)
            checks.path("data_root", self.data_root, optional=True)
            checks.integer("image_size", self.image_size, minimum=8)
            checks.boolean("download", self.download)
            checks.integer("batch_size", self.batch_size, minimum=1)
            checks.integer("steps", self.steps, minimum=1)
            checks.choice("optimizer", self.optimizer, OPTIMIZERS)
            checks.number("lr", self.lr, above=0)
            checks.number("momentum", self.momentum, minimum=0.0, below=1.0)
            checks.boolean("nesterov", self.nesterov)
            if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
                raise ConfigError("nesterov", "requires optimizer='sgd' and momentum > 0")
            checks.number("weight_decay", self.weight_decay, minimum=0.0)
            if len(self.betas) != 2 or not all(checks.is_number(beta) and 0.0 <= beta < 1.0 for beta in self.betas):
                raise ConfigError("betas", f"must be two numbers in [0, 1), got {shown(self.betas)}")
            checks.choice("schedule", self.schedule, SCHEDULES)
            if not all(checks.is_integer(milestone) and 0 < milestone <= self.steps for milestone in self.milestones):
                raise ConfigError("milestones", f"must be steps in 1..steps={self.steps}, "
                                                f"got {shown(list(self.milestones))}")
            if list(self.milestones) != sorted(set(self.milestones)):
                raise ConfigError("milestones", f"must be strictly increasing, got {shown(list(self.milestones))}")
            if self.schedule == "step" and not self.milestones:
                raise ConfigError("milestones", "schedule='step' needs at least one milestone")
            checks.number("gamma", self.gamma, above=0)
            checks.number("min_lr", self.min_lr, minimum=0.0)
            if self.min_lr > self.lr:
                raise ConfigError("min_lr", f"must not exceed lr={self.lr}, got {self.min_lr}")
            checks.integer("warmup_steps", self.warmup_steps, minimum=0)
            if self.warmup_steps >= self.steps:
                raise ConfigError("warmup_steps", f"must be less than steps={self.steps}, got {self.warmup_steps}")
            checks.integer("seed", self.seed, minimum=0)
            checks.choice("device", self.device, DEVICES)
            checks.integer("val_every", self.val_every, minimum=1)
            checks.integer("val_batches", self.val_batches, minimum=1, optional=True)
            checks.integer("stats_every", self.stats_every, minimum=0)
            checks.integer("threads", self.threads, minimum=1, optional=True)
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


def settings() -> dict[str, Setting]:
    """Every TrainConfig field's default (JSON-ready: lists for tuples), help and list item type, in order."""
    defaults = TrainConfig().to_dict()
    return {f.name: Setting(defaults[f.name], f.metadata["help"], f.metadata["items"])
            for f in dataclasses.fields(TrainConfig)}


def _plain(value: Any) -> Any:
    """A NumPy integer or float as the Python number JSON writes; anything else unchanged."""
    if checks.is_integer(value):
        return int(value)
    return float(value) if checks.is_number(value) else value
