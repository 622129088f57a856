"""Initialisation study: gradients and the residual stream at He init, before any training.

For CIFAR-family depths (6n+2), residual and plain, with batch norm and without
(``norm`` 'batch'/'none'), and per seed: build the network after
``torch.manual_seed(seed)``, take one fixed batch of the synthetic data (the
same batch for every network of a seed) and run one forward and backward pass
of cross-entropy in train mode. Recorded, from that one pass:

- **profiles**: the weight-gradient norm ``||dL/dW||`` and the weight norm of
  each main-path conv in forward order, the layers of :mod:`analysis.gradient_flow`
  (projection shortcuts and the classifier left out; the classifier is kept
  apart in ``networks``). Ratio, growth factor, fit and wording come from that
  module, never from a definition of their own here.
- **stream**: the variance over all elements of the stem's output (block 0) and
  of each block's output in forward order (blocks 1..n). De & Smith (2020),
  "Batch normalization biases residual blocks towards the identity function in
  deep networks", show that at He init the variance of the residual stream
  roughly doubles per block without normalization (``2^k`` times block 0's after
  ``k`` blocks) and grows about linearly with batch norm (``k + 1`` times).
  They analyse pre-activation blocks; this package's blocks are post-activation
  (``relu(branch(x) + shortcut(x))``, ResNet v1), so those lines are a
  reference, not an exact prediction. Plain networks have no residual stream:
  their block outputs are recorded for contrast and labelled so (``kind``).

Non-finite values (a deep network without normalization can overflow) are kept
as NaN or inf and reported, never raised. Depths whose estimated memory for the
pass does not fit are skipped with a stated reason (:func:`memory_check`).
``notebooks/init_study.ipynb`` is a thin layer over this module.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from torch import nn

from analysis import checks, memory, study
from analysis.data import load_data
from analysis.gradient_flow import direction, first_to_last, fit_growth
from analysis.models import NORMS, build_model
from analysis.frames import PALETTE, VARIANTS, holds_for_every_seed, pick_steps, to_json_value, variants_in
from analysis.plots import SEED_BAND
from analysis.parameters import ParameterError, read_parameters, training_parameters

DEFAULT_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
DEEP_DEPTH = 1202
"""The opt-in depth of He et al. (2015)'s deepest CIFAR network, measured only where it fits in memory."""
KEYS = ["depth", "variant", "norm", "seed"]
STREAM = "residual stream"
BLOCK_OUTPUT = "block output (plain: no residual stream)"
DATA_SEED = 0
"""Seed of the synthetic data set; the study's seeds choose the batch and the initialisation."""

MEMORY_FRACTION = 0.5
"""Without an explicit limit, a depth may use at most this share of the currently available memory."""

PARAMETERS: dict[str, tuple[Any, str]] = {
    "depths": (list(DEFAULT_DEPTHS), "CIFAR-family depths 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)"),
    "variants": ("both", "networks to measure: 'both', 'residual' or 'plain'"),
    "norms": (["batch", "none"], "normalization: any of 'batch' (BatchNorm) and 'none'"),
    "seeds": ([0, 1, 2], "seeds of initialisation and batch (a list, or one int)"),
    "batch_size": (16, "images in the one fixed batch per seed (at least 2, for batch norm)"),
    "width": (8, "base width (channels of the first stage)"),
    "image_size": (32, "synthetic images are image_size x image_size pixels"),
    "include_1202": (False, "also measure depth 1202 where its estimated memory fits (else skipped with the reason)"),
    "findings_path": (None, "write the report numbers (init_numbers) as JSON to this path (None: do not write)"),
    **training_parameters(study.STUDY_CONFIG, ["threads"]),
}
"""Notebook parameters in order: name -> (default, one-line description)."""

_NORM_WORDS = {"batch": "with batch norm", "none": "without normalization"}
_NORM_TITLES = {"batch": "batch norm", "none": "no normalization"}


# -- parameters ------------------------------------------------------------------

@dataclass(frozen=True)
class InitParams:
    """Validated notebook parameters (see :data:`PARAMETERS`)."""

    depths: tuple[int, ...] = DEFAULT_DEPTHS
    variants: str = "both"
    norms: tuple[str, ...] = NORMS
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 16
    width: int = 8
    image_size: int = 32
    include_1202: bool = False
    findings_path: str | None = None
    threads: int | None = 1

    def to_dict(self) -> dict[str, Any]:
        """Every parameter, JSON-ready (tuples as lists)."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}

    @property
    def depth_list(self) -> list[int]:
        """The depths to measure, ascending, with 1202 when ``include_1202``."""
        return sorted({*self.depths, *((DEEP_DEPTH,) if self.include_1202 else ())})

    @property
    def variant_names(self) -> tuple[str, ...]:
        """The variants to measure, residual first."""
        return ("residual", "plain") if self.variants == "both" else (self.variants,)


def validate_parameters(namespace: Mapping[str, Any]) -> InitParams:
    """Check the notebook's parameters (its ``globals()``) before anything runs.

    Every public literal global must be a known parameter (a typo is an error,
    not an ignored setting); missing ones take their defaults. Raises
    :class:`~analysis.parameters.ParameterError`, one line naming the parameter.
    """
    values = read_parameters(namespace, PARAMETERS)
    with checks.raising(ParameterError):
        depths = checks.integers("depths", values["depths"], minimum=8)
        for depth in depths:
            if (depth - 2) % 6 or depth in (50, 152):
                raise ParameterError("depths", f"{depth} is not a CIFAR-family depth 6n+2 (50 and 152 build the "
                                               "ImageNet family); e.g. 8, 14, 20, 32, 44, 56, 110")
        return InitParams(
            depths=tuple(sorted(set(depths))), variants=checks.choice("variants", values["variants"], VARIANTS),
            norms=checks.choices("norms", values["norms"], NORMS),
            seeds=tuple(dict.fromkeys(checks.integers("seeds", values["seeds"], minimum=0))),
            batch_size=checks.integer("batch_size", values["batch_size"], minimum=2),
            width=checks.integer("width", values["width"], minimum=1),
            image_size=checks.integer("image_size", values["image_size"], minimum=1),
            include_1202=checks.boolean("include_1202", values["include_1202"]),
            findings_path=checks.path("findings_path", values["findings_path"], kind="file path", optional=True),
            threads=checks.integer("threads", values["threads"], minimum=1, optional=True))


# -- memory ----------------------------------------------------------------------

def memory_check(depth: int, *, batch_size: int, width: int, image_size: int,
                 memory_limit: int | None = None) -> str | None:
    """None if the largest network of ``depth`` (residual, batch norm) fits, else why the depth is skipped.

    ``memory_limit``: bytes allowed; None means :data:`MEMORY_FRACTION` of the available memory.
    """
    need = memory.activation_bytes(memory.Network(depth, width=width), batch_size=batch_size, image_size=image_size)
    limit = memory_limit if memory_limit is not None else int(MEMORY_FRACTION * memory.available_memory())
    if need <= limit:
        return None
    source = "the given limit" if memory_limit is not None else f"{MEMORY_FRACTION:.0%} of the available memory"
    return (f"depth {depth} skipped: one forward and backward pass needs about {memory.readable(need)} "
            f"(batch {batch_size}, width {width}, {image_size}x{image_size}), more than {memory.readable(limit)} "
            f"({source})")


# -- measuring -------------------------------------------------------------------

@dataclass
class Measurement:
    """One network's pass: ``profile`` (layer, module, grad_norm, weight_norm, scaled),
    ``stream`` (block, variance), the ``loss`` and the classifier's gradient and weight norms."""

    profile: pd.DataFrame
    stream: pd.DataFrame
    loss: float
    classifier_grad_norm: float
    classifier_weight_norm: float


def measure_network(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Measurement:
    """One forward and backward pass of cross-entropy in train mode, recorded (module docstring).

    ``model`` is a :class:`~analysis.models.ResNet`. Convs are numbered by the
    order they run in (layer 1 is the stem conv); those inside a block's
    ``shortcut`` are left out. Variances are over all elements, in float64.
    """
    order: dict[str, int] = {}
    variances: list[float] = []

    def record_conv(name: str):
        def hook(_m, _i, _o) -> None:
            order.setdefault(name, len(order))
        return hook

    def record_variance(_m, _i, output: torch.Tensor) -> None:
        variances.append(float(output.detach().double().var(correction=0)))

    convs = {name: m for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and ".shortcut." not in f".{name}."}
    handles = [m.register_forward_hook(record_conv(name)) for name, m in convs.items()]
    handles += [model.stem.register_forward_hook(record_variance)]
    handles += [block.register_forward_hook(record_variance) for stage in model.stages for block in stage]
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    names = sorted(order, key=order.get)
    grads = [_norm(convs[name].weight.grad) for name in names]
    weights = [_norm(convs[name].weight) for name in names]
    profile = pd.DataFrame({"layer": np.arange(1, len(names) + 1), "module": names, "grad_norm": grads,
                            "weight_norm": weights})
    profile["scaled"] = profile["grad_norm"] * profile["weight_norm"]
    stream = pd.DataFrame({"block": np.arange(len(variances)), "variance": variances})
    return Measurement(profile, stream, float(loss.detach()), _norm(model.fc.weight.grad), _norm(model.fc.weight))


def _norm(tensor: torch.Tensor | None) -> float:
    return float(tensor.detach().norm()) if tensor is not None else math.nan


@dataclass
class InitStudy:
    """Tidy frames of a study: ``profiles`` (per layer), ``stream`` (per block, with ``kind``),
    ``networks`` (per network: loss, classifier norms, ``finite``), the ``skipped`` depths
    with their reasons, and the wall-clock ``seconds`` of the measuring."""

    profiles: pd.DataFrame
    stream: pd.DataFrame
    networks: pd.DataFrame
    skipped: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


def run_init_study(depths: Sequence[int], variants: Sequence[str], norms: Sequence[str], seeds: Sequence[int],
                   *, batch_size: int = 16, width: int = 8, image_size: int = 32,
                   memory_limit: int | None = None) -> InitStudy:
    """Measure every (depth, variant, norm, seed) network at initialisation (module docstring).

    ``variants`` are 'residual' and/or 'plain'. The batch of a seed is the first
    batch of ``Data.train_batches(batch_size, seed=seed)`` of the synthetic data
    (data seed :data:`DATA_SEED`). Depths that fail :func:`memory_check` are skipped.
    """
    start = time.perf_counter()
    data = load_data("synthetic", seed=DATA_SEED, image_size=image_size)
    skipped = {d: reason for d in depths if (reason := memory_check(
        d, batch_size=batch_size, width=width, image_size=image_size, memory_limit=memory_limit))}
    measured = [d for d in depths if d not in skipped]
    profiles, streams, networks = [], [], []
    for seed in seeds:
        images, labels = next(data.train_batches(batch_size, seed=seed))
        for depth, variant, norm in itertools.product(measured, variants, norms):
            torch.manual_seed(seed)
            model = build_model(depth, residual=variant == "residual", norm=norm, width=width,
                                num_classes=data.num_classes, in_channels=data.in_channels)
            found = measure_network(model, images, labels)
            keys = {"depth": depth, "variant": variant, "norm": norm, "seed": seed}
            profiles.append(found.profile.assign(**keys))
            streams.append(found.stream.assign(**keys, kind=STREAM if variant == "residual" else BLOCK_OUTPUT))
            values = [found.loss, found.classifier_grad_norm, *found.profile["grad_norm"], *found.stream["variance"]]
            networks.append({**keys, "n_layers": len(found.profile), "n_blocks": len(found.stream) - 1,
                             "loss": found.loss, "classifier_grad_norm": found.classifier_grad_norm,
                             "classifier_weight_norm": found.classifier_weight_norm,
                             "finite": bool(np.isfinite(values).all())})
    return InitStudy(_frame(profiles, ["layer", "module", "grad_norm", "weight_norm", "scaled"]),
                     _frame(streams, ["block", "kind", "variance"]),
                     pd.DataFrame(networks, columns=[*KEYS, "n_layers", "n_blocks", "loss", "classifier_grad_norm",
                                                     "classifier_weight_norm", "finite"]),
                     skipped, time.perf_counter() - start)


def run_study(params: InitParams, *, memory_limit: int | None = None) -> InitStudy:
    """Set the torch threads and run :func:`run_init_study` with the notebook's parameters."""
    if params.threads is not None:
        torch.set_num_threads(params.threads)
    return run_init_study(params.depth_list, params.variant_names, params.norms, params.seeds,
                          batch_size=params.batch_size, width=params.width, image_size=params.image_size,
                          memory_limit=memory_limit)


def _frame(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(columns=[*KEYS, *columns])
    return pd.concat(parts, ignore_index=True)[[*KEYS, *columns]]


# -- tables ----------------------------------------------------------------------

def init_summary(profiles: pd.DataFrame, networks: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (depth, variant, norm, seed): gradient flow of its profile by :mod:`analysis.gradient_flow`.

    Columns: ``n_layers``, ``ratio`` (first-to-last), ``growth`` and ``r2`` (the
    geometric fit), the same three for ``g * ||W||`` as ``scaled_*``, and the
    wording ``direction`` / ``scaled_direction``; with ``networks``, also its
    ``loss``, ``classifier_grad_norm`` and ``finite``.
    """
    rows = []
    for group, profile in profiles.sort_values([*KEYS, "layer"]).groupby(KEYS, sort=True):
        grad, scaled = profile["grad_norm"].to_numpy(float), profile["scaled"].to_numpy(float)
        fit, scaled_fit = fit_growth(grad), fit_growth(scaled)
        rows.append({**dict(zip(KEYS, group)), "n_layers": len(grad), "ratio": first_to_last(grad),
                     "growth": fit.factor, "r2": fit.r2, "scaled_ratio": first_to_last(scaled),
                     "scaled_growth": scaled_fit.factor, "scaled_r2": scaled_fit.r2,
                     "direction": direction(fit), "scaled_direction": direction(scaled_fit)})
    summary = pd.DataFrame(rows, columns=[*KEYS, "n_layers", "ratio", "growth", "r2", "scaled_ratio",
                                          "scaled_growth", "scaled_r2", "direction", "scaled_direction"])
    if networks is not None:
        summary = summary.merge(networks[[*KEYS, "loss", "classifier_grad_norm", "finite"]], on=KEYS, how="left")
    return summary


def variance_growth_per_block(stream: pd.DataFrame) -> pd.DataFrame:
    """Per (depth, variant, norm, seed): how the block-output variance grows from block 0 to the last.

    ``total_growth`` = var_last / var_0 and ``growth_per_block`` = its geometric
    mean per block, (var_last / var_0) ** (1 / n_blocks); ``theory_total`` and
    ``theory_per_block`` are De & Smith's references relative to block 0: 2^n
    without normalization, n + 1 with batch norm. Non-finite stays NaN or inf.
    """
    rows = []
    for group, part in stream.sort_values([*KEYS, "block"]).groupby(KEYS, sort=True):
        keys = dict(zip(KEYS, group))
        variance = part["variance"].to_numpy(float)
        n = len(variance) - 1
        with np.errstate(all="ignore"):
            total = variance[-1] / variance[0] if n >= 1 else np.nan
            theory = np.exp2(float(n)) if keys["norm"] == "none" else n + 1.0
            rows.append({**keys, "kind": part["kind"].iloc[0], "n_blocks": n, "variance_0": variance[0],
                         "variance_last": variance[-1], "total_growth": float(total),
                         "growth_per_block": float(total ** (1 / n)) if n >= 1 else math.nan,
                         "theory_total": float(theory),
                         "theory_per_block": float(theory ** (1 / n)) if n >= 1 else math.nan})
    return pd.DataFrame(rows, columns=[*KEYS, "kind", "n_blocks", "variance_0", "variance_last", "total_growth",
                                       "growth_per_block", "theory_total", "theory_per_block"])


def theory_lines(n_blocks: int) -> pd.DataFrame:
    """De & Smith's references for blocks 0..n_blocks, relative to block 0: ``no_norm`` 2^k, ``batch_norm`` k + 1."""
    k = np.arange(n_blocks + 1, dtype=float)
    return pd.DataFrame({"block": k.astype(int), "no_norm": np.exp2(k), "batch_norm": k + 1})


def init_numbers(summary: pd.DataFrame, stream: pd.DataFrame, *,
                 skipped: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Plain JSON for the report; every non-finite number (NaN, inf) is written as None.

    - ``grad_ratio_init`` / ``grad_growth_init``: {variant: {depth: mean over
      seeds of the first-to-last ratio / fitted growth factor}} with batch norm;
      ``grad_ratio_init_no_norm`` / ``grad_growth_init_no_norm`` without.
    - ``no_norm_variance_growth_per_block``: {variant: arithmetic mean, over
      every (depth, seed) measured without normalization, of that network's
      geometric-mean factor per block (var_last / var_0) ** (1 / n_blocks)}
      (theory: 2, ``no_norm_variance_growth_theory``).
    - ``batch_norm_variance_growth``: {variant: {depth: mean over seeds of
      var_last / var_0}} with batch norm (theory: n_blocks + 1, per depth in
      ``batch_norm_variance_growth_theory``).

    Means are plain means: one non-finite seed makes its mean None. Plain
    networks' values are of block outputs, not of a residual stream. Depth keys
    are strings (JSON); ``skipped`` maps each skipped depth to its reason.
    """
    growth = variance_growth_per_block(stream)

    def by_depth(frame: pd.DataFrame, norm: str, column: str) -> dict[str, dict[str, float | None]]:
        mine = frame[frame["norm"] == norm]
        return {variant: {str(depth): to_json_value(values.mean(skipna=False)) for depth, values in
                          mine[mine["variant"] == variant].groupby("depth")[column]}
                for variant in variants_in(mine)}

    no_norm = growth[growth["norm"] == "none"]
    batch = growth[growth["norm"] == "batch"]
    return {
        "grad_ratio_init": by_depth(summary, "batch", "ratio"),
        "grad_ratio_init_no_norm": by_depth(summary, "none", "ratio"),
        "grad_growth_init": by_depth(summary, "batch", "growth"),
        "grad_growth_init_no_norm": by_depth(summary, "none", "growth"),
        "no_norm_variance_growth_per_block": {
            variant: to_json_value(no_norm.loc[no_norm["variant"] == variant, "growth_per_block"].mean(skipna=False))
            for variant in variants_in(no_norm)},
        "no_norm_variance_growth_theory": 2.0,
        "batch_norm_variance_growth": by_depth(growth, "batch", "total_growth"),
        "batch_norm_variance_growth_theory": {str(d): float(n + 1) for d, n in
                                              batch.groupby("depth")["n_blocks"].first().items()},
        "seeds": sorted(int(s) for s in summary["seed"].unique()),
        "skipped": {str(d): reason for d, reason in (skipped or {}).items()},
    }


# -- sentences -------------------------------------------------------------------

def init_sentences(summary: pd.DataFrame, stream: pd.DataFrame, *,
                   skipped: Mapping[int, str] | None = None) -> list[str]:
    """Sentences computed only from the numbers, in :func:`analysis.gradient_flow.direction` wording.

    Per (variant, norm) at the deepest depth: the gradient's direction and
    fitted factor; per norm: which variant's first-to-last ratio is further
    from 1; the variance growth of the residual stream against De & Smith's
    references; non-finite networks and skipped depths. A statement across
    seeds is made only if it holds for every seed, otherwise it is called unresolved.
    """
    sentences = []
    growth = variance_growth_per_block(stream)
    norms = [n for n in NORMS if n in set(summary["norm"])]
    if len(summary):
        deepest = int(summary["depth"].max())
        for norm in norms:
            for variant in variants_in(summary):
                rows = summary[(summary["depth"] == deepest) & (summary["variant"] == variant)
                               & (summary["norm"] == norm)]
                if len(rows):
                    sentences.append(_flow_sentence(rows, variant, norm, deepest))
        for norm in norms:
            if {"residual", "plain"} <= set(summary["variant"]):
                sentences.append(_ratio_comparison(summary[summary["norm"] == norm], norm))
    sentences += _variance_sentences(growth)
    if "finite" in summary:
        bad = summary[~summary["finite"].astype(bool)]
        if len(bad):
            parts = [f"{variant} {_NORM_WORDS[norm]} at depth {depth} (seeds {_join(rows['seed'])})"
                     for (depth, variant, norm), rows in bad.groupby(["depth", "variant", "norm"])]
            sentences.append(f"Non-finite values (kept as NaN/inf, overflow): {'; '.join(parts)}.")
        else:
            sentences.append("Every recorded value is finite.")
    sentences += [f"{reason}." for reason in (skipped or {}).values()]
    return sentences


def _flow_sentence(rows: pd.DataFrame, variant: str, norm: str, depth: int) -> str:
    """The gradient's direction and fitted factor of one network over its seeds."""
    head = f"At initialisation, the {variant} network {_NORM_WORDS[norm]} at depth {depth}"
    rows = rows.sort_values("seed")
    if not rows["growth"].map(math.isfinite).all():
        bad = rows.loc[~rows["growth"].map(math.isfinite), "seed"]
        return f"{head}: no growth factor could be fitted for seeds {_join(bad)} (zero or non-finite gradient norms)."
    factor = f"fitted factor {rows['growth'].mean():.4g} per layer (r2 {rows['r2'].mean():.2f})"
    if len(rows) > 1:
        factor += (f", means over {len(rows)} seeds (factor {rows['growth'].min():.4g} to "
                   f"{rows['growth'].max():.4g}, r2 {rows['r2'].min():.2f} to {rows['r2'].max():.2f})")
    directions = list(dict.fromkeys(rows["direction"]))
    if len(directions) == 1:
        seeds = " for every seed" if len(rows) > 1 else ""
        return f"{head}: gradient {directions[0]}{seeds}, {factor}."
    each = ", ".join(f"{d} for seed {s}" for s, d in zip(rows["seed"], rows["direction"]))
    return f"{head}: direction unresolved across seeds ({each}), {factor}."


def _ratio_comparison(summary: pd.DataFrame, norm: str) -> str:
    """Which variant's first-to-last ratio is further from 1 (log scale), depth by depth, across seeds."""
    distance = summary.assign(distance=np.abs(np.log(summary["ratio"].astype(float))))
    buckets = _every_seed(distance, "variant", "plain", "residual", "distance")
    return _bucket_sentence(
        f"{_NORM_WORDS[norm].capitalize()}, which first-to-last gradient ratio is further from 1 (log scale)",
        {"plain": "the plain network's", "residual": "the residual network's"}, buckets)


def _variance_sentences(growth: pd.DataFrame) -> list[str]:
    """Variance growth per block without normalization, end-to-end with batch norm, and their comparison."""
    sentences = []
    no_norm, batch = growth[growth["norm"] == "none"], growth[growth["norm"] == "batch"]
    for variant in variants_in(no_norm):
        rows = no_norm[no_norm["variant"] == variant]
        mean = rows["growth_per_block"].mean(skipna=False)
        what = "the residual stream's variance" if variant == "residual" else \
            "the variance of the plain network's block outputs (no residual stream)"
        scope = (f"geometric mean per network, mean over {_depths(sorted(rows['depth'].unique()))} "
                 f"and {_count(rows['seed'].nunique(), 'seed')}")
        if math.isfinite(mean):
            sentences.append(f"Without normalization, {what} changes by a factor of {mean:.3g} per block "
                             f"({scope}; De & Smith's reference: 2).")
        else:
            sentences.append(f"Without normalization, {what} per block is not finite for some network ({scope}).")
    if len(batch):
        deepest = int(batch["depth"].max())
        for variant in variants_in(batch):
            rows = batch[(batch["variant"] == variant) & (batch["depth"] == deepest)]
            what = "the residual stream's variance" if variant == "residual" else \
                "the variance of the plain network's block output (no residual stream)"
            sentences.append(f"With batch norm at depth {deepest}, {what} after the last of "
                             f"{int(rows['n_blocks'].iloc[0])} blocks is {_range(rows['total_growth'], '.3g')} "
                             f"times the stem's (De & Smith's linear reference: {rows['theory_total'].iloc[0]:.0f}).")
    residual = growth[growth["variant"] == "residual"]
    if {"none", "batch"} <= set(residual["norm"]):
        buckets = _every_seed(residual, "norm", "none", "batch", "growth_per_block")
        sentences.append(_bucket_sentence(
            "Where the residual stream's variance grows faster per block",
            {"none": "without normalization", "batch": "with batch norm"}, buckets))
    return sentences


def _every_seed(frame: pd.DataFrame, column: str, first: str, second: str, value: str) -> dict[str, list[int]]:
    """Depths by :func:`analysis.frames.holds_for_every_seed` of ``first``'s ``value`` > ``second``'s:
    ``first`` (for every seed), ``second`` (not larger for any seed) or 'unresolved'."""
    buckets: dict[str, list[int]] = {first: [], second: [], "unresolved": []}
    for depth, rows in frame.groupby("depth", sort=True):
        pivot = rows.pivot_table(index="seed", columns=column, values=value, aggfunc="first", dropna=False)
        pivot = pivot.reindex(columns=[first, second])
        holds = holds_for_every_seed(pivot[first].to_numpy(float), pivot[second].to_numpy(float))
        buckets[{True: first, False: second, None: "unresolved"}[holds]].append(int(depth))
    return buckets


def _bucket_sentence(head: str, wording: Mapping[str, str], buckets: Mapping[str, list[int]]) -> str:
    """'head: A for every seed at depths ...; B for every seed at ...; unresolved (...) at ...'."""
    parts = [f"{wording[key]} for every seed at {_depths(depths)}"
             for key, depths in buckets.items() if key in wording and depths]
    if buckets["unresolved"]:
        parts.append(f"unresolved (not so for every seed, or not finite) at {_depths(buckets['unresolved'])}")
    return f"{head}: {'; '.join(parts)}."


def _range(values: pd.Series, spec: str) -> str:
    """One value, or 'mean (min to max over n seeds)'."""
    values = values.astype(float)
    if len(values) == 1:
        return format(values.iloc[0], spec)
    return (f"{format(values.mean(), spec)} ({format(values.min(), spec)} to {format(values.max(), spec)} "
            f"over {len(values)} seeds)")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _depths(depths: Sequence[int]) -> str:
    return f"depth {depths[0]}" if len(depths) == 1 else f"depths {_join(depths)}"


def _join(values: Sequence[Any]) -> str:
    return ", ".join(str(int(v)) for v in sorted(set(values)))


# -- figures ---------------------------------------------------------------------

def profile_figure(profiles: pd.DataFrame, depths: Sequence[int] | None = None) -> Figure:
    """Weight-gradient norm per main-path conv (forward order), log y: rows are depths, columns norms."""
    depths = list(depths) if depths is not None else pick_steps(profiles["depth"], 3)
    norms = [n for n in NORMS if n in set(profiles["norm"])]
    fig, axes = _grid(len(depths), len(norms), "Weight-gradient norm per layer at initialisation (seed range)")
    for (depth, norm), ax in zip([(d, n) for d in depths for n in norms], axes.flat):
        rows, dropped = _positive(profiles[(profiles["depth"] == depth) & (profiles["norm"] == norm)], "grad_norm")
        _lines(ax, rows, "layer", "grad_norm", f"depth {depth}, {_NORM_TITLES[norm]}", dropped)
        ax.set(yscale="log", xlabel="conv layer (forward order)", ylabel="||dL/dW|| (log)")
    return fig


def ratio_figure(summary: pd.DataFrame) -> Figure:
    """First-to-last gradient ratio against depth (log-log), residual vs plain, one panel per norm."""
    return _by_depth(summary, "ratio", "first-to-last ratio g_1 / g_L (log)",
                     "First-to-last weight-gradient ratio at initialisation", log_y=True)


def growth_figure(summary: pd.DataFrame) -> Figure:
    """Fitted gradient growth factor per layer (towards the input) against depth, one panel per norm."""
    return _by_depth(summary, "growth", "fitted factor per layer towards the input",
                     "Fitted gradient growth factor at initialisation", log_y=False)


def stream_figure(stream: pd.DataFrame, depths: Sequence[int] | None = None) -> Figure:
    """Block-output variance relative to the stem's (block 0), log y, with De & Smith's 2^k and k + 1.

    Rows are depths, columns norms; residual lines are the residual stream,
    plain ones block outputs of a network that has no stream.
    """
    depths = list(depths) if depths is not None else pick_steps(stream["depth"], 3)
    norms = [n for n in NORMS if n in set(stream["norm"])]
    relative = stream.assign(relative=stream["variance"] / stream.groupby(KEYS)["variance"].transform("first"))
    fig, axes = _grid(len(depths), len(norms), "Variance of block outputs relative to the stem (block 0), seed range")
    for (depth, norm), ax in zip([(d, n) for d in depths for n in norms], axes.flat):
        rows, dropped = _positive(relative[(relative["depth"] == depth) & (relative["norm"] == norm)], "relative")
        rows = rows.assign(variant=rows["variant"].map({"residual": "residual (stream)",
                                                        "plain": "plain (block outputs, no stream)"}))
        palette = {"residual (stream)": PALETTE["residual"], "plain (block outputs, no stream)": PALETTE["plain"]}
        _lines(ax, rows, "block", "relative", f"depth {depth}, {_NORM_TITLES[norm]}", dropped, palette=palette)
        if len(rows):
            theory = theory_lines(int(rows["block"].max()))
            column, label = ("no_norm", "2^k (De & Smith, no norm)") if norm == "none" else \
                ("batch_norm", "k + 1 (De & Smith, batch norm)")
            finite = theory[np.isfinite(theory[column])]
            ax.plot(finite["block"], finite[column], color="grey", linestyle="--", label=label)
            ax.legend(fontsize="small")
        ax.set(yscale="log", xlabel="block k (0: stem)", ylabel="variance / variance of block 0 (log)")
    return fig


def _by_depth(summary: pd.DataFrame, column: str, ylabel: str, title: str, *, log_y: bool) -> Figure:
    norms = [n for n in NORMS if n in set(summary["norm"])]
    fig, axes = _grid(1, len(norms), f"{title} (seed range)")
    depths = sorted(int(d) for d in summary["depth"].unique())
    for norm, ax in zip(norms, axes.flat):
        rows, dropped = _positive(summary[summary["norm"] == norm], column)
        _lines(ax, rows, "depth", column, _NORM_TITLES[norm], dropped, marker="o")
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set(xscale="log", xlabel="depth (log)", ylabel=ylabel, yscale="log" if log_y else "linear")
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.xaxis.set_minor_locator(NullLocator())
    return fig


def _lines(ax, rows: pd.DataFrame, x: str, y: str, title: str, dropped: int, *,
           palette: Mapping[str, str] | None = None, marker: str | None = None) -> None:
    """Mean line per variant with the seed range as a band; says how many values were left out."""
    note = f" ({dropped} non-finite or non-positive left out)" if dropped else ""
    ax.set_title(f"{title}{note}", fontsize="medium")
    if rows.empty:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    palette = palette or {v: PALETTE.get(v, "grey") for v in variants_in(rows)}
    sns.lineplot(data=rows, x=x, y=y, hue="variant", hue_order=[h for h in palette if h in set(rows["variant"])],
                 palette=palette, errorbar=SEED_BAND, marker=marker, ax=ax)


def _positive(rows: pd.DataFrame, column: str) -> tuple[pd.DataFrame, int]:
    """Rows whose ``column`` is finite and positive (drawable on a log axis), and how many were dropped."""
    keep = np.isfinite(rows[column].astype(float)) & (rows[column].astype(float) > 0)
    return rows[keep], int((~keep).sum())


def _grid(nrows: int, ncols: int, title: str) -> tuple[Figure, np.ndarray]:
    """A titled figure of panels; with no panels to draw, one that says nothing was measured."""
    fig = Figure(figsize=(5.5 * max(1, ncols), 3.8 * max(1, nrows)), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(max(1, nrows), max(1, ncols), squeeze=False)
    if not nrows or not ncols:
        axes[0, 0].text(0.5, 0.5, "nothing measured", ha="center", va="center", color="grey")
    return fig, axes
