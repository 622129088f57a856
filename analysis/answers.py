"""The five questions the toolkit answers, each with numbers computed from the runs and studies at hand.

:func:`build_answers` reads a runs folder: the run table (every run's final
numbers, :mod:`analysis.summary`) and the ``findings.json`` of the newest
complete study of each kind (:mod:`analysis.studies`). Every answer is one to
three sentences built from those numbers, with ``numbers`` holding them and
``evidence`` linking the report pages they come from. A comparison is stated
as holding only when it holds for every seed; where the data do not settle a
question at this budget, or a study is missing, the answer says so.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from analysis.checks import shown
from analysis.frames import holds_for_every_seed, paired_by_seed, spread, to_json_value
from analysis.pages import SUMMARY_PAGE, study_page
from analysis.summary import with_configuration

QUESTIONS = {
    "q1": "Why are skip connections important?",
    "q2": "How do a residual block and a plain block differ?",
    "q3": "Why use 1x1 convolutions (bottleneck blocks)?",
    "q4": "How do ResNet-50 and ResNet-152 differ?",
    "q5": "Which optimizers and normalization help deep networks train?",
}
TRAINING_SETTINGS = ("norm", "init", "zero_init_residual", "optimizer", "schedule", "lr", "weight_decay",
                     "milestones", "warmup_steps")
"""The settings the normalization/optimizer comparison (q5) groups by, besides the variant."""


def latest_findings(studies: pd.DataFrame, kind: str) -> tuple[dict[str, Any] | None, str | None]:
    """The ``findings.json`` of the newest complete study of ``kind`` and its page, or (None, None)."""
    if studies.empty or "kind" not in studies:
        return None, None
    mine = studies[(studies["kind"] == kind) & (studies["status"] == "complete")]
    for row in mine.sort_values("end_time", ascending=False, na_position="last").itertuples():
        notebook = getattr(row, "notebook", None)
        if not isinstance(notebook, str):
            continue
        path = Path(notebook).parent / "findings.json"
        try:
            findings = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(findings, dict):
            return findings, study_page(row.study_id)
    return None, None


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def _complete(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs["status"] == "complete") & runs["variant"].notna() & runs["depth"].notna()]


def _configuration_key(runs: pd.DataFrame, names: list[str]) -> pd.Series:
    if not names:
        return pd.Series("", index=runs.index)
    return runs[names].map(repr).agg("|".join, axis=1)


def depth_configuration(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the configuration trained at the most depths (the depth study), all variants and seeds."""
    complete = _complete(with_configuration(runs))
    if complete.empty:
        return complete
    keys = complete["configuration"]
    depths = complete.groupby(keys)["depth"].nunique()
    chosen = depths.idxmax()
    return complete[keys == chosen] if depths.max() >= 2 else complete.iloc[:0]


def _loss_by_depth(runs: pd.DataFrame) -> dict[str, dict[str, float]]:
    return {variant: {str(int(depth)): float(values.mean()) for depth, values in
                      runs[runs["variant"] == variant].groupby("depth")["final_train_loss"]}
            for variant in ("residual", "plain") if variant in set(runs["variant"])}


def answer_q1(runs: pd.DataFrame, init: dict | None, lesion: dict | None, pages: dict[str, str | None]) -> dict:
    """Skip connections: final train loss against depth, gradients at initialisation, and lesions."""
    depth_runs = depth_configuration(runs)
    numbers: dict[str, Any] = {"final_train_loss_by_depth": _loss_by_depth(depth_runs)}
    sentences = []
    if depth_runs.empty:
        sentences.append("Not measured: no complete depth study with two or more depths in this runs folder.")
    else:
        deepest = int(depth_runs["depth"].max())
        plain, residual = paired_by_seed(depth_runs[depth_runs["depth"] == deepest], "final_train_loss")
        held = holds_for_every_seed(plain, residual)
        numbers["deepest"] = {"depth": deepest, "plain": spread(plain), "residual": spread(residual),
                              "plain_loss_higher_every_seed": held}
        losses = numbers["final_train_loss_by_depth"]
        trend = "; ".join(f"{variant} " + ", ".join(f"{_fmt(loss)} (depth {depth})" for depth, loss in
                                                   losses.get(variant, {}).items())
                          for variant in ("plain", "residual"))
        verdict = (f"at depth {deepest} the plain network ended above the residual one in every one of "
                   f"{len(plain)} seeds" if held else
                   f"at depth {deepest} the residual network ended at or above the plain one in every seed"
                   if held is False else
                   f"at depth {deepest} the order differs between seeds, so this budget does not settle it")
        sentences.append(f"Final train loss by depth (mean over seeds): {trend}; {verdict}.")
    if init is not None:
        ratios = init.get("grad_ratio_init", {})
        numbers["grad_ratio_init"] = ratios
        numbers["no_norm_variance_growth_per_block"] = init.get("no_norm_variance_growth_per_block", {})
        deepest = max((int(d) for d in ratios.get("plain", {})), default=None)
        if deepest is not None:
            growth = numbers["no_norm_variance_growth_per_block"]
            sentences.append(
                f"At initialisation with batch norm, the stem conv's gradient norm is "
                f"{_fmt(ratios['plain'].get(str(deepest)))} times the last conv's in the plain network at depth "
                f"{deepest} against {_fmt(ratios.get('residual', {}).get(str(deepest)))} in the residual one, and "
                f"without normalization the residual stream's variance grows by a factor of "
                f"{_fmt(growth.get('residual'))} per block (theory: 2).")
    else:
        sentences.append("The initialisation study has not been run.")
    sentences.append("The lesion study has not been run." if lesion is None else _lesion_sentence(lesion, numbers))
    return _question("q1", sentences, numbers, [SUMMARY_PAGE, pages.get("init"), pages.get("lesion")])


def answer_q2(runs: pd.DataFrame, lesion: dict | None, pages: dict[str, str | None]) -> dict:
    """Residual and plain blocks: branch-to-shortcut ratio, response size, and what deleting a block costs."""
    depth_runs = depth_configuration(runs)
    numbers: dict[str, Any] = {}
    sentences = []
    residual = depth_runs[depth_runs["variant"] == "residual"]
    if len(residual) and "block_ratio_final" in residual:
        numbers["block_ratio_final"] = spread(residual["block_ratio_final"].dropna())
        ratio = numbers["block_ratio_final"]
        sentences.append(
            f"A residual block computes relu(branch(x) + x) and a plain block relu(branch(x)); in the trained "
            f"residual networks the median branch output had {_fmt(ratio['mean'])} times the norm of its shortcut "
            f"(range {_fmt(ratio['min'])} to {_fmt(ratio['max'])} over {ratio['n']} runs), so each block "
            f"{'adds a small correction to its input' if ratio['max'] < 1 else 'changes its input by more than the input itself' if ratio['min'] > 1 else 'adds corrections of varying size'}.")
    else:
        sentences.append("Not measured: no complete residual runs with block statistics.")
    if lesion is not None:
        residual_points, plain_points = _lesion_points(lesion, numbers)
        skipped = (lesion.get("skipped") or {}).get("plain") or 0
        sentences.append(f"Deleting a single residual block (keeping its shortcut) raised the validation error by "
                         f"{residual_points} on average, deleting a plain block (replaced by the identity) by "
                         f"{plain_points}"
                         + (f"; {skipped} plain blocks change the shape and could not be deleted" if skipped else "")
                         + ".")
    return _question("q2", sentences, numbers, [SUMMARY_PAGE, pages.get("lesion"), pages.get("depth")])


def answer_q3(costs: dict | None, pages: dict[str, str | None]) -> dict:
    """Bottleneck blocks: parameters and multiply-accumulates against a basic block of the same width."""
    return _from_costs("q3", costs, pages, ("basic_block", "bottleneck_block"), _bottleneck_sentences)


def _bottleneck_sentences(numbers: dict[str, Any], costs: dict) -> list[str]:
    basic, bottleneck = numbers["basic_block"], numbers["bottleneck_block"]
    sentences = [f"At 256 channels in and out on a 56x56 input, a bottleneck block (1x1 down to 64, 3x3, 1x1 back "
                 f"to 256) has {_count(bottleneck.get('params'))} parameters and {_count(bottleneck.get('macs'))} "
                 f"multiply-accumulates against {_count(basic.get('params'))} and {_count(basic.get('macs'))} for a "
                 f"basic block of two 3x3 convolutions at 256 channels: "
                 f"{_fmt(_ratio(basic.get('macs'), bottleneck.get('macs')))} times fewer operations at the same "
                 f"input and output width."]
    trained = costs.get("trained")
    if isinstance(trained, dict) and trained:
        numbers["trained"] = trained
        sentences.append(_trained_sentence(trained))
    return sentences


def answer_q4(costs: dict | None, pages: dict[str, str | None]) -> dict:
    """ResNet-50 against ResNet-152: parameters, multiply-accumulates and blocks."""
    return _from_costs("q4", costs, pages, ("resnet50", "resnet152"), _family_sentences)


def _family_sentences(numbers: dict[str, Any], costs: dict) -> list[str]:
    r50, r152 = numbers["resnet50"], numbers["resnet152"]
    return [f"Both use bottleneck blocks in four stages; ResNet-152 has {r152.get('blocks')} blocks "
            f"({_stages(r152)} per stage) against {r50.get('blocks')} ({_stages(r50)}), "
            f"{_count(r152.get('params'))} parameters against {_count(r50.get('params'))} "
            f"({_fmt(_ratio(r152.get('params'), r50.get('params')))}x) and {_count(r152.get('macs'))} "
            f"multiply-accumulates per 224x224 image against {_count(r50.get('macs'))} "
            f"({_fmt(_ratio(r152.get('macs'), r50.get('macs')))}x)."]


def _from_costs(identifier: str, costs: dict | None, pages: dict[str, str | None], names: tuple[str, ...],
                sentences: Callable[[dict[str, Any], dict], list[str]]) -> dict:
    """A question answered from the architecture-cost study's numbers ``names`` (or saying it has not run)."""
    if costs is None:
        return _question(identifier, ["The architecture-cost study has not been run."], {}, [pages.get("costs")])
    numbers = {name: costs.get(name, {}) for name in names}
    return _question(identifier, sentences(numbers, costs), numbers, [pages.get("costs")])


def training_groups(runs: pd.DataFrame) -> tuple[int | None, list[dict[str, Any]]]:
    """The normalization/optimizer comparison: at the depth with the most configurations, one group per
    configuration of :data:`TRAINING_SETTINGS` and variant, with the final train loss over seeds and divergences."""
    usable = runs[runs["variant"].notna() & runs["depth"].notna() & runs["status"].isin(["complete", "diverged"])]
    if usable.empty:
        return None, []
    names = [name for name in TRAINING_SETTINGS if name in usable.columns]
    keys = _configuration_key(usable, names)
    counts = usable.assign(key=keys).groupby("depth")["key"].nunique()
    depth = int(counts.idxmax())
    at_depth = usable[usable["depth"] == depth]
    groups = []
    for (variant, _), rows in at_depth.groupby(["variant", keys[at_depth.index]], sort=True):
        first = rows.iloc[0]
        groups.append({"settings": {"variant": variant, **{name: to_json_value(first[name]) for name in names}},
                       "n_seeds": len(rows), "seeds": sorted(int(s) for s in rows["seed"]),
                       "final_train_loss": spread(rows.sort_values("seed")["final_train_loss"]),
                       "diverged": int((rows["status"] == "diverged").sum())})
    return depth, groups


def answer_q5(runs: pd.DataFrame, pages: dict[str, str | None]) -> dict:
    """Which configuration reached the lowest final train loss per variant, whether every seed agrees, divergences."""
    depth, groups = training_groups(runs)
    numbers: dict[str, Any] = {"depth": depth, "groups": groups}
    differing = [name for name in TRAINING_SETTINGS
                 if len({json.dumps(g["settings"].get(name)) for g in groups}) > 1]
    numbers["varying"] = differing
    if not differing:
        return _question("q5", ["Not measured: fewer than two training configurations at one depth."], numbers,
                         [SUMMARY_PAGE])
    defaults = study_defaults()

    def describe(settings: dict[str, Any]) -> str:
        """The settings that differ from the depth-study notebook's defaults."""
        changed = [f"{name}={settings.get(name)}" for name in differing
                   if to_json_value(settings.get(name)) != to_json_value(defaults.get(name))]
        return ", ".join(changed) or "the notebook's defaults"

    sentences = []
    for variant in ("residual", "plain"):
        mine = [g for g in groups if g["settings"]["variant"] == variant]
        finite = [g for g in mine if g["final_train_loss"]["mean"] is not None
                  and math.isfinite(g["final_train_loss"]["mean"])]
        if len(finite) < 2:
            continue
        ranked = sorted(finite, key=lambda g: g["final_train_loss"]["mean"])
        best, second, worst = ranked[0], ranked[1], ranked[-1]
        held = holds_for_every_seed(_values(second), _values(best)) if best["seeds"] == second["seeds"] else None
        diverged = [g for g in mine if g["diverged"]]
        sentences.append(
            f"At depth {depth}, the {variant} network ended with the lowest final train loss under "
            f"{describe(best['settings'])} ({_fmt(best['final_train_loss']['mean'])}, mean of {best['n_seeds']} seeds), "
            f"ahead of {describe(second['settings'])} ({_fmt(second['final_train_loss']['mean'])}) "
            + ("in every seed" if held else "but not in every seed (unresolved at this budget)")
            + (f"; the highest of its {len(mine)} configurations was {describe(worst['settings'])} "
               f"({_fmt(worst['final_train_loss']['mean'])})" if len(finite) > 2 else "")
            + (f"; {sum(g['diverged'] for g in diverged)} of its runs diverged "
               f"({'; '.join(describe(g['settings']) for g in diverged)})" if diverged else "; none diverged") + ".")
    return _question("q5", sentences, numbers, [SUMMARY_PAGE])


def build_answers(runs: pd.DataFrame, studies: pd.DataFrame) -> dict[str, Any]:
    """``{"questions": [{"id", "question", "answer", "evidence", "numbers"}, ...]}`` as plain JSON."""
    found = {kind: latest_findings(studies, kind) for kind in ("init", "lesion", "costs")}
    pages = {kind: page for kind, (_, page) in found.items()}
    pages["depth"] = _depth_page(studies)
    builders: dict[str, Callable[[], dict]] = {
        "q1": lambda: answer_q1(runs, found["init"][0], found["lesion"][0], pages),
        "q2": lambda: answer_q2(runs, found["lesion"][0], pages),
        "q3": lambda: answer_q3(found["costs"][0], pages),
        "q4": lambda: answer_q4(found["costs"][0], pages),
        "q5": lambda: answer_q5(runs, pages),
    }
    return to_json_value({"questions": [_answered(identifier, build) for identifier, build in builders.items()]})


def _answered(identifier: str, build: Callable[[], dict]) -> dict:
    """The question's answer, or, when a study's ``findings.json`` lacks what it needs (a foreign or
    damaged file), an answer that says so instead of stopping the report."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return _question(identifier, [f"Not answered: a findings.json it reads is incomplete or damaged "
                                      f"({type(exc).__name__}: {shown(str(exc))})."], {}, [])


def study_defaults() -> dict[str, Any]:
    """The depth-study notebook's default settings, which q5 names the differences from."""
    from analysis.study import parameter_defaults

    return parameter_defaults()


def _depth_page(studies: pd.DataFrame) -> str | None:
    if studies.empty or "kind" not in studies:
        return None
    depth = studies[(studies["kind"] == "depth") & (studies["status"] == "complete")]
    if depth.empty:
        return None
    deepest = depth.sort_values("depth", ascending=False).iloc[0]
    return study_page(deepest["study_id"])


def _question(identifier: str, sentences: list[str], numbers: dict[str, Any], evidence: list[str | None]) -> dict:
    return {"id": identifier, "question": QUESTIONS[identifier], "answer": " ".join(sentences),
            "evidence": [link for link in dict.fromkeys(evidence) if link], "numbers": numbers}


def _lesion_sentence(lesion: dict[str, Any], numbers: dict[str, Any]) -> str:
    """What deleting one block did to each trained network, from its error before (recorded in ``numbers``)."""
    residual_points, plain_points = _lesion_points(lesion, numbers)
    baseline = lesion.get("baseline_error") or {}
    return (f"Deleting one block of a trained depth-{lesion.get('depth', '?')} network raised the validation error "
            f"by {residual_points} on average in the residual network (from {_percent(baseline.get('residual'))}) "
            f"and {plain_points} in the plain one (from {_percent(baseline.get('plain'))}).")


def _lesion_points(lesion: dict[str, Any], numbers: dict[str, Any]) -> tuple[str, str]:
    """The mean error increases of deleting one residual and one plain block, as text (recorded in ``numbers``)."""
    numbers["lesion"] = increase = lesion_increase(lesion)
    return _points(increase.get("residual")), _points(increase.get("plain"))


def lesion_increase(lesion: dict[str, Any]) -> dict[str, float | None]:
    """Per variant: the mean validation-error increase from deleting one block (see :func:`analysis.lesion.lesion_numbers`)."""
    return dict(lesion.get("mean_error_increase") or {})


def _count(value: Any) -> str:
    """A count in millions or billions ('25.6 M', '4.09 G'); small counts in full."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    for size, suffix in ((1e9, " G"), (1e6, " M")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{int(value):,}"


def _stages(network: dict[str, Any]) -> str:
    return "-".join(str(n) for n in network.get("blocks_per_stage") or []) or "n/a"


def _percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _points(value: float | None) -> str:
    """An error difference in percentage points."""
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2g} percentage points"


def _mean_of(value: Any) -> float | None:
    """A number as is; the mean of a {key: number} mapping (e.g. per seed)."""
    if isinstance(value, dict):
        values = [v for v in value.values() if isinstance(v, (int, float))]
        return float(np.mean(values)) if values else None
    return value


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return None
    return a / b


def _values(group: dict[str, Any]) -> list[float]:
    return list(group["final_train_loss"]["values"])


def _trained_sentence(trained: dict[str, Any]) -> str:
    """Final train loss of the two matched networks (mean over seeds) and whether their order holds for every seed."""
    losses = {name: values.get("final_train_loss") or {} for name, values in trained.items() if isinstance(values, dict)}
    if len(losses) != 2:
        return ""
    (first, a), (second, b) = losses.items()
    seeds = sorted(set(a) & set(b))
    held = holds_for_every_seed([a[seed] for seed in seeds], [b[seed] for seed in seeds])
    order = (f"{first} ended higher in every seed" if held else
             f"{second} ended at least as high as {first} in every seed" if held is False else
             "their order differs between seeds (unresolved at this budget)")
    return (f"Trained at matched cost on the synthetic data ({len(seeds)} seeds), the final train loss was "
            f"{_fmt(_mean_of(a))} for {first} and {_fmt(_mean_of(b))} for {second}: {order}.")
