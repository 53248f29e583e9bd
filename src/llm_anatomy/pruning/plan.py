"""Plans: which FFN neurons one target prunes, decided from scores alone (no forward pass).

Four kinds of plan choose the neurons: the paper's threshold rules (`encoder`, `decoder`,
on the neuron scores s_lj), FLAP (`flap`, on calibration activation statistics, carrying
the pruned neurons' mean activations so their mean output can be folded into the bias),
any criterion of the registry with an allocation and a compensation (`criterion`,
`pruning.criteria`; a fitted compensation, rescale or refit, is computed when the plan is
materialised, since it needs a forward pass), and the random baseline (`random`, one plan
per seed, matched to a plan's per-layer counts and compensated as the plan is).

plan.parquet, one row per layer (the Figure-4a table):
  layer int, width int, masked int, masked_pct float, high int (neurons with score > high_threshold),
  threshold float (the rule's t_l, or the highest pruned criterion score; NaN where none),
  pruned list<int32>       the sorted indices of the pruned neurons
  pruned_mean list<float64> their mean activations (bias-compensated plans only, else null)
  + rule-specific columns (c, focusing, sided for the threshold rules; high_masked for FLAP)
and, in the file's metadata under `llm_anatomy.plan`, a JSON object: the rule's parameters,
the sparsity search and the per-layer counts (`Plan.info`).
random_plans.parquet: the same columns plus `seed`, one block of rows per seed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from ..io import dumps, parquet_metadata, read_parquet, write_parquet
from ..scores import mean_layer_scores, mean_neuron_scores, scoring_columns
from .compensation import METHODS as COMPENSATIONS
from .criteria import NeuronStats, importance
from .allocation import allocate
from .flap import flap_masks, fluctuation_scores, read_stats, score_thresholds
from .random_baseline import random_masks
from .rules import apply_rule, figure4a_lines, layer_table, rule_from_config
from .search import bisect_alpha

META_KEY = b"llm_anatomy.plan"
FITTED = ("rescale", "refit")  # compensations fitted on calibration tokens when the plan is materialised


@dataclass
class Plan:
    """Which neurons one target prunes, and how it got there."""

    pruned: list[np.ndarray]         # per layer, sorted neuron indices
    table: pd.DataFrame              # one row per layer (Figure-4a shape for the threshold rules)
    info: dict                       # the rule's parameters and search (alpha, focusing, ... or allocation)
    log_lines: list[str] = field(default_factory=list)
    pruned_means: list[np.ndarray] | None = None  # per layer, mean activation of each pruned neuron

    @property
    def compensation(self) -> str:
        """none | bias (the mean-output fold, from `pruned_means`) | rescale | refit (fitted when materialised)."""
        return self.info.get("compensation") or ("bias" if self.pruned_means is not None else "none")

    @property
    def compensated(self) -> bool:
        return self.compensation != "none"

    @property
    def fitted(self) -> bool:
        return self.compensation in FITTED

    @property
    def counts(self) -> list[int]:
        return [len(p) for p in self.pruned]

    def without_compensation(self) -> "Plan":
        return Plan(self.pruned, self.table, dict(self.info, bias_compensation=False, compensation="none"),
                    self.log_lines, None)


def load_scores(layer_path, neuron_path, input_set: str = "probe", scoring: str = "paper"
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(c [L+1], per-layer mean neuron scores) as the threshold rules read them, in one of the decoder
    scorings (`scores.SCORINGS`; the paper's form by default)."""
    layer_col, neuron_col = scoring_columns(scoring)
    c = mean_layer_scores(layer_path, input_set=input_set, column=layer_col)
    scores = mean_neuron_scores(neuron_path, column=neuron_col)
    if len(c) != len(scores) + 1:
        raise ValueError(f"{layer_path}: {len(c)} layer scores for {len(scores)} layers in {neuron_path} "
                         "(expected L+1: layers 0..L); rebuild both from the same checkpoint")
    return c, scores


def plan_threshold(cfg: dict, c, scores, high: float) -> Plan:
    """The paper's rule (alpha bisected when cfg has `target`): thresholds t_l, |s_lj| < t_l pruned."""
    L = len(scores)
    rule = rule_from_config(cfg, L, cfg["focus_multiplier"])
    search = None
    if cfg.get("target") is not None:
        alpha, n, reached = bisect_alpha(rule, c, scores, float(cfg["target"]),
                                         negative_alpha=bool(cfg.get("negative_alpha", False)))
        rule = rule.with_alpha(alpha)
        search = dict(target_fraction=float(cfg["target"]), alpha=alpha, pruned=n, reached=reached)
    t, pruned = apply_rule(rule, c, scores)
    table = layer_table(rule, c, scores, t, pruned, high)
    info = dict(rule=rule.kind, alpha=rule.alpha, beta=rule.beta, focusing=list(rule.focusing),
                focusing_spec=cfg.get("focusing"), focus_multiplier=rule.focus_multiplier, sides=rule.sides(L),
                thresholds=[float(x) for x in t], search=search, bias_compensation=False)
    return Plan(pruned, table, info, figure4a_lines(table))


def cut_table(importance, pruned, cut, scores, high: float) -> pd.DataFrame:
    """One row per layer of a plan that cuts by an importance: the highest pruned importance, the counts, and
    how many high neurons (paper score above `high`) there are and are pruned."""
    return pd.DataFrame([dict(layer=l, threshold=cut[l], width=len(importance[l]), masked=len(pruned[l]),
                              masked_pct=100.0 * len(pruned[l]) / len(importance[l]),
                              high=int((np.asarray(scores[l]) > high).sum()),
                              high_masked=int((np.asarray(scores[l])[pruned[l]] > high).sum()))
                         for l in range(len(importance))])


def plan_flap(cfg: dict, stats_path, scores, high: float) -> Plan:
    """FLAP: the lowest fluctuation scores, `cfg['target']` of all neurons, allocated per cfg."""
    if stats_path is None:
        raise ValueError("rule flap needs the calibration statistics (ffn_stats.parquet); none were given")
    if cfg.get("target") is None:
        raise ValueError("rule flap needs a target fraction of neurons to prune (e.g. target: 0.5)")
    means, var, vnorm = read_stats(stats_path)
    if [len(v) for v in var] != [len(s) for s in scores]:
        raise ValueError(f"{stats_path}: {[len(v) for v in var]} neurons per layer do not match the neuron scores' "
                         f"{[len(s) for s in scores]}; rebuild both from the same checkpoint")
    allocation = cfg["allocation"]
    f = fluctuation_scores(var, vnorm)
    pruned = flap_masks(f, float(cfg["target"]), allocation)
    cut = score_thresholds(f, pruned)
    table = cut_table(f, pruned, cut, scores, high)
    compensate = bool(cfg["bias_compensation"])
    info = dict(rule="flap", allocation=allocation, bias_compensation=compensate, thresholds=cut,
                search=dict(target_fraction=float(cfg["target"]), pruned=int(sum(len(p) for p in pruned)),
                            reached=True))
    lines = [f"layer {r.layer}: fluctuation threshold {r.threshold:.6g}, neurons pruned {r.masked} of {r.width}"
             for r in table.itertuples()]
    pruned_means = [np.asarray(m, dtype=np.float64)[p] for m, p in zip(means, pruned)] if compensate else None
    return Plan(pruned, table, info, lines, pruned_means)


def plan_criterion(cfg: dict, stats: NeuronStats, scores, high: float, sensitivity: pd.DataFrame | None = None) -> Plan:
    """The lowest `cfg['criterion']` importances, `cfg['target']` of all neurons, allocated by
    `cfg['allocation']` (uniform | global, as FLAP's | searched, from the validation `sensitivity`),
    compensated by `cfg['compensation']`."""
    if cfg.get("target") is None:
        raise ValueError("rule criterion needs a target fraction of neurons to prune (e.g. target: 0.5)")
    compensation = cfg["compensation"]
    if compensation not in COMPENSATIONS:
        raise ValueError(f"compensation {compensation!r} is not one of {COMPENSATIONS}")
    imp = importance(cfg["criterion"], stats)
    if [len(v) for v in imp] != [len(s) for s in scores]:
        raise ValueError(f"criterion {cfg['criterion']!r}: {[len(v) for v in imp]} neurons per layer do not match "
                         f"the neuron scores' {[len(s) for s in scores]}; rebuild both from the same checkpoint")
    pruned = allocate(imp, float(cfg["target"]), cfg["allocation"], sensitivity)
    cut = score_thresholds(imp, pruned)
    table = cut_table(imp, pruned, cut, scores, high)
    info = dict(rule="criterion", criterion=cfg["criterion"], allocation=cfg["allocation"], compensation=compensation,
                ridge=float(cfg.get("ridge", 0.0)), bias_compensation=compensation == "bias", thresholds=cut,
                search=dict(target_fraction=float(cfg["target"]), pruned=int(sum(len(p) for p in pruned)),
                            reached=True))
    if "readout_ridge" in cfg:
        info["readout_ridge"] = float(cfg["readout_ridge"])
    lines = [f"layer {r.layer}: {cfg['criterion']} threshold {r.threshold:.6g}, neurons pruned {r.masked} of {r.width}"
             for r in table.itertuples()]
    pruned_means = None
    if compensation == "bias":
        pruned_means = [np.asarray(m, dtype=np.float64)[p] for m, p in zip(stats["mean"], pruned)]
    return Plan(pruned, table, info, lines, pruned_means)


def make_plan(cfg: dict, c, scores, high: float, ffn_stats_path=None, stats: NeuronStats | None = None,
              sensitivity: pd.DataFrame | None = None) -> Plan:
    if cfg["rule"] == "flap":
        return plan_flap(cfg, ffn_stats_path, scores, high)
    if cfg["rule"] == "criterion":
        if stats is None:
            raise ValueError("rule criterion needs the per-neuron measurements (NeuronStats); none were given")
        return plan_criterion(cfg, stats, scores, high, sensitivity)
    return plan_threshold(cfg, c, scores, high)


def random_plan(plan: Plan, scores, seed: int, high: float, means: list[np.ndarray] | None = None) -> Plan:
    """The paper's random baseline for `plan`: its per-layer counts, drawn among the neurons that are not high.

    A compensated plan gets a compensated baseline (the random neurons' mean activations from `means`,
    the same calibration statistics), so the baseline is treated exactly as the method is; the
    uncompensated reading of both is one `without_compensation()` away.
    """
    folded = plan.compensation == "bias"
    if folded and means is None:
        raise ValueError("a compensated plan's random baseline needs the calibration means (ffn_stats.parquet)")
    masks = random_masks(scores, plan.counts, seed, high)
    pruned_means = [np.asarray(m, dtype=np.float64)[k] for m, k in zip(means, masks)] if folded else None
    table = pd.DataFrame([dict(layer=l, width=len(s), masked=len(m), masked_pct=100.0 * len(m) / len(s),
                               high=int((np.asarray(s) > high).sum()), threshold=float("nan"))
                          for l, (s, m) in enumerate(zip(scores, masks))])
    info = dict(rule="random", seed=int(seed), matched_to=plan.info.get("rule"), bias_compensation=folded,
                compensation=plan.compensation, high_threshold=high)
    if plan.fitted:
        info["ridge"] = plan.info["ridge"]
        if "readout_ridge" in plan.info:
            info["readout_ridge"] = plan.info["readout_ridge"]
    return Plan(masks, table, info, pruned_means=pruned_means)


# ---- files ------------------------------------------------------------------------------
def _frame(plan: Plan) -> pd.DataFrame:
    df = plan.table.copy()
    df["pruned"] = [np.asarray(p, dtype=np.int32) for p in plan.pruned]
    df["pruned_mean"] = ([np.asarray(m, dtype=np.float64) for m in plan.pruned_means] if plan.pruned_means is not None
                         else [None] * len(df))
    return df


def _table(df: pd.DataFrame, info: dict) -> pa.Table:
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = dumps(info).encode()
    return table.replace_schema_metadata(meta)


def write_plan(plan: Plan, path) -> None:
    write_parquet(_table(_frame(plan), plan.info), path)


def write_random_plans(plans: list[Plan], path) -> None:
    df = pd.concat([_frame(p).assign(seed=p.info["seed"]) for p in plans], ignore_index=True)
    write_parquet(_table(df, dict(seeds=[p.info["seed"] for p in plans], plans=[p.info for p in plans])), path)


def _from_frame(df: pd.DataFrame, info: dict, path) -> Plan:
    df = df.sort_values("layer").reset_index(drop=True)
    if not np.array_equal(df["layer"].to_numpy(), np.arange(len(df))):
        raise ValueError(f"{path}: layers {df['layer'].tolist()} are not 0..L-1; rewrite it with the prune_plan rule")
    pruned = [np.asarray(p, dtype=np.int64) for p in df["pruned"]]
    means = None
    if df["pruned_mean"].notna().all():
        means = [np.asarray(m, dtype=np.float64) for m in df["pruned_mean"]]
    table = df.drop(columns=["pruned", "pruned_mean", "seed"], errors="ignore")
    return Plan(pruned, table, info, pruned_means=means)


def _meta(path) -> dict:
    meta = parquet_metadata(path)
    if META_KEY not in meta:
        raise ValueError(f"{path} is not a plan written by llm_anatomy (no {META_KEY.decode()} metadata)")
    return json.loads(meta[META_KEY])


def read_plan(path) -> Plan:
    return _from_frame(read_parquet(path), _meta(path), path)


def read_random_plans(path) -> list[Plan]:
    df, meta = read_parquet(path), _meta(path)
    return [_from_frame(df[df["seed"] == seed], info, path) for seed, info in zip(meta["seeds"], meta["plans"])]


def plan_stage(cfg: dict, layer_scores_path, neuron_scores_path, plan_path, random_path, seeds, high: float,
               average_over: str = "probe", ffn_stats_path=None, mask_gradients_path=None,
               contributions_path=None, obs_scores_path=None, sensitivity_path=None) -> Plan:
    """plan.parquet and random_plans.parquet (one plan per seed) of one target."""
    scoring = cfg.get("scoring", "paper")
    c, scores = load_scores(layer_scores_path, neuron_scores_path, average_over, scoring)
    stats = None
    if cfg["rule"] == "criterion":
        stats = NeuronStats.from_files(ffn_stats_path, mask_gradients_path, contributions_path, cosine=scores,
                                       obs_scores=obs_scores_path)
    sensitivity = read_parquet(sensitivity_path) if sensitivity_path is not None else None
    plan = make_plan(cfg, c, scores, high, ffn_stats_path, stats, sensitivity)
    plan.info["scoring"] = scoring
    means = read_stats(ffn_stats_path)[0] if plan.compensation == "bias" else None
    write_plan(plan, plan_path)
    write_random_plans([random_plan(plan, scores, s, high, means) for s in seeds], random_path)
    return plan
