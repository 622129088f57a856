"""Findings of a depth study: values per run, their spread over seeds, and sentences that carry them.

:func:`compute_findings` returns a :class:`Findings` whose ``per_run`` table
has one row per variant and seed (the values of :data:`analysis.outcomes.VALUES`),
whose ``table`` gives each value's mean, spread and n per variant, and whose
``sentences`` are built only from those numbers. A comparison between the
variants is stated as holding only when it holds for every seed; otherwise
it is called unresolved at this budget. ``to_json()`` is the study's
``findings.json`` (the same shape as the report's ``summary.json``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis import gradient_flow
from analysis.frames import TRAIN_WINDOW, holds_for_every_seed, paired_by_seed, spread, to_json_value, variants_in
from analysis.outcomes import VALUES, group_records, run_values

SPREAD_COLUMNS = ("mean", "sd", "min", "max", "n")


class Sentences(list):
    """Sentences that a notebook shows as a markdown bullet list."""

    def _repr_markdown_(self) -> str:
        return "\n".join(f"- {sentence}" for sentence in self)


@dataclass(repr=False)
class Findings:
    """``per_run`` values, their ``table`` over seeds, ``comparison`` between variants and the ``sentences``."""

    per_run: pd.DataFrame
    table: pd.DataFrame
    comparison: dict[str, Any] = field(default_factory=dict)
    sentences: list[str] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The sentences as a markdown bullet list."""
        return "\n".join(f"- {sentence}" for sentence in self.sentences)

    def to_json(self) -> dict[str, Any]:
        """``{"varying": ["variant"], "groups": [...], "comparison": {...}, "sentences": [...]}`` as plain JSON."""
        return to_json_value({"varying": ["variant"] if len(self.groups) > 1 else [], "groups": self.groups,
                              "comparison": self.comparison, "sentences": self.sentences})

    def __repr__(self) -> str:
        return self.to_markdown()

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def compute_findings(runs: pd.DataFrame, metrics: pd.DataFrame, stats: pd.DataFrame, *,
                     responses: pd.DataFrame | None = None,
                     settings: pd.DataFrame | None = None) -> Findings:
    """Values, spread and sentences of a study.

    ``runs`` has one row per run (``run_id, variant, seed, status,
    diverged_step``); ``metrics``, ``stats`` (and ``responses``, the trained
    networks' layer-response stds) are tidy frames with a ``run_id`` column.
    ``settings`` (one row per run id, the configuration's settings) fills the
    groups of :meth:`Findings.to_json`; by default they hold the variant only.
    """
    values = run_values(runs, metrics, stats)
    columns = ["variant", "seed", "run_id", "status", "diverged_step", "diverged_layer"]
    per_run = runs.reindex(columns=columns).merge(values, on="run_id")
    per_run["response_std_median"] = _median_response(per_run["run_id"], responses)
    per_run = per_run.sort_values(["variant", "seed"], key=_variant_first).reset_index(drop=True)
    table = _spread_table(per_run)
    comparison = _compare(per_run)
    group_source = (settings if settings is not None else runs[["run_id", "variant"]]).merge(
        runs[["run_id", "seed"]], on="run_id")
    names = [name for name in group_source.columns if name not in ("run_id", "seed")]
    groups = group_records(group_source, values, names)
    return Findings(per_run, table, comparison, _sentences(per_run, table, comparison), groups)


def study_findings(result: Any) -> Findings:
    """:func:`compute_findings` for an :class:`analysis.study.StudyResult`."""
    from analysis.study import settings_frame

    return compute_findings(result.runs, result.metrics, result.stats, responses=result.responses,
                            settings=settings_frame(result))


def _variant_first(column: pd.Series) -> pd.Series:
    if column.name == "variant":
        return column.map({"residual": 0, "plain": 1}).fillna(2)
    return column


def _median_response(run_ids: pd.Series, responses: pd.DataFrame | None) -> list[float]:
    """Median over layers of each run's trained-network response std (NaN without responses)."""
    if responses is None or responses.empty:
        return [math.nan] * len(run_ids)
    medians = responses.groupby("run_id")["std"].median()
    return [float(medians.get(run_id, math.nan)) for run_id in run_ids]


def _spread_table(per_run: pd.DataFrame) -> pd.DataFrame:
    """Rows (variant, value name), columns mean, sd, min, max, n (``diverged``: the count as its mean x n)."""
    rows = {}
    for variant in variants_in(per_run):
        mine = per_run[per_run["variant"] == variant]
        for name in [*VALUES, "response_std_median"]:
            summary = spread(mine[name])
            rows[(variant, name)] = {column: summary[column] for column in SPREAD_COLUMNS}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(SPREAD_COLUMNS))
    table.index.names = ["variant", "value"]
    return table


def _compare(per_run: pd.DataFrame) -> dict[str, Any]:
    """Plain against residual, per seed: which ended with the higher train loss, and the gaps."""
    plain, residual = paired_by_seed(per_run, "final_train_loss")
    if not plain:
        return {}
    gaps = [p - r for p, r in zip(plain, residual)]
    comparison: dict[str, Any] = {"n_seeds": len(plain), "loss_gap": spread(gaps),
                                  "plain_loss_higher": holds_for_every_seed(plain, residual),
                                  "seeds_plain_higher": int(sum(p > r for p, r in zip(plain, residual)))}
    plain_acc, residual_acc = paired_by_seed(per_run, "final_val_accuracy")
    comparison["val_accuracy_gap"] = spread([r - p for p, r in zip(plain_acc, residual_acc)])
    return comparison


# -- sentences ------------------------------------------------------------------

def _number(value: float | None, digits: int = 3) -> str:
    """3 significant digits; 'n/a' when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _spread_text(table: pd.DataFrame, variant: str, name: str, form=_number) -> str:
    """'0.512 (range 0.49 to 0.53, sd 0.02)': mean with min-max, and sd where n >= 3."""
    row = table.loc[(variant, name)]
    if row["n"] <= 1 or np.isclose(row["min"], row["max"], rtol=1e-9, atol=0):
        return form(row["mean"])
    text = f"{form(row['mean'])} (range {form(row['min'])} to {form(row['max'])}"
    return text + (f", sd {form(row['sd'])})" if row["n"] >= 3 else ")")


def _seeds_text(n: int) -> str:
    return "one seed" if n == 1 else f"{n} seeds"


def _sentences(per_run: pd.DataFrame, table: pd.DataFrame, comparison: dict[str, Any]) -> list[str]:
    sentences = []
    for variant in variants_in(per_run):
        mine = per_run[per_run["variant"] == variant]
        diverged = mine[mine["status"] == "diverged"]
        if len(diverged):
            where = "; ".join(_divergence(row) for row in diverged.itertuples())
            sentences.append(f"The {variant} network diverged in {len(diverged)} of {len(mine)} seeds: {where}.")
    for variant in variants_in(per_run):
        n = int(table.loc[(variant, "final_train_loss"), "n"])
        sentences.append(
            f"The {variant} network ({_seeds_text(n)}) ended with a train loss of "
            f"{_spread_text(table, variant, 'final_train_loss')} over its last {TRAIN_WINDOW} steps and a "
            f"validation accuracy of {_spread_text(table, variant, 'final_val_accuracy', _percent)}.")
    if comparison:
        sentences.append(_loss_comparison(comparison))
    for end, label in (("init", "At the first recorded step (initialisation)"),
                       ("final", "At the last recorded step")):
        for variant in variants_in(per_run):
            sentence = _flow_sentence(per_run, table, variant, end, label)
            if sentence:
                sentences.append(sentence)
    for variant in variants_in(per_run):
        if not math.isnan(table.loc[(variant, "update_ratio_peak_lr"), "mean"]):
            sentences.append(
                f"At the recorded step with the highest learning rate ({_number(table.loc[(variant, 'peak_lr'), 'mean'])}), "
                f"the median layer of the {variant} network changed its weights by "
                f"{_spread_text(table, variant, 'update_ratio_peak_lr')} of their norm in one update.")
    for variant in variants_in(per_run):
        if not math.isnan(table.loc[(variant, "dead_fraction_final"), "mean"]):
            sentences.append(
                f"At the last recorded step, {_spread_text(table, variant, 'dead_fraction_final', _percent)} of the "
                f"{variant} network's ReLU channels were dead on average over its layers.")
    if "residual" in variants_in(per_run) and not math.isnan(table.loc[("residual", "block_ratio_final"), "mean"]):
        ratio = table.loc[("residual", "block_ratio_final")]
        where = ("below 1 in every seed: the blocks stay close to the identity" if ratio["max"] < 1
                 else "above 1 in every seed" if ratio["min"] > 1 else "on both sides of 1 across seeds")
        sentences.append(f"At the last recorded step the median residual block's branch output had "
                         f"{_spread_text(table, 'residual', 'block_ratio_final')} times the norm of its shortcut, "
                         f"{where}.")
    response = _response_sentence(per_run, table)
    if response:
        sentences.append(response)
    return sentences or ["No metrics were recorded."]


def _divergence(run: Any) -> str:
    """'seed 1: non-finite loss at step 17, first non-finite output in stages.0.1.branch.3'."""
    step = f"step {int(run.diverged_step)}" if pd.notna(run.diverged_step) else "an unrecorded step"
    layer = getattr(run, "diverged_layer", None)
    where = (f", first non-finite output in {layer}" if isinstance(layer, str) and layer != "loss" else
             ", every layer's output still finite (the loss overflowed)" if layer == "loss" else "")
    return f"seed {run.seed}: non-finite loss at {step}{where}"


def _loss_comparison(comparison: dict[str, Any]) -> str:
    n, higher = comparison["n_seeds"], comparison["plain_loss_higher"]
    gap = comparison["loss_gap"]
    gap_text = _number(gap["mean"]) + (f" (range {_number(gap['min'])} to {_number(gap['max'])})" if n > 1 else "")
    if higher is None:
        return (f"Unresolved at this budget: the plain network ended with the higher train loss in "
                f"{comparison['seeds_plain_higher']} of {n} seeds (plain minus residual: {gap_text}).")
    qualifier = "in the one seed run (not yet a conclusion)" if n == 1 else f"in every one of {n} seeds"
    outcome = "the plain network ended with the higher train loss" if higher else \
        "the residual network ended with a train loss at least as high as the plain one"
    return f"{outcome[0].upper()}{outcome[1:]} {qualifier}: plain minus residual {gap_text}."


def _flow_sentence(per_run: pd.DataFrame, table: pd.DataFrame, variant: str, end: str, label: str) -> str | None:
    mine = per_run[per_run["variant"] == variant]
    fits = [gradient_flow.GrowthFit(factor, math.nan, int(layers))
            for factor, layers in zip(mine[f"grad_growth_{end}"], mine["n_layers"])]
    words = [gradient_flow.direction(fit) for fit in fits]
    if not any(words):
        return None
    counts = pd.Series([_verb(w) for w in words]).value_counts()
    if len(counts) == 1:
        how = f"{counts.index[0]} in {'the one seed' if len(words) == 1 else f'all {len(words)} seeds'}"
    else:
        how = "differs between seeds (" + ", ".join(f"{word} in {count}" for word, count in counts.items()) + ")"
    r2 = f"; fit r2 {_number(table.loc[(variant, 'grad_growth_r2_init'), 'mean'], 2)}" if end == "init" else ""
    return (f"{label}, the weight-gradient norm of the {variant} network's convolutions {how}: a fitted factor of "
            f"{_spread_text(table, variant, f'grad_growth_{end}')} per layer towards the input{r2}; the stem conv's "
            f"norm was {_spread_text(table, variant, f'grad_ratio_{end}')} times the last conv's; with "
            f"||g||·||W|| (which batch norm's scale invariance does not distort) the factor was "
            f"{_spread_text(table, variant, f'scaled_growth_{end}')}.")


def _verb(word: str) -> str:
    """A direction as a predicate: 'grows towards the input', 'is about flat', 'is unknown'."""
    return word if word in (gradient_flow.GROWS, gradient_flow.SHRINKS) else f"is {word or 'unknown'}"


def _response_sentence(per_run: pd.DataFrame, table: pd.DataFrame) -> str | None:
    plain, residual = paired_by_seed(per_run, "response_std_median")
    if not plain or any(np.isnan(plain + residual)):
        return None
    higher = holds_for_every_seed(plain, residual)
    order = ("larger in the plain network in every seed" if higher is True
             else "larger or equal in the residual network in every seed" if higher is False
             else "in an order that differs between seeds")
    return (f"In the trained networks (eval mode, a fixed validation batch), the median layer response std was "
            f"{_spread_text(table, 'residual', 'response_std_median')} in the residual network and "
            f"{_spread_text(table, 'plain', 'response_std_median')} in the plain one: {order}.")
