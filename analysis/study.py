"""Depth study: one notebook parameter set in, residual and plain runs (one per seed) out.

``notebooks/depth_study.ipynb`` is a thin layer over this module.
:data:`PARAMETERS` lists every notebook parameter with its default and a
one-line description: every :class:`~analysis.config.TrainConfig` field with its
help, at the study's defaults (:data:`STUDY_DEFAULTS` says where and why they
differ from TrainConfig's). :func:`validate_parameters` turns the notebook's
globals into a checked :class:`StudyParams` (or raises a one-line
:class:`ParameterError`); :func:`configs_for` gives the training configs (and
so the run folders) of a study without running it; :func:`run_study` trains
them and :func:`load_study` reads finished runs back as tidy frames with
``variant``, ``seed`` and ``run_id`` columns.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from analysis import checks
from analysis.config import TrainConfig, config_fields
from analysis.memory import check_training_memory
from analysis.parameters import (ParameterError, defaults, read_parameters, training_parameters, training_settings,
                                 with_defaults)
from analysis.frames import (ACTIVATION_STD, NORM_TYPES, VARIANTS, layer_rows, setting_columns, variant_of,
                             variants_in)
from analysis.store import RunDir

STUDY_DEFAULTS: dict[str, tuple[Any, str]] = {
    "depth": (50, "deep enough for the plain network to train worse than the residual one (He et al. 2015 saw "
                  "plain networks degrade from 34 layers); TrainConfig's 20 is a quick single run"),
    "width": (8, "narrow, so each network trains in a few minutes per seed on a 2-core CPU"),
    "stem": ("cifar", "depth 50 is of the ImageNet family, whose stem would shrink the 32x32 images 4x before "
                      "the first stage"),
    "batch_size": (32, "half TrainConfig's, for a few minutes per network and seed on a 2-core CPU"),
    "steps": (300, "a few minutes per network and seed on a 2-core CPU"),
    "lr": (0.05, "TrainConfig's 0.1 at batch 64, scaled to batch 32 (linear scaling, Goyal et al. 2017)"),
    "warmup_steps": (30, "a tenth of the steps: deep networks start at a small rate (He et al. 2015 warmed "
                         "ResNet-110 up)"),
    "threads": (1, "sweeps run several notebooks at once; 1 avoids thread contention on a small or shared CPU"),
}
"""The depth study's defaults where they differ from TrainConfig's: name -> (default, why)."""

STUDY_CONFIG = with_defaults(TrainConfig(), STUDY_DEFAULTS)
"""TrainConfig at the depth study's defaults."""

# TrainConfig fields each run sets itself -> the study parameter that sets them (listed in their place).
_PER_RUN = {"residual": "variants", "seed": "seeds"}
_OWN: dict[str, tuple[Any, str]] = {
    "variants": ("both", "which networks to train: 'both', 'residual' or 'plain'"),
    "seeds": ([0, 1, 2], "seeds (one int or a list): each variant is trained once per seed (data split, init, "
                         "batch order)"),
    "runs_dir": ("runs", "folder of the run folders; finished runs found there are reused, not retrained"),
    "findings_path": (None, "file to write the findings to as JSON (None: not written; sweeps set it)"),
}

PARAMETERS: dict[str, tuple[Any, str]] = {
    **{_PER_RUN.get(name, name): _OWN[_PER_RUN[name]] if name in _PER_RUN else parameter
       for name, parameter in training_parameters(STUDY_CONFIG, config_fields()).items()},
    "runs_dir": _OWN["runs_dir"],
    "findings_path": _OWN["findings_path"],
}
"""Notebook parameters in order: name -> (default, one-line description)."""


@dataclass(frozen=True)
class StudyParams:
    """Validated notebook parameters (see :data:`PARAMETERS` for their meaning).

    ``config`` holds the training settings every run shares; each run sets
    ``residual`` by its variant and ``seed`` from ``seeds`` (:func:`configs_for`).
    """

    config: TrainConfig
    variants: str
    seeds: tuple[int, ...]
    runs_dir: str
    findings_path: str | None

    @property
    def variant_names(self) -> tuple[str, ...]:
        """The variants to train, residual first."""
        return ("residual", "plain") if self.variants == "both" else (self.variants,)

    def to_dict(self) -> dict[str, Any]:
        """Every parameter, JSON-ready, in the order of :data:`PARAMETERS`."""
        values = {**self.config.to_dict(), "variants": self.variants, "seeds": list(self.seeds),
                  "runs_dir": self.runs_dir, "findings_path": self.findings_path}
        return {name: values[name] for name in PARAMETERS}


def parameter_defaults() -> dict[str, Any]:
    """Name -> default of every notebook parameter, in order."""
    return defaults(PARAMETERS)


def validate_parameters(namespace: Mapping[str, Any]) -> StudyParams:
    """Check the notebook's parameters (its ``globals()``) before anything runs.

    Unknown names are errors (:func:`analysis.parameters.read_parameters`);
    missing parameters take their defaults. The training settings are checked
    by :meth:`TrainConfig.validate` as the residual network's (a plain
    network's runs only drop what it has no branches for, see
    :func:`configs_for`); every error is a one-line ParameterError naming the
    parameter.
    """
    values = read_parameters(namespace, PARAMETERS)
    with checks.raising(ParameterError):
        return StudyParams(
            config=TrainConfig(**training_settings(values)).validate(),
            variants=checks.choice("variants", values["variants"], VARIANTS),
            seeds=checks.integers("seeds", values["seeds"], minimum=0, distinct=True),
            runs_dir=checks.path("runs_dir", values["runs_dir"], kind="folder path"),
            findings_path=checks.path("findings_path", values["findings_path"], kind="file path", optional=True))


def check_memory(params: StudyParams) -> None:
    """Refuse, before anything is built, a study whose networks cannot train in the memory available here.

    Separate from :func:`validate_parameters`, which checks values wherever they
    are given (a sweep validates its points on the machine it starts from): this
    runs where the networks train. Raises a one-line ParameterError naming ``depth``
    with the estimate and the limit (:func:`analysis.memory.check_training_memory`).
    """
    configs = configs_for(params)
    with checks.raising(ParameterError):
        for variant in params.variant_names:  # the seeds of a variant share its shapes
            check_training_memory(next(c for c in configs if c.residual == (variant == "residual")))


def configs_for(params: StudyParams) -> list[TrainConfig]:
    """The training config of each variant and seed, residual first (run ids follow from them).

    A plain network has no residual branches, so its runs start them neither at zero nor by Fixup or SkipInit.
    """
    plain = {"zero_init_residual": False, "init": "kaiming"}
    return [params.config.replace(residual=variant == "residual", seed=seed, **(plain if variant == "plain" else {}))
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
        raise checks.CheckError("run_ids", "must name at least one run, got none")
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
