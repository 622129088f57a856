"""Lesion study: delete one block of a trained network and measure the validation error.

Veit, Wilber & Belongie (2016), "Residual networks behave like ensembles of
relatively shallow networks": deleting a single block of a trained residual
network barely changes its error, while deleting a layer of a plain network
(VGG, in their study) destroys it. Here, for trained residual and plain networks of one depth:

- :func:`lesion` deletes one block for the duration of a ``with``: a residual
  block keeps only its shortcut, ``relu(shortcut(x))``; a plain block becomes
  the identity when its input and output shapes agree (stride 1, same
  channels), and otherwise cannot be deleted (``deletable`` False, with the
  ``reason``). The model is restored afterwards.
- :func:`lesion_table` deletes each block in turn and measures the validation
  error against the unlesioned one; :func:`lesion_study` trains (or reuses)
  the networks through :func:`analysis.train.train` and tabulates every block
  of every run; :func:`lesion_numbers` and :func:`lesion_sentences` summarise
  that frame; :func:`lesion_figure` draws it.

``notebooks/lesion_study.ipynb`` is a thin layer over this module. Its
parameters (:data:`PARAMETERS`) are the depth study's names and defaults
(:data:`analysis.study.PARAMETERS`), except ``depth`` (:data:`LESION_DEFAULTS`),
with no ``variants`` (both are always trained) and with its own ``findings_path``;
with the same values both notebooks train the same runs, so either reuses the other's.
Blocks are numbered from 0 in forward order (``block_index``); ``stage`` and
``position`` (the block's place in its stage) are 0-based too.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from torch import nn

from analysis import checks, study
from analysis.config import TrainConfig
from analysis.findings import Sentences
from analysis.frames import PALETTE, to_json_value, variant_of, variants_in
from analysis.parameters import ParameterError, defaults, read_parameters

EVAL_BATCH_SIZE = 256
"""Validation images per forward pass when measuring errors (the result does not depend on it)."""

SEED_RANGE = ("pi", 100)
"""Error bars of the per-block means: the range over seeds (0th to 100th percentile)."""

LESION_COLUMNS = ("block_index", "stage", "position", "block_type", "residual", "deletable", "reason",
                  "error", "baseline_error", "increase")
"""Columns of :func:`lesion_table`, one row per block."""

NUMBER_NAMES = ("mean_error_increase", "max_error_increase", "max_increase_block", "baseline_error", "blocks",
                "blocks_deleted", "skipped")
"""The per-variant quantities of :func:`lesion_numbers`."""

LESION_DEFAULTS: dict[str, tuple[Any, str]] = {
    "depth": (20, "every block is deleted in turn, and a CIFAR-family network of 9 blocks keeps that quick "
                  "(Veit et al. lesioned CIFAR-family networks too)"),
}
"""The lesion study's defaults where they differ from the depth study's: name -> (default, why)."""

_OWN: dict[str, tuple[Any, str]] = {
    **{name: (default, study.PARAMETERS[name][1]) for name, (default, _) in LESION_DEFAULTS.items()},
    "findings_path": (None, "write the lesion numbers as JSON to this file (None: do not write them)"),
}

PARAMETERS: dict[str, tuple[Any, str]] = {name: _OWN.get(name, parameter)
                                          for name, parameter in study.PARAMETERS.items() if name != "variants"}
"""Notebook parameters in order: name -> (default, one-line description); the depth study's, at its defaults
but for :data:`LESION_DEFAULTS`, without ``variants`` and with the lesion study's own ``findings_path``."""

# -- deleting one block --------------------------------------------------------

@dataclass(frozen=True)
class BlockInfo:
    """Where a block sits and whether it can be deleted (``reason`` says why not; '' when it can)."""

    block_index: int
    stage: int
    position: int
    block_type: str
    residual: bool
    deletable: bool
    reason: str


class _ShortcutOnly(nn.Module):
    """A residual block without its branch: ``relu(shortcut(x))``, with the block's own modules."""

    def __init__(self, shortcut: nn.Module, relu: nn.Module) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.shortcut(x))


def blocks_of(model: nn.Module) -> list[BlockInfo]:
    """Every block of a ResNet (``model.stages``) in forward order, with what deleting it means."""
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.Sequential):
        raise checks.CheckError("model", f"must be a ResNet with a `stages` Sequential of blocks, "
                                         f"got {type(model).__name__}")
    infos = []
    for stage_index, stage in enumerate(stages):
        for position, block in enumerate(stage):
            residual = block.shortcut is not None
            reason = "" if residual else _plain_reason(block)
            infos.append(BlockInfo(len(infos), stage_index, position, type(block).__name__, residual,
                                   reason == "", reason))
    return infos


def _plain_reason(block: nn.Module) -> str:
    """Why a plain block cannot become the identity ('' when it can: stride 1, same channels)."""
    convs = [m for m in block.branch.modules() if isinstance(m, nn.Conv2d)]
    in_channels, out_channels = convs[0].in_channels, convs[-1].out_channels
    stride = math.prod(conv.stride[0] for conv in convs)
    if in_channels == out_channels and stride == 1:
        return ""
    return (f"plain block changes the shape ({in_channels} -> {out_channels} channels, stride {stride}); "
            "there is no identity to replace it with")


@contextmanager
def lesion(model: nn.Module, block_index: int) -> Iterator[BlockInfo]:
    """Delete block ``block_index`` (0-based, forward order) of a ResNet inside a ``with``.

    A residual block is replaced by ``relu(shortcut(x))`` (its branch removed);
    a plain block by the identity where its input and output shapes agree.
    A plain block that changes the shape is left in place and the yielded
    :class:`BlockInfo` has ``deletable`` False and the ``reason``. The block
    is put back on exit, also after an error, so the model is unchanged.
    """
    infos = blocks_of(model)
    info = infos[checks.integer("block_index", block_index, minimum=0, maximum=len(infos) - 1)]
    if not info.deletable:
        yield info
        return
    stage = model.stages[info.stage]
    block = stage[info.position]
    stage[info.position] = _ShortcutOnly(block.shortcut, block.relu) if info.residual else nn.Identity()
    try:
        yield info
    finally:
        stage[info.position] = block


# -- measuring errors ----------------------------------------------------------

def error_rate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Fraction of misclassified examples over ``batches``, in eval mode without gradients.

    Batches are moved to the device of the model's parameters. The model's
    training mode is restored afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    wrong, count = 0, 0
    try:
        with torch.no_grad():
            for x, y in batches:
                y = y.to(device)
                wrong += (model(x.to(device)).argmax(1) != y).sum().item()
                count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise checks.CheckError("batches", "must hold at least one example, got none")
    return wrong / count


def lesion_table(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> pd.DataFrame:
    """One row per block: its validation error with that block deleted, against the unlesioned error.

    ``batches`` (e.g. ``data.val_batches(256)``) is read once into memory and
    reused for every lesion. Columns :data:`LESION_COLUMNS`: ``error`` with the
    block deleted, ``baseline_error`` unlesioned, ``increase`` their
    difference; NaN ``error`` and ``increase`` where the block cannot be deleted.
    """
    batches = list(batches)
    baseline = error_rate(model, batches)
    rows = []
    for info in blocks_of(model):
        with lesion(model, info.block_index):
            error = error_rate(model, batches) if info.deletable else math.nan
        rows.append({**info.__dict__, "error": error, "baseline_error": baseline, "increase": error - baseline})
    return pd.DataFrame(rows, columns=list(LESION_COLUMNS))


def lesion_study(configs: Iterable[TrainConfig], *, runs_dir: str | Path = "runs",
                 progress: bool | None = None, eval_batch_size: int = EVAL_BATCH_SIZE) -> pd.DataFrame:
    """Train each config (finished runs in ``runs_dir`` are reused), then lesion every block of it.

    Each network is loaded with its trained weights (:func:`analysis.train.load_trained`)
    on the config's device and every block is deleted in turn on the whole
    validation split of the run's own data (same dataset, split and seed).
    Returns :func:`lesion_table`'s rows with ``variant, seed, depth, run_id,
    status`` in front. A diverged run is kept, with its status; any other
    training failure is raised.
    """
    from analysis.data import load_data
    from analysis.train import load_trained, resolve_device, train

    frames, datasets = [], {}
    for config in configs:
        run = train(config, root=runs_dir, progress=progress)
        variant = variant_of(config.residual)
        print(f"{variant}, seed {config.seed}: {'reused finished run' if run.skipped else 'trained'} "
              f"{run.path} ({run.status})")
        model, _ = load_trained(runs_dir, run.run_id)
        key = (config.dataset, config.data_root, config.seed, config.image_size)
        if key not in datasets:
            datasets[key] = load_data(config.dataset, root=config.data_root, seed=config.seed,
                                      image_size=config.image_size)
        table = lesion_table(model.to(resolve_device(config.device)), datasets[key].val_batches(eval_batch_size))
        tag = {"variant": variant, "seed": config.seed, "depth": config.depth, "run_id": run.run_id,
               "status": run.status}
        frames.append(table.assign(**tag)[[*tag, *table.columns]])
    if not frames:
        raise checks.CheckError("configs", "must name at least one training config, got none")
    return pd.concat(frames, ignore_index=True)


# -- summaries -------------------------------------------------------------------

def lesion_numbers(frame: pd.DataFrame) -> dict[str, Any]:
    """The lesion study's numbers as plain JSON (NaN as None), each quantity keyed by variant:

    - ``mean_error_increase``: mean error increase from deleting one block, over
      the deletable blocks and the seeds;
    - ``max_error_increase``: the largest per-block mean over seeds, and
      ``max_increase_block``: that block;
    - ``baseline_error``: unlesioned validation error, mean over seeds;
    - ``blocks``, ``blocks_deleted``, ``skipped``: blocks per network, those
      deleted and those that could not be (plain blocks that change the shape);

    plus ``seeds`` (all seeds in ``frame``) and, from :func:`lesion_study`'s
    frame, ``depth``.
    """
    result: dict[str, Any] = {name: {} for name in NUMBER_NAMES}
    for variant in variants_in(frame):
        rows = frame[frame["variant"] == variant]
        deleted = rows[rows["deletable"]]
        per_block = rows.groupby("block_index")["deletable"].all()
        by_block = deleted.groupby("block_index")["increase"].mean()
        values = {
            "mean_error_increase": float(deleted["increase"].mean()),
            "max_error_increase": float(by_block.max()) if len(by_block) else math.nan,
            "max_increase_block": int(by_block.idxmax()) if len(by_block) else None,
            "baseline_error": float(rows.groupby("seed")["baseline_error"].first().mean()),
            "blocks": int(len(per_block)),
            "blocks_deleted": int(per_block.sum()),
            "skipped": int((~per_block).sum()),
        }
        for name, value in values.items():
            result[name][variant] = value
    result["seeds"] = sorted(int(seed) for seed in frame["seed"].unique())
    if "depth" in frame and frame["depth"].nunique() == 1:
        result["depth"] = int(frame["depth"].iloc[0])
    return to_json_value(result)


def lesion_sentences(numbers: Mapping[str, Any]) -> Sentences:
    """What :func:`lesion_numbers` says, in words built only from those numbers."""
    sentences = Sentences()
    seeds = len(numbers["seeds"])
    increase = numbers["mean_error_increase"]
    for variant in increase:
        value = {name: numbers[name][variant] for name in NUMBER_NAMES}
        text = (f"Deleting one block of the trained {variant} network changed its validation error by "
                f"{_points(value['mean_error_increase'])} on average over {value['blocks_deleted']} of its "
                f"{value['blocks']} blocks and {seeds} seed{'s' if seeds != 1 else ''}, "
                f"from an unlesioned error of {_percent(value['baseline_error'])}")
        if value["max_increase_block"] is not None:
            text += (f"; the largest increase, {_points(value['max_error_increase'])}, came from deleting block "
                     f"{value['max_increase_block']}")
        if value["skipped"]:
            text += (f". {value['skipped']} block{'s' if value['skipped'] != 1 else ''} "
                     "that change the shape could not be deleted")
        sentences.append(text + ".")
    if "residual" in increase and "plain" in increase:
        low, high = increase["residual"], increase["plain"]
        if low is not None and high is not None and low > 0 and high > 0:
            sentences.append(f"Deleting a plain block raised the error {high / low:.1f} times as much as "
                             "deleting a residual block.")
    return sentences


def _points(value: float | None) -> str:
    """An error difference in signed percentage points."""
    return "n/a" if value is None else f"{100 * value:+.1f} percentage points"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def lesion_figure(frame: pd.DataFrame) -> Figure:
    """Validation error after deleting each block, and its increase, residual against plain.

    Points are seeds; the marker with bars is the mean over seeds and their
    range. Dashed lines: each variant's unlesioned error (mean over seeds).
    Blocks that cannot be deleted have no points.
    """
    variants = variants_in(frame)
    palette = {variant: PALETTE.get(variant, "grey") for variant in variants}
    order = sorted(frame["block_index"].unique())
    deleted = frame[frame["deletable"]]
    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    skipped = " (no points: blocks that change the shape cannot be deleted)" if (~frame["deletable"]).any() else ""
    fig.suptitle(f"Deleting one block of a trained network{skipped}")
    for ax, column, ylabel in ((axes[0], "error", "validation error"),
                               (axes[1], "increase", "error increase over unlesioned")):
        common = dict(data=deleted, x="block_index", y=column, hue="variant", order=order, hue_order=variants,
                      palette=palette, ax=ax)
        sns.stripplot(**common, dodge=True, alpha=0.45, size=4, legend=False)
        sns.pointplot(**common, dodge=0.4, errorbar=SEED_RANGE, linestyle="none", markers="D", capsize=0.1)
        ax.set(xlabel="block (forward order, from 0)", ylabel=ylabel)
    baselines = frame.groupby(["variant", "seed"])["baseline_error"].first().groupby("variant").mean()
    for variant in variants:
        axes[0].axhline(baselines[variant], color=palette[variant], linestyle="--", linewidth=1,
                        label=f"{variant}, unlesioned")
    axes[1].axhline(0.0, color="grey", linestyle="--", linewidth=1)
    axes[0].legend(fontsize="small")
    axes[1].legend(fontsize="small")
    return fig


# -- notebook parameters -----------------------------------------------------------

def parameter_defaults() -> dict[str, Any]:
    """Name -> default of every lesion notebook parameter, in order."""
    return defaults(PARAMETERS)


@dataclass(frozen=True)
class LesionParams:
    """Validated lesion notebook parameters: the depth study's (``study``, both variants) and ``findings_path``."""

    study: study.StudyParams
    findings_path: str | None = None

    @property
    def runs_dir(self) -> str:
        return self.study.runs_dir

    def to_dict(self) -> dict[str, Any]:
        """Every notebook parameter (:data:`PARAMETERS`), JSON-ready."""
        values = {**self.study.to_dict(), "findings_path": self.findings_path}
        return {name: values[name] for name in PARAMETERS}


def validate_parameters(namespace: Mapping[str, Any]) -> LesionParams:
    """Check the notebook's parameters (its ``globals()``) before anything runs.

    Unknown names are errors; the shared values are checked by
    :func:`analysis.study.validate_parameters` (so the messages are the depth
    study's); ``findings_path`` must be None or a path string.
    """
    values = read_parameters(namespace, PARAMETERS)
    with checks.raising(ParameterError):
        findings_path = checks.path("findings_path", values.pop("findings_path"), kind="file path", optional=True)
    return LesionParams(study.validate_parameters({**values, "variants": "both"}), findings_path)


def configs_for(params: LesionParams) -> list[TrainConfig]:
    """The training configs of the study: residual and plain, one per seed (those of the depth study)."""
    return study.configs_for(params.study)


def run_ids_for(params: LesionParams) -> list[str]:
    """The run folders the study trains (or reuses) under ``runs_dir``."""
    return [config.run_id() for config in configs_for(params)]


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per variant and block: mean error and increase over seeds, and whether the block could be deleted."""
    table = (frame.groupby(["variant", "block_index"], sort=False)
             .agg(stage=("stage", "first"), block_type=("block_type", "first"), deletable=("deletable", "all"),
                  baseline_error=("baseline_error", "mean"), error=("error", "mean"),
                  increase=("increase", "mean"), seeds=("seed", "nunique")))
    return table.reindex(variants_in(frame), level="variant")


__all__ = ["BlockInfo", "EVAL_BATCH_SIZE", "LESION_COLUMNS", "LesionParams", "NUMBER_NAMES", "PARAMETERS",
           "blocks_of", "configs_for", "error_rate", "lesion", "lesion_figure", "lesion_numbers",
           "lesion_sentences", "lesion_study", "lesion_table", "parameter_defaults",
           "run_ids_for", "summary_table", "validate_parameters"]
