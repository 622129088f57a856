"""Architecture costs: why 1x1 (bottleneck) convolutions, and how ResNet-50 and ResNet-152 differ.

Every number is computed from the package's own modules with
:func:`analysis.models.summarize` (parameters, multiply-accumulates from
torch's ``FlopCounterMode`` for one image, main-path weight layers), on the
``meta`` device, so nothing is allocated or computed:

- :func:`block_costs`: a basic block against a bottleneck block at the same
  input and output width, as in He et al. (2015), Fig. 5;
- :func:`family_costs`: the ImageNet family, ResNet-18 to ResNet-152;
- :func:`matched_pair` and :func:`train_pair`: a basic and a bottleneck
  network of matched cost on 32x32 images, trained on the same data;
- :func:`cost_numbers` and :func:`cost_sentences`: the answers, as JSON and in words.

``notebooks/architecture_costs.ipynb`` is a thin layer over this module.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from torch import nn

from analysis import checks, study
from analysis.checks import shown
from analysis.config import TrainConfig
from analysis.frames import PALETTE, final_metrics, to_json_value
from analysis.findings import Sentences
from analysis.models import IMAGENET_DEPTHS, BasicBlock, Bottleneck, build_model, summarize, valid_depth
from analysis.parameters import (ParameterError, defaults, read_parameters, training_parameters, training_settings,
                                 with_defaults)

BLOCK_CHANNELS = 256
"""Input and output channels of the block comparison (He et al. 2015, Fig. 5 right)."""
BOTTLENECK_PLANES = 64
"""Channels inside the bottleneck block: 1x1 256->64, 3x3 64->64, 1x1 64->256."""
BLOCK_IMAGE_SIZE = 56
"""Height and width of the blocks' input: the resolution of ResNet's first stage at 224x224."""
IMAGENET_SIZE = 224
IMAGENET_CLASSES = 1000
MAC_TOLERANCE = 0.1
"""Largest relative MAC difference :func:`matched_pair` accepts between its two networks."""
BAR_COLOR = PALETTE["residual"]
"""Every network here is residual, so every bar has the residual colour."""

FAMILY_COLUMNS = ("network", "depth", "block_type", "blocks_per_stage", "blocks", "weight_layers", "params", "macs")
BLOCK_COLUMNS = ("block", "block_type", "in_channels", "inner_channels", "out_channels", "input_size",
                 "weight_layers", "params", "macs")
PAIR_COLUMNS = ("network", "block_type", "depth", "width", "blocks_per_stage", "weight_layers", "params", "macs",
                "macs_vs_basic")
TRAINED_COLUMNS = ("network", "block_type", "depth", "width", "seed", "run_id", "status", "reused", "steps",
                   "params", "macs", "final_train_loss", "final_val_loss", "final_val_accuracy")


def _on_meta(make: Any) -> nn.Module:
    """Build a module on the meta device: shapes only, no memory, no initialisation work."""
    with torch.device("meta"):
        return make()


def _block_type(block: nn.Module) -> str:
    return "bottleneck" if isinstance(block, Bottleneck) else "basic"


# -- blocks --------------------------------------------------------------------

def block_costs() -> pd.DataFrame:
    """Parameters, MACs and weight layers of three residual blocks on a 56x56 input (one row each).

    He et al. (2015), Fig. 5 puts a basic block at 64 channels (left) beside
    a bottleneck block at 256 channels in and out (right). To compare the two
    designs at the same input and output width, the first row is a basic
    block of two 3x3 convolutions 256->256; the second the bottleneck
    (1x1 256->64, 3x3 64->64, 1x1 64->256); the third Fig. 5's own 64-channel
    basic block, which costs about as much as the bottleneck. All are the
    package's :class:`BasicBlock` / :class:`Bottleneck`: residual, identity
    shortcut, batch norm (whose scale and shift count as parameters;
    the addition and the ReLUs cost no MACs).
    """
    c, p = BLOCK_CHANNELS, BOTTLENECK_PLANES
    designs = [
        (f"basic, {c} channels", lambda: BasicBlock(c, c), c, c),
        (f"bottleneck, {c}-{p}-{c}", lambda: Bottleneck(c, p), c, p),
        (f"basic, {p} channels (He et al. Fig. 5 left)", lambda: BasicBlock(p, p), p, p),
    ]
    rows = []
    for name, make, channels, inner in designs:
        block = _on_meta(make)
        summary = summarize(block, (channels, BLOCK_IMAGE_SIZE, BLOCK_IMAGE_SIZE))
        rows.append({"block": name, "block_type": _block_type(block), "in_channels": channels,
                     "inner_channels": inner, "out_channels": channels, "input_size": BLOCK_IMAGE_SIZE,
                     "weight_layers": summary.layers, "params": summary.params, "macs": summary.macs})
    return pd.DataFrame(rows, columns=list(BLOCK_COLUMNS))


# -- networks --------------------------------------------------------------------

def _network_row(model: nn.Module, image_size: int) -> dict[str, Any]:
    summary = summarize(model, (3, image_size, image_size))
    layout = tuple(len(stage) for stage in model.stages)
    return {"depth": model.depth, "block_type": _block_type(model.stages[0][0]), "blocks_per_stage": layout,
            "blocks": sum(layout), "weight_layers": summary.layers, "params": summary.params, "macs": summary.macs}


def family_costs() -> pd.DataFrame:
    """The ImageNet family (ResNet-18, 34, 50, 101, 152) at 224x224 with 1000 classes, one row each.

    Residual, projection shortcuts where the shape changes (as torchvision),
    so parameters and MACs equal torchvision's ``resnet18`` ... ``resnet152``.
    Columns: network, depth, block type, blocks per stage, blocks, weight
    layers (the depth), parameters, MACs per image. Counted once per process
    (a few seconds), then copied.
    """
    return _family_frame().copy()


@functools.lru_cache(maxsize=1)
def _family_frame() -> pd.DataFrame:
    rows = []
    for depth in IMAGENET_DEPTHS:
        model = _on_meta(lambda: build_model(depth, num_classes=IMAGENET_CLASSES))
        rows.append({"network": f"ResNet-{depth}", **_network_row(model, IMAGENET_SIZE)})
    return pd.DataFrame(rows, columns=list(FAMILY_COLUMNS))


def cost_numbers(blocks: pd.DataFrame | None = None, family: pd.DataFrame | None = None,
                 trained: pd.DataFrame | None = None) -> dict[str, Any]:
    """The report's answers as plain JSON: ``basic_block`` and ``bottleneck_block`` (``params``, ``macs``;
    the 256-channel blocks of :func:`block_costs`), ``resnet50`` and ``resnet152`` (``params``, ``macs``,
    ``blocks``: the number of blocks, ``blocks_per_stage``); the frames are computed when not given. With :func:`train_pair`'s
    frame, also ``trained``: per network ("ResNet-34 (basic)", ...) its ``params``, ``macs``, ``steps``
    and, per seed, ``final_train_loss`` and ``final_val_accuracy``."""
    blocks = block_costs() if blocks is None else blocks
    family = family_costs() if family is None else family
    basic = blocks[(blocks["block_type"] == "basic") & (blocks["in_channels"] == BLOCK_CHANNELS)].iloc[0]
    bottleneck = blocks[blocks["block_type"] == "bottleneck"].iloc[0]
    nets = family.set_index("depth")
    numbers = {"basic_block": {"params": basic["params"], "macs": basic["macs"]},
               "bottleneck_block": {"params": bottleneck["params"], "macs": bottleneck["macs"]}}
    for depth in (50, 152):
        numbers[f"resnet{depth}"] = {key: nets.loc[depth, key]
                                     for key in ("params", "macs", "blocks", "blocks_per_stage")}
    if trained is not None:
        numbers["trained"] = {
            f"{name} ({runs['block_type'].iloc[0]})": {
                "params": runs["params"].iloc[0], "macs": runs["macs"].iloc[0], "steps": runs["steps"].max(),
                **{column: {str(seed): value for seed, value in zip(runs["seed"], runs[column])}
                   for column in ("final_train_loss", "final_val_accuracy")}}
            for name, runs in trained.groupby("network", sort=False)}
    return to_json_value(numbers)


# -- a matched pair, trained -------------------------------------------------------

@dataclass(frozen=True, eq=False)
class MatchedPair:
    """A basic-block and a bottleneck network of about the same MACs (see :func:`matched_pair`).

    ``table`` has one row per network (columns :data:`PAIR_COLUMNS`);
    ``mac_ratio`` is the bottleneck network's MACs over the basic one's.
    """

    basic_depth: int
    bottleneck_depth: int
    basic_width: int
    bottleneck_width: int
    shortcut: str
    stem: str
    image_size: int
    table: pd.DataFrame
    mac_ratio: float

    def configs(self, seed: int, **settings: Any) -> list[TrainConfig]:
        """The two networks' training configs (basic first) for ``seed``, residual, on TrainConfig's default data.

        ``settings`` are further :class:`TrainConfig` fields (steps, lr, ...);
        hook statistics are off and validation runs once, at the last step,
        unless ``stats_every`` or ``val_every`` are given.
        """
        settings = {"stats_every": 0, "val_every": settings.get("steps", TrainConfig.steps), **settings}
        return [TrainConfig(depth=depth, width=width, shortcut=self.shortcut, stem=self.stem, seed=seed,
                            image_size=self.image_size, **settings)
                for depth, width in ((self.basic_depth, self.basic_width),
                                     (self.bottleneck_depth, self.bottleneck_width))]


def matched_pair(width: int = 4, *, basic_depth: int = 34, bottleneck_depth: int = 50, shortcut: str = "A",
                 stem: str = "cifar", image_size: int = 32, tolerance: float = MAC_TOLERANCE) -> MatchedPair:
    """A basic network of base ``width`` and the bottleneck network whose MACs come closest to it.

    The default pair is He et al.'s own: ResNet-34 and ResNet-50 share the
    layout [3, 4, 6, 3] and ResNet-50 replaces each two-layer basic block by a
    three-layer bottleneck, here with the CIFAR stem on 32x32 images. MACs
    grow about as the square of the width, so the bottleneck network's base
    width is ``width``, or one of the two integers next to ``width / sqrt(r)``
    (``r``: its MACs over the basic network's at ``width``), whichever brings
    the ratio closest to 1. Option-A shortcuts (the CIFAR family's,
    parameter-free) keep projection convolutions out of the comparison.

    Raises ValueError naming the argument for a bad value, or ``tolerance``
    when no width brings the MACs within it.
    """
    checks.integer("width", width, minimum=1)
    checks.integer("image_size", image_size, minimum=1)
    if not valid_depth(basic_depth) or basic_depth in (50, 101, 152):
        raise checks.CheckError("basic_depth", "must be a depth built of basic blocks (18, 34, or 6n+2 such as 20), "
                                               f"got {shown(basic_depth)}")
    checks.choice("bottleneck_depth", bottleneck_depth, (50, 101, 152))
    checks.number("tolerance", tolerance, above=0)

    def build(depth: int, w: int) -> nn.Module:
        return _on_meta(lambda: build_model(depth, width=w, shortcut=shortcut, stem=stem))

    basic = _network_row(build(basic_depth, width), image_size)
    candidates = {width: _network_row(build(bottleneck_depth, width), image_size)}
    estimate = width / math.sqrt(candidates[width]["macs"] / basic["macs"])
    for w in {max(1, math.floor(estimate)), max(1, math.ceil(estimate))} - {width}:
        candidates[w] = _network_row(build(bottleneck_depth, w), image_size)
    best = min(candidates, key=lambda w: abs(math.log(candidates[w]["macs"] / basic["macs"])))
    ratio = candidates[best]["macs"] / basic["macs"]
    if abs(ratio - 1) > tolerance:
        raise ValueError(f"tolerance: no bottleneck width brings ResNet-{bottleneck_depth}'s MACs within "
                         f"{tolerance:.1%} of ResNet-{basic_depth}'s at width {width} "
                         f"(closest: {ratio:.3f} times at width {best})")
    table = pd.DataFrame([{"network": f"ResNet-{row['depth']}", "width": w, **row,
                           "macs_vs_basic": row["macs"] / basic["macs"]}
                          for row, w in ((basic, width), (candidates[best], best))], columns=list(PAIR_COLUMNS))
    return MatchedPair(basic_depth, bottleneck_depth, width, best, shortcut, stem, image_size, table, ratio)


def train_pair(pair: MatchedPair, seeds: Iterable[int], *, runs_dir: str | Path = "runs",
               progress: bool | None = None, **settings: Any) -> pd.DataFrame:
    """Train both networks of ``pair`` once per seed with :func:`analysis.train.train` and tabulate the end.

    Runs go to ``runs_dir`` and finished ones with the same config are reused.
    ``settings`` are :class:`TrainConfig` fields (see :meth:`MatchedPair.configs`).
    One row per network and seed (columns :data:`TRAINED_COLUMNS`): the final
    train loss is the mean over the last recorded steps
    (:func:`analysis.frames.final_metrics`); validation loss and accuracy are
    over the whole validation split at the last step.
    """
    from analysis.train import train

    costs = pair.table.set_index("depth")
    rows = []
    for seed in seeds:
        for config in pair.configs(seed, **settings):
            run = train(config, root=runs_dir, progress=progress)
            final = final_metrics(run.metrics.assign(run_id=run.run_id)).iloc[0]
            net = costs.loc[config.depth]
            rows.append({"network": net["network"], "block_type": net["block_type"], "depth": config.depth,
                         "width": config.width, "seed": seed, "run_id": run.run_id, "status": run.status,
                         "reused": run.skipped, "steps": int(final["last_step"]), "params": net["params"],
                         "macs": net["macs"], "final_train_loss": final["final_train_loss"],
                         "final_val_loss": final["final_val_loss"],
                         "final_val_accuracy": final["final_val_accuracy"]})
    return pd.DataFrame(rows, columns=list(TRAINED_COLUMNS))


# -- words -------------------------------------------------------------------------

def _count(n: float) -> str:
    """A count in short form: 70.4k, 25.6M, 4.09G."""
    for scale, suffix, digits in ((1e9, "G", 2), (1e6, "M", 1), (1e3, "k", 1)):
        if n >= scale:
            return f"{n / scale:.{digits}f}{suffix}"
    return f"{n:g}"


def cost_sentences(blocks: pd.DataFrame, family: pd.DataFrame, trained: pd.DataFrame | None = None) -> Sentences:
    """The answers in words, built only from the frames of :func:`block_costs`, :func:`family_costs`
    and (optionally) :func:`train_pair`."""
    basic = blocks[(blocks["block_type"] == "basic") & (blocks["in_channels"] == BLOCK_CHANNELS)].iloc[0]
    small = blocks[(blocks["block_type"] == "basic") & (blocks["in_channels"] != BLOCK_CHANNELS)].iloc[0]
    neck = blocks[blocks["block_type"] == "bottleneck"].iloc[0]
    size = f"{neck['input_size']}x{neck['input_size']}"
    sentences = Sentences([
        f"On a {size} input with {neck['in_channels']} channels in and out, the bottleneck block "
        f"(1x1 {neck['in_channels']}->{neck['inner_channels']}, 3x3 {neck['inner_channels']}->"
        f"{neck['inner_channels']}, 1x1 {neck['inner_channels']}->{neck['out_channels']}) has "
        f"{neck['params']:,} parameters and {_count(neck['macs'])} MACs: "
        f"{basic['params'] / neck['params']:.1f} times fewer parameters and {basic['macs'] / neck['macs']:.1f} "
        f"times fewer MACs than a basic block of two 3x3 convolutions at {basic['in_channels']} channels "
        f"({basic['params']:,} parameters, {_count(basic['macs'])} MACs), with {neck['weight_layers']} "
        f"weight layers instead of {basic['weight_layers']}.",
        f"It costs {neck['macs'] / small['macs']:.2f} times the MACs of the {small['in_channels']}-channel basic "
        f"block of He et al.'s Fig. 5 ({_count(small['macs'])}) while its input and output are "
        f"{neck['in_channels'] / small['in_channels']:.0f} times as wide: the 1x1 convolutions reduce the width "
        "before the 3x3 convolution and restore it after.",
    ])
    nets = family.set_index("depth")
    r34, r50, r152 = nets.loc[34], nets.loc[50], nets.loc[152]
    extra = [deep - shallow for deep, shallow in zip(r152["blocks_per_stage"], r50["blocks_per_stage"])]
    busiest = max(range(len(extra)), key=extra.__getitem__)
    sentences.append(
        f"ResNet-50 keeps ResNet-34's blocks per stage {list(r34['blocks_per_stage'])} and replaces each "
        f"{r34['block_type']} block by a {r50['block_type']} block: {r50['weight_layers']} weight layers "
        f"instead of {r34['weight_layers']} for {r50['params'] / r34['params']:.2f} times the parameters "
        f"({_count(r50['params'])}) and {r50['macs'] / r34['macs']:.2f} times the MACs "
        f"({_count(r50['macs'])} per {IMAGENET_SIZE}x{IMAGENET_SIZE} image).")
    sentences.append(
        f"ResNet-152 has {r152['params'] / r50['params']:.2f} times the parameters "
        f"({_count(r152['params'])} vs {_count(r50['params'])}) and {r152['macs'] / r50['macs']:.2f} "
        f"times the MACs ({_count(r152['macs'])} vs {_count(r50['macs'])}) of ResNet-50 with "
        f"{r152['blocks'] / r50['blocks']:.2f} times the blocks ({r152['blocks']} vs {r50['blocks']}; per stage "
        f"{list(r152['blocks_per_stage'])} vs {list(r50['blocks_per_stage'])}); {extra[busiest]} of the "
        f"{sum(extra)} extra {r152['block_type']} blocks are in stage {busiest + 1}.")
    if trained is not None and len(trained):
        means = trained.groupby("network", sort=False).agg(
            block_type=("block_type", "first"), macs=("macs", "first"), loss=("final_train_loss", "mean"),
            accuracy=("final_val_accuracy", "mean"), seeds=("seed", "nunique"), steps=("steps", "max"))
        basic_net = means[means["block_type"] == "basic"].iloc[0]
        neck_net = means[means["block_type"] == "bottleneck"].iloc[0]
        seeds = int(neck_net["seeds"])
        sentences.append(
            f"At matched cost ({basic_net.name}: {_count(basic_net['macs'])} MACs, {neck_net.name}: "
            f"{_count(neck_net['macs'])}, {neck_net['macs'] / basic_net['macs']:.2f} times) after "
            f"{int(neck_net['steps'])} steps, the bottleneck network reached a validation accuracy of "
            f"{neck_net['accuracy']:.1%} and a final train loss of {neck_net['loss']:.3f}, the basic network "
            f"{basic_net['accuracy']:.1%} and {basic_net['loss']:.3f} (means over {seeds} "
            f"seed{'s' if seeds != 1 else ''}).")
    return sentences


# -- figures -----------------------------------------------------------------------

def cost_figure(frame: pd.DataFrame, *, label: str, title: str) -> Figure:
    """Parameters and MACs (log scale) of each row of ``frame``, named by its ``label`` column."""
    long = frame.melt(id_vars=[label], value_vars=["params", "macs"], var_name="quantity", value_name="count")
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    fig.suptitle(title)
    for ax, (quantity, name) in zip(fig.subplots(1, 2), (("params", "parameters"), ("macs", "MACs per image"))):
        rows = long[long["quantity"] == quantity]
        sns.barplot(data=rows, x=label, y="count", color=BAR_COLOR, ax=ax)
        ax.set_yscale("log")  # after the bars: seaborn's log_scale leaves bars that start at 0 undrawn
        ax.set_ylim(rows["count"].min() / 4, rows["count"].max() * 2)
        ax.bar_label(ax.containers[0], labels=[_count(v) for v in rows["count"]], fontsize="small")
        ax.set(xlabel="", ylabel=f"{name} (log scale)", title=name)
    return fig


def block_figure(blocks: pd.DataFrame) -> Figure:
    """Parameters and MACs of the three blocks of :func:`block_costs`."""
    size = blocks["input_size"].iloc[0]
    named = blocks.assign(label=blocks["block"].str.replace(", ", "\n").str.replace(" (", "\n("))
    return cost_figure(named, label="label", title=f"One residual block on a {size}x{size} input")


def family_figure(family: pd.DataFrame) -> Figure:
    """Parameters and MACs of the ImageNet family of :func:`family_costs`, labelled with the block type."""
    named = family.assign(label=family["network"] + "\n" + family["block_type"])
    return cost_figure(named, label="label", title=f"The ImageNet family at {IMAGENET_SIZE}x{IMAGENET_SIZE}, "
                                                   f"{IMAGENET_CLASSES} classes")


def trained_figure(trained: pd.DataFrame) -> Figure:
    """Final train loss and validation accuracy of each network: seeds as points, the mean as a bar."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    fig.suptitle("Matched-cost networks trained on the same data (bar: mean; points: seeds)")
    for ax, (column, name) in zip(fig.subplots(1, 2), (("final_train_loss", "final train loss"),
                                                       ("final_val_accuracy", "validation accuracy"))):
        sns.barplot(data=trained, x="network", y=column, color=BAR_COLOR, alpha=0.5, errorbar=None, ax=ax)
        sns.stripplot(data=trained, x="network", y=column, color=BAR_COLOR, size=6, ax=ax)
        ax.set(xlabel="", ylabel=name, title=name)
    return fig


# -- notebook parameters -------------------------------------------------------------

COST_DEFAULTS: dict[str, tuple[Any, str]] = {
    "steps": (100, "the trained comparison is a short check beside the cost tables: a third of the depth "
                   "study's steps"),
    "warmup_steps": (10, "a tenth of the steps, as in the depth study"),
}
"""The trained comparison's defaults where they differ from the depth study's: name -> (default, why)."""

_TRAIN_SETTINGS = ("steps", "batch_size", "lr", "warmup_steps", "device", "threads")
"""The TrainConfig fields the notebook sets; the others keep TrainConfig's defaults (SGD, cosine schedule)."""

PARAMETERS: dict[str, tuple[Any, str]] = {
    "seeds": ([0, 1], "seeds of the trained comparison: one int or a list of distinct ints"),
    "width": (4, "base width of the trained basic network (ResNet-34 layout, CIFAR stem, 32x32 images)"),
    **training_parameters(with_defaults(study.STUDY_CONFIG, COST_DEFAULTS), _TRAIN_SETTINGS),
    "runs_dir": study.PARAMETERS["runs_dir"],
    "findings_path": (None, "write the cost numbers as JSON to this file (None: do not write them)"),
}
"""Notebook parameters in order: name -> (default, one-line description); the training settings at the depth
study's defaults but for :data:`COST_DEFAULTS`."""


@dataclass(frozen=True)
class CostParams:
    """Validated notebook parameters (see :data:`PARAMETERS`)."""

    seeds: tuple[int, ...]
    width: int
    settings: Mapping[str, Any]
    runs_dir: str
    findings_path: str | None

    def to_dict(self) -> dict[str, Any]:
        """Every notebook parameter (:data:`PARAMETERS`), JSON-ready."""
        values = {**self.settings, "seeds": list(self.seeds), "width": self.width, "runs_dir": self.runs_dir,
                  "findings_path": self.findings_path}
        return {name: values[name] for name in PARAMETERS}


def parameter_defaults() -> dict[str, Any]:
    """Name -> default of every notebook parameter, in order."""
    return defaults(PARAMETERS)


def validate_parameters(namespace: Mapping[str, Any]) -> CostParams:
    """Check the notebook's parameters (its ``globals()``) before anything runs; one-line
    :class:`~analysis.parameters.ParameterError` naming the parameter otherwise."""
    values = read_parameters(namespace, PARAMETERS)
    with checks.raising(ParameterError):
        seeds = checks.integers("seeds", values["seeds"], minimum=0, distinct=True)
        width = checks.integer("width", values["width"], minimum=1)
        runs_dir = checks.path("runs_dir", values["runs_dir"], kind="folder path")
        findings_path = checks.path("findings_path", values["findings_path"], kind="file path", optional=True)
        settings = training_settings({name: values[name] for name in _TRAIN_SETTINGS})
        TrainConfig(**settings).validate()
    return CostParams(seeds, width, settings, runs_dir, findings_path)


def run_ids_for(params: CostParams) -> list[str]:
    """The run folders the trained comparison writes (or reuses) under ``runs_dir``."""
    pair = matched_pair(params.width)
    return [config.run_id() for seed in params.seeds for config in pair.configs(seed, **params.settings)]


__all__ = ["BLOCK_COLUMNS", "CostParams", "FAMILY_COLUMNS", "MatchedPair", "PAIR_COLUMNS", "PARAMETERS",
           "TRAINED_COLUMNS", "block_costs", "block_figure", "cost_figure", "cost_numbers", "cost_sentences",
           "family_costs", "family_figure", "matched_pair", "parameter_defaults", "run_ids_for", "train_pair",
           "trained_figure", "validate_parameters"]
