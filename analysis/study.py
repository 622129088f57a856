"""Depth study: one notebook parameter set in, residual and plain runs (one per seed) out.

``notebooks/depth_study.ipynb`` is a thin layer over this module.
:data:`PARAMETERS` lists every notebook parameter with its default and a
one-line description; :func:`validate_parameters` turns the notebook's globals
into a checked :class:`StudyParams` (or raises a one-line
:class:`ParameterError`); :func:`configs_for` gives the training configs (and
so the run folders) of a study without running it; :func:`run_study` trains
them and :func:`load_study` reads finished runs back as tidy frames with
``variant``, ``seed`` and ``run_id`` columns.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from analysis.checks import shown
from analysis.config import ConfigError, TrainConfig, config_fields
from analysis.memory import check_training_memory
from analysis.parameters import ParameterError, defaults, folder_path, optional_path, read_parameters
from analysis.frames import ACTIVATION_STD, NORM_TYPES, layer_rows, setting_columns, variant_of, variants_in
from analysis.store import RunDir

VARIANTS = ("both", "residual", "plain")
"""Values of the ``variants`` parameter."""

PARAMETERS: dict[str, tuple[Any, str]] = {
    "depth": (50, "weight layers: 18, 34, 50, 101, 152 (ImageNet family) or 6n+2 such as 20, 56, 110 (CIFAR family)"),
    "variants": ("both", "which networks to train: 'both', 'residual' or 'plain'"),
    "dataset": ("synthetic", "'synthetic' (built in, no download), 'digits', 'mnist', 'cifar10', 'cifar100', 'imagefolder'"),
    "data_root": (None, "folder of the dataset files (cifar: default 'data/'; imagefolder: required)"),
    "download": (False, "fetch CIFAR into data_root when it is missing"),
    "image_size": (32, "images are resized to image_size x image_size pixels"),
    "steps": (300, "optimizer steps per network"),
    "batch_size": (32, "images per step"),
    "optimizer": ("sgd", "'sgd', 'adam' or 'adamw'"),
    "lr": (0.05, "peak learning rate"),
    "momentum": (0.9, "SGD momentum"),
    "nesterov": (False, "Nesterov momentum (SGD only)"),
    "weight_decay": (5e-4, "L2 weight decay"),
    "betas": ([0.9, 0.999], "Adam/AdamW moment decay rates"),
    "schedule": ("cosine", "learning-rate schedule after warmup: 'constant', 'step' or 'cosine'"),
    "milestones": ([], "steps where the 'step' schedule multiplies the rate by gamma, e.g. [100, 200]"),
    "gamma": (0.1, "factor applied at each milestone of the 'step' schedule"),
    "min_lr": (0.0, "learning rate that the 'cosine' schedule ends at"),
    "warmup_steps": (30, "linear warmup steps before the schedule (fewer than steps)"),
    "norm": ("batch", "'batch' (BatchNorm) or 'none'"),
    "width": (8, "base width (channels of the first stage); None: the family default (64 ImageNet, 16 CIFAR)"),
    "stem": ("cifar", "'cifar' (3x3 conv) or 'imagenet' (7x7 stride-2 conv + max-pool); None: the family default"),
    "shortcut": (None, "'A' (zero-pad identity) or 'B' (1x1 projection) where shapes change; None: family default"),
    "zero_init_residual": (False, "start each residual branch at zero (last BatchNorm gamma set to 0); residual network only"),
    "init": ("kaiming", "'kaiming' (He normal, fan_out), 'fixup' (needs norm 'none') or 'skipinit'; residual network only"),
    "seeds": ([0, 1, 2], "seeds (one int or a list): each variant is trained once per seed (data split, init, batch order)"),
    "device": ("auto", "'auto' (cuda, then mps, else cpu), 'cpu', 'cuda' or 'mps'"),
    "stats_every": (10, "record per-layer hook statistics every this many steps (0: none)"),
    "val_every": (50, "validate every this many steps (and at the last step)"),
    "val_batches": (None, "cap on validation batches per validation (None: the whole split)"),
    "runs_dir": ("runs", "folder of the run folders; finished runs found there are reused, not retrained"),
    "findings_path": (None, "file to write the findings to as JSON (None: not written; sweeps set it)"),
    "threads": (1, "torch CPU threads (None: torch's default; 1 avoids thread contention on a small or shared CPU)"),
}
"""Notebook parameters in order: name -> (default, one-line description)."""

# Parameters that map to a TrainConfig field of another name or to none.
_STUDY_ONLY = ("variants", "runs_dir", "seeds", "findings_path")
# TrainConfig field -> the notebook parameter that sets it.
_FIELD_TO_PARAMETER = {"residual": "variants", "seed": "seeds"}
@dataclass(frozen=True)
class StudyParams:
    """Validated notebook parameters (see :data:`PARAMETERS` for their meaning)."""

    depth: int = 50
    variants: str = "both"
    dataset: str = "synthetic"
    data_root: str | None = None
    download: bool = False
    image_size: int = 32
    steps: int = 300
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup_steps: int = 30
    norm: str = "batch"
    width: int | None = 8
    stem: str | None = "cifar"
    shortcut: str | None = None
    zero_init_residual: bool = False
    init: str = "kaiming"
    seeds: tuple[int, ...] = (0, 1, 2)
    device: str = "auto"
    stats_every: int = 10
    val_every: int = 50
    val_batches: int | None = None
    runs_dir: str = "runs"
    findings_path: str | None = None
    threads: int | None = 1

    @property
    def variant_names(self) -> tuple[str, ...]:
        """The variants to train, residual first."""
        return ("residual", "plain") if self.variants == "both" else (self.variants,)

    def to_dict(self) -> dict[str, Any]:
        """Every parameter, JSON-ready."""
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        data["betas"] = list(self.betas)
        data["seeds"] = list(self.seeds)
        return data


def parameter_defaults() -> dict[str, Any]:
    """Name -> default of every notebook parameter, in order."""
    return defaults(PARAMETERS)


def validate_parameters(namespace: Mapping[str, Any]) -> StudyParams:
    """Check the notebook's parameters (its ``globals()``) before anything runs.

    Unknown names are errors (:func:`analysis.parameters.read_parameters`);
    missing parameters take their defaults. Values are checked by
    :meth:`TrainConfig.validate` for every variant, and a
    :class:`~analysis.config.ConfigError` is reported under the parameter's name.
    """
    values = read_parameters(namespace, PARAMETERS)
    for name, (default, _) in PARAMETERS.items():
        value = values[name]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ParameterError(name, f"must be True or False, got {shown(value)}")
    values["milestones"] = _sequence("milestones", values["milestones"], int, "a list of steps such as [100, 200]")
    values["betas"] = _sequence("betas", values["betas"], float, "two numbers in [0, 1) such as [0.9, 0.999]")
    values["seeds"] = _seeds(values["seeds"])
    if values["variants"] not in VARIANTS:
        raise ParameterError("variants", f"{shown(values['variants'])} is not one of {', '.join(map(repr, VARIANTS))}")
    folder_path("runs_dir", values["runs_dir"])
    optional_path("findings_path", values["findings_path"])
    params = StudyParams(**values)
    try:
        for config in configs_for(params):
            config.validate()
    except ConfigError as exc:
        name = _FIELD_TO_PARAMETER.get(exc.field, exc.field)
        raise ParameterError(name, str(exc).removeprefix(f"{exc.field}: ")) from None
    return params


def check_memory(params: StudyParams) -> None:
    """Refuse, before anything is built, a study whose networks cannot train in the memory available here.

    Separate from :func:`validate_parameters`, which checks values wherever they
    are given (a sweep validates its points on the machine it starts from): this
    runs where the networks train. Raises a one-line ParameterError naming ``depth``
    with the estimate and the limit (:func:`analysis.memory.check_training_memory`).
    """
    configs = configs_for(params)
    try:
        for variant in params.variant_names:  # the seeds of a variant share its shapes
            check_training_memory(next(c for c in configs if c.residual == (variant == "residual")))
    except ConfigError as exc:
        raise ParameterError(exc.field, str(exc).removeprefix(f"{exc.field}: ")) from None


def _sequence(name: str, value: Any, kind: type, expected: str) -> tuple:
    """A list or tuple of numbers, or the string papermill's ``-p`` gives ('1,2' or '[1, 2]')."""
    if isinstance(value, str):
        try:
            return tuple(kind(part) for part in value.strip().strip("[]()").split(",") if part.strip())
        except ValueError:
            pass
    elif value is None:
        return ()
    elif isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or isinstance(v, int))
            for v in value):
        return tuple(kind(v) for v in value)
    raise ParameterError(name, f"must be {expected}, got {shown(value)}")


def _seeds(value: Any) -> tuple[int, ...]:
    """One seed or a list of distinct seeds."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    seeds = _sequence("seeds", value, int, "one int or a list of distinct ints such as [0, 1, 2]")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ParameterError("seeds", f"must be one int or a list of distinct ints such as [0, 1, 2], got {shown(value)}")
    return seeds


def configs_for(params: StudyParams) -> list[TrainConfig]:
    """The training config of each variant and seed, residual first (run ids follow from them)."""
    shared = {name: getattr(params, name) for name in PARAMETERS if name not in _STUDY_ONLY}
    plain = {"zero_init_residual": False, "init": "kaiming"}
    return [TrainConfig(**{**shared, "residual": variant == "residual", "seed": seed,
                           **(plain if variant == "plain" else {})})
            for variant in params.variant_names for seed in params.seeds]


def run_ids_for(params: StudyParams) -> list[str]:
    """The run folder names a study with these parameters writes under ``runs_dir``."""
    return [config.run_id() for config in configs_for(params)]


RESPONSE_BATCH = 256
"""Validation images in the fixed batch that the trained networks' layer responses are measured on."""


@dataclass
class StudyResult:
    """Finished runs of one study, read back from their folders.

    ``runs`` has one row per run (``run_id, variant, seed, status,
    diverged_step, diverged_layer``); ``metrics``, ``stats`` and ``responses`` are tidy frames
    with ``variant``, ``seed`` and ``run_id`` columns in front;
    ``records`` maps each run id to its record (``config.json``); ``reused``
    lists the run ids found finished on disk instead of trained.
    """

    runs_dir: Path
    runs: pd.DataFrame
    records: dict[str, dict[str, Any]]
    metrics: pd.DataFrame
    stats: pd.DataFrame
    responses: pd.DataFrame
    reused: tuple[str, ...] = field(default=())

    @property
    def variants(self) -> tuple[str, ...]:
        """The variants loaded, residual first."""
        return tuple(variants_in(self.runs))

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(sorted(set(int(s) for s in self.runs["seed"])))


def run_study(params: StudyParams, *, progress: bool | None = None) -> StudyResult:
    """Train each variant once per seed (finished runs in ``runs_dir`` are reused) and load them back.

    A diverged run is kept and reported; any other failure marks that run
    failed and is raised.
    """
    from analysis.train import train

    reused = []
    for config in configs_for(params):
        run = train(config, root=params.runs_dir, progress=progress)
        variant = variant_of(config.residual)
        print(f"{variant}, seed {config.seed}: {'reused finished run' if run.skipped else 'trained'} "
              f"{run.path} ({run.status})")
        if run.skipped:
            reused.append(run.run_id)
    result = load_study(params.runs_dir, run_ids_for(params))
    result.reused = tuple(reused)
    return result


def load_study(runs_dir: str | Path, run_ids: list[str] | tuple[str, ...]) -> StudyResult:
    """Read runs back from ``runs_dir`` without training: records, metrics, statistics and responses.

    The variant and seed of each run come from its stored config.
    """
    from analysis.hooks import read_stats

    runs_dir = Path(runs_dir)
    rows, records, metrics, stats, responses = [], {}, [], [], []
    for run_id in run_ids:
        run_dir = RunDir(runs_dir, run_id)
        if not run_dir.exists():
            raise FileNotFoundError(f"run_ids: no run record at {run_dir.config_path}")
        record = records[run_id] = run_dir.record()
        tag = {"variant": variant_of(record["config"]["residual"]), "seed": int(record["config"]["seed"]),
               "run_id": run_id}
        rows.append({**tag, "status": record["status"], "diverged_step": record.get("diverged_step"),
                     "diverged_layer": record.get("diverged_layer")})
        metrics.append(_tag(run_dir.read_metrics(), tag))
        if run_dir.stats_path.is_dir():
            run_stats = read_stats(run_dir.stats_path)  # a distributed run's figures show rank 0's rows
            stats.append(_tag(run_stats[run_stats["rank"] == 0].drop(columns="rank"), tag))
        if run_dir.model_path.exists():
            responses.append(_tag(layer_responses(runs_dir, run_id), tag))
    if not rows:
        raise ValueError("run_ids: name at least one run")
    return StudyResult(runs_dir, pd.DataFrame(rows), records, pd.concat(metrics, ignore_index=True),
                       pd.concat(stats, ignore_index=True) if stats else _tag(_empty_stats(), _NO_TAG),
                       pd.concat(responses, ignore_index=True) if responses
                       else _tag(pd.DataFrame(columns=RESPONSE_COLUMNS), _NO_TAG))


RESPONSE_COLUMNS = ("layer", "module", "module_type", "std")
_NO_TAG = {"variant": "", "seed": -1, "run_id": ""}


def layer_responses(runs_dir: str | Path, run_id: str, *, images: int = RESPONSE_BATCH) -> pd.DataFrame:
    """Standard deviation of each layer's response in the trained network, as He et al. (2015, Fig. 7) measured.

    The trained weights in eval mode (running batch-norm statistics), one
    forward pass without gradients over the first ``images`` validation
    images. The responses are the batch-norm outputs on the main path (after
    normalisation, before the addition and the ReLU); without batch norm, the
    conv outputs. Columns :data:`RESPONSE_COLUMNS`, ``layer`` numbered in forward order.
    """
    import torch

    from analysis.data import load_data
    from analysis.hooks import Monitor
    from analysis.train import load_trained

    model, config = load_trained(runs_dir, run_id)
    data = load_data(config.dataset, root=config.data_root, seed=config.seed, image_size=config.image_size)
    x, _ = next(iter(data.val_batches(images)))
    types = NORM_TYPES if config.norm == "batch" else ("Conv2d",)
    with Monitor(model, include=[torch.nn.BatchNorm2d if config.norm == "batch" else torch.nn.Conv2d],
                 stats=["activation.std"], every=1) as monitor, torch.no_grad():
        model(x)
        monitor.step()
    rows = layer_rows(monitor.frame().assign(run_id=run_id), ACTIVATION_STD, types)
    return rows.rename(columns={"value": "std"})[list(RESPONSE_COLUMNS)].reset_index(drop=True)


def _empty_stats() -> pd.DataFrame:
    """A statistics frame with no rows but the stored columns and dtypes."""
    from analysis.hooks.writer import SCHEMA, to_frame

    return to_frame(SCHEMA.empty_table())


def _tag(frame: pd.DataFrame, tag: dict[str, Any]) -> pd.DataFrame:
    """``frame`` with the run's ``variant``, ``seed`` and ``run_id`` as its first columns."""
    frame = frame.copy()
    for position, (name, value) in enumerate(tag.items()):
        frame.insert(position, name, value)
    return frame


def config_table(params: StudyParams) -> pd.DataFrame:
    """Every training setting (rows) of each variant and seed (columns), with the run folder each one writes."""
    configs = {f"{variant_of(config.residual)}, seed {config.seed}": config for config in configs_for(params)}
    table = pd.DataFrame({name: {"run folder": str(Path(params.runs_dir) / config.run_id()),
                                 **{key: _cell(value) for key, value in config.to_dict().items()}}
                          for name, config in configs.items()})
    table.index.name = "setting"
    return table


def model_table(result: StudyResult) -> pd.DataFrame:
    """One row per run: weight layers, parameters, multiply-accumulates, and how the run ended."""
    rows = []
    for run in result.runs.itertuples():
        record = result.records[run.run_id]
        model = record.get("model") or {}
        rows.append({"variant": run.variant, "seed": run.seed, "layers": model.get("layers"),
                     "parameters": model.get("params"), "MACs per image": model.get("macs"),
                     "status": record["status"], "steps": record.get("steps_completed"),
                     "device": record.get("device"), "run": run.run_id})
    return pd.DataFrame(rows).set_index(["variant", "seed"])


def _cell(value: Any) -> Any:
    """A table cell: lists as compact JSON, None as the string 'None' (so columns stay printable)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "None" if value is None else value


def write_findings(params: StudyParams, found: Any) -> Path | None:
    """Write ``found.to_json()`` to ``params.findings_path`` atomically (nothing when it is None)."""
    if params.findings_path is None:
        return None
    from analysis.store import atomic_write_json

    atomic_write_json(params.findings_path, found.to_json())
    return Path(params.findings_path)


def settings_frame(result: StudyResult) -> pd.DataFrame:
    """One row per run: ``run_id`` and every setting of its configuration (:func:`analysis.frames.setting_columns`)."""
    frame = pd.DataFrame([{"run_id": run_id, **record["config"]} for run_id, record in result.records.items()])
    frame["variant"] = frame["residual"].map(variant_of)
    return frame[["run_id", *setting_columns(frame, config_fields())]]
