"""Plans: which FFN neurons (and, speed plans, attention heads) one target prunes, decided from scores alone (no
forward pass).

One planner (`make_plan`) plans every method (`pruning.spec.MethodSpec`): the paper's threshold rules
(allocation `threshold`: per-layer thresholds t_l on the neuron scores s_lj, alpha bisected when the spec has
a target), and any criterion of the registry under a uniform, global or searched allocation (FLAP is
fluctuation-uniform-bias). A bias-compensated plan carries the pruned neurons' mean activations, so their mean
output can be folded into the bias; a fitted compensation (rescale, refit) is computed when the plan is
materialised, since it needs a forward pass. The random baseline (`random_plan`, one plan per seed) matches a
plan's per-layer counts and is compensated as the plan is.

A speed plan (`plan_speed`, a `joint.SpeedMethod`) prunes attention heads and FFN neurons together: per layer
the head configuration and FFN width that meet the target speedup on the latency table at the least summed
cost (`joint.allocate`; speed targets in the workflow: `speed_plan`). Its pruned heads' bias fold, like a
fitted compensation, is computed from calibration reviews when the plan is materialised.

plan.parquet, one row per layer (the Figure-4a table):
  layer int, width int, masked int, masked_pct float, high int (neurons with score > high_threshold),
  threshold float (the rule's t_l, or the highest pruned criterion score; NaN where none),
  pruned list<int32>       the sorted indices of the pruned neurons
  pruned_mean list<float64> their mean activations (bias-compensated plans only, else null)
  + c, focusing, sided for the threshold rules; high_masked for the others
  speed plans: heads, kv_heads, heads_pruned, heads_kept, kv_kept, seconds, cost (the allocation's cost of the
  layer's choice, under the objective `search.objective` names; no high, threshold), and
  pruned_heads list<int32>  the sorted indices of the pruned query heads (only speed plans have this column)
and, in the file's metadata under `llm_anatomy.plan`, the `PlanInfo` record as JSON.
random_plans.parquet: the same columns plus `seed`, one block of rows per seed.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from ..io import dumps, from_record, parquet_metadata, read_parquet, write_parquet
from ..scores import mean_layer_scores, mean_neuron_scores, scoring_columns
from .allocation import allocate, cut_values
from .criteria import NeuronStats, importance
from .joint import LayerChoices, SpeedMethod, allocate as allocate_choices
from .rules import apply_rule, bisect_alpha, figure4a_lines, layer_table, rule_from_spec
from .spec import THRESHOLD, MethodSpec

log = logging.getLogger(__name__)

META_KEY = b"llm_anatomy.plan"


@dataclass
class PlanInfo:
    """How a plan was made: its method, and what the planner found."""

    spec: MethodSpec | SpeedMethod
    thresholds: list             # per layer: t_l (threshold rules) or the highest pruned importance; NaN where none
    search: dict | None = None   # target_fraction, pruned, reached (+ alpha, the threshold rules' bisection;
                                 # speed plans: target_speedup, the predictions, the latency table's signature)
    rule: dict | None = None     # threshold rules as applied: alpha, beta, focusing (layer indices), focus_multiplier, sides
    scoring: str = "paper"       # which decoder scoring of s_lj and c_l the plan read
    seed: int | None = None      # random baselines: the seed, and the score above which neurons were never drawn
    high_threshold: float | None = None

    def to_dict(self) -> dict:
        return dict(asdict(self), spec=self.spec.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "PlanInfo":
        return from_record(cls, {k: v for k, v in d.items() if k != "spec"}, spec=method_from_dict(d["spec"]))


@dataclass
class Plan:
    """Which neurons (and heads) one target prunes, and how it got there."""

    pruned: list[np.ndarray]         # per layer, sorted neuron indices
    table: pd.DataFrame              # one row per layer (Figure-4a shape for the threshold rules)
    info: PlanInfo
    log_lines: list[str] = field(default_factory=list)
    pruned_means: list[np.ndarray] | None = None  # per layer, mean activation of each pruned neuron
    pruned_heads: list[np.ndarray] | None = None  # per layer, sorted query-head indices (speed plans)

    @property
    def spec(self) -> MethodSpec | SpeedMethod:
        return self.info.spec

    @property
    def compensation(self) -> str:
        """none | bias (the mean-output fold, from `pruned_means`) | rescale | refit (fitted when materialised)."""
        return self.spec.compensation

    @property
    def compensated(self) -> bool:
        return self.compensation != "none"

    @property
    def fitted(self) -> bool:
        return self.spec.fitted

    @property
    def needs_calibration(self) -> bool:
        """A fitted compensation, or pruned heads whose mean output is folded: both are computed from calibration
        reviews when the plan is materialised."""
        return self.fitted or (self.pruned_heads is not None and self.compensation == "bias")

    @property
    def counts(self) -> list[int]:
        return [len(p) for p in self.pruned]

    def without_compensation(self) -> "Plan":
        info = replace(self.info, spec=replace(self.spec, compensation="none"))
        return Plan(self.pruned, self.table, info, self.log_lines, None, self.pruned_heads)


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


def make_plan(spec: MethodSpec, c, scores, high: float, stats: NeuronStats | None = None,
              sensitivity: pd.DataFrame | None = None) -> Plan:
    """The plan of any method: `c` and `scores` are the layer and neuron scores (`load_scores`), `stats` what
    the criterion reads, `sensitivity` the searched allocation's validation evidence."""
    if spec.allocation == THRESHOLD:
        # the paper's rule (alpha bisected when the spec has a target): thresholds t_l, |s_lj| < t_l pruned
        rule = rule_from_spec(spec, len(scores))
        search = None
        if spec.target is not None:
            alpha, n, reached = bisect_alpha(rule, c, scores, float(spec.target), negative_alpha=bool(spec.negative_alpha))
            rule = rule.with_alpha(alpha)
            search = dict(target_fraction=float(spec.target), alpha=alpha, pruned=n, reached=reached)
        t, pruned = apply_rule(rule, c, scores)
        table = layer_table(rule, c, scores, t, pruned, high)
        applied = dict(alpha=rule.alpha, beta=rule.beta, focusing=list(rule.focusing),
                       focus_multiplier=rule.focus_multiplier, sides=rule.sides(len(scores)))
        return Plan(pruned, table, PlanInfo(spec, [float(x) for x in t], search, applied), figure4a_lines(table))
    if spec.target is None:
        raise ValueError(f"{spec.curve} needs a target fraction of neurons to prune (e.g. target: 0.5)")
    if stats is None:
        raise ValueError(f"criterion {spec.criterion!r} needs the per-neuron measurements (NeuronStats); none were given")
    imp = importance(spec.criterion, stats)
    if [len(v) for v in imp] != [len(s) for s in scores]:
        raise ValueError(f"criterion {spec.criterion!r}: {[len(v) for v in imp]} neurons per layer do not match "
                         f"the neuron scores' {[len(s) for s in scores]}; rebuild both from the same checkpoint")
    pruned = allocate(imp, float(spec.target), spec.allocation, sensitivity, spec.max_layer_fraction)
    cut = cut_values(imp, pruned)
    # per layer: the highest pruned importance, the counts, and how many high neurons (paper score above `high`)
    # there are and are pruned
    table = pd.DataFrame([dict(layer=l, threshold=cut[l], width=len(imp[l]), masked=len(pruned[l]),
                               masked_pct=100.0 * len(pruned[l]) / len(imp[l]), high=int((np.asarray(scores[l]) > high).sum()),
                               high_masked=int((np.asarray(scores[l])[pruned[l]] > high).sum()))
                          for l in range(len(imp))])
    search = dict(target_fraction=float(spec.target), pruned=int(sum(len(p) for p in pruned)), reached=True)
    lines = [f"layer {r.layer}: {spec.criterion} threshold {r.threshold:.6g}, neurons pruned {r.masked} of {r.width}"
             for r in table.itertuples()]
    means = [np.asarray(m, dtype=np.float64)[p] for m, p in zip(stats["mean"], pruned)] if spec.compensation == "bias" else None
    return Plan(pruned, table, PlanInfo(spec, cut, search), lines, means)


def plan_speed(method: SpeedMethod, choices: Sequence[LayerChoices], costs: Sequence[np.ndarray], latency,
               stats: NeuronStats | None = None, sensitivity: str = "", objective: str = "loss") -> Plan:
    """A speed target's plan: per layer the head configuration and FFN width that meet `method.speedup` on the
    `latency` table (`latency.LatencyTable`) at the least summed cost `costs` (per layer [head choices, widths]
    for `choices`, `joint.layer_choices`; `sensitivity` names the table: estimated or measured, `objective` what
    its cost is: margin, the mean |margin change|, or loss, the loss increase), by `joint.allocate`. The FFN's
    bias fold reads the pruned neurons' calibration means from `stats`; the heads' is computed when the plan is
    materialised. A target the choices cannot reach on this table is a ValueError that says so."""
    L = len(choices)
    seconds = [np.array([[latency.layer_seconds(h.query, h.kv, w, last=l == L - 1) for w in c.widths]
                         for h in c.heads]) for l, c in enumerate(choices)]
    try:
        picks = allocate_choices(costs, seconds, latency.dense_predicted / method.speedup - latency.base)
    except ValueError as err:
        raise ValueError(f"{method.name}: {err} (the latency table {latency.signature.get('machine', {}).get('cpu', '')}"
                         f" predicts a dense pass of {latency.dense_predicted:.4g} s, {latency.base:.4g} s of it outside "
                         "the layers)") from None
    pruned = [c.pruned_neurons(j) for c, (_k, j) in zip(choices, picks)]
    heads = [c.heads[k].pruned for c, (k, _j) in zip(choices, picks)]
    shapes = [(c.heads[k].query, c.heads[k].kv) for c, (k, _j) in zip(choices, picks)]
    predicted = latency.seconds(shapes, [c.widths[j] for c, (_k, j) in zip(choices, picks)])
    table = pd.DataFrame([dict(layer=l, width=len(c.ffn_order), masked=len(pruned[l]),
                               masked_pct=100.0 * len(pruned[l]) / len(c.ffn_order), heads=c.dense_heads[0],
                               kv_heads=c.dense_heads[1], heads_pruned=len(heads[l]),
                               heads_kept=shapes[l][0], kv_kept=shapes[l][1], seconds=float(seconds[l][k, j]),
                               cost=float(costs[l][k, j]))
                          for l, (c, (k, j)) in enumerate(zip(choices, picks))])
    search = dict(target_speedup=method.speedup, predicted_speedup=latency.dense_predicted / predicted,
                  predicted_seconds=predicted, dense_seconds=latency.dense_predicted,
                  predicted_cost=float(table["cost"].sum()), objective=objective, pruned=int(sum(map(len, pruned))),
                  heads_pruned=int(sum(map(len, heads))), reached=True, sensitivity=sensitivity,
                  latency=dict(signature=latency.signature, base=latency.base, info=latency.info))
    lines = [f"layer {r.layer}: heads {r.heads_kept} of {r.heads} ({r.kv_kept} key/value), FFN {r.width - r.masked} of "
             f"{r.width}: {r.seconds * 1e3:.1f} ms, {objective} cost {r.cost:.4f}" for r in table.itertuples()]
    means = None
    if method.compensation == "bias":
        if stats is None:
            raise ValueError("a bias-compensated speed plan needs the calibration means (ffn_stats.parquet)")
        means = [np.asarray(m, dtype=np.float64)[p] for m, p in zip(stats["mean"], pruned)]
    return Plan(pruned, table, PlanInfo(method, [float("nan")] * L, search), lines, means, heads)


def speed_plan(method: SpeedMethod, stats: NeuronStats, head_stats: pd.DataFrame, costs_path, table,
               ffn_criterion: str, head_criterion: str, width_steps: int) -> Plan:
    """The plan of a speed target (rule prune_plan): the joint cost table at `costs_path` (rule speed_sensitivity,
    made with `ffn_criterion` and `head_criterion`, the method's own for the structures it prunes) restricted to
    the method's choices (`joint.restrict`), allocated on `table` (this machine's `latency.LatencyTable` for the
    model) by `plan_speed`."""
    from .joint import restrict
    from .speed import joint_choices, read_costs  # torch (the head criteria): speed targets only

    kv = [table.signature["shapes"]["kv_heads"]] * table.layers  # the dense model's (a table's shapes are uniform)
    joint = joint_choices(stats, head_stats, kv, ffn_criterion, head_criterion, width_steps)
    costs, objective = read_costs(costs_path, joint)
    own = joint_choices(stats, head_stats, kv, method.ffn_criterion or ffn_criterion,
                        method.head_criterion or head_criterion, width_steps, method.structures)
    restricted = [restrict(cost, j, c) for cost, j, c in zip(costs, joint, own)]
    return plan_speed(method, own, restricted, table, stats, "estimated", objective)


def random_masks(scores: Sequence[np.ndarray], counts: Sequence[int], seed: int, high: float | None
                 ) -> list[np.ndarray]:
    """Per layer, `counts[l]` neurons drawn without replacement from those with score <= `high` (None: from all).

    One generator per (seed, layer), so a layer's draw does not depend on the other layers."""
    out = []
    for layer, (s, n) in enumerate(zip(scores, counts)):
        candidates = np.arange(len(s)) if high is None else np.flatnonzero(~(np.asarray(s) > high))
        if n > len(candidates):
            log.warning("layer %d: %d neurons to prune but only %d are not high; pruning those", layer, n, len(candidates))
            n = len(candidates)
        rng = np.random.default_rng([int(seed), layer])
        out.append(np.sort(rng.choice(candidates, size=int(n), replace=False)))
    return out


def random_heads(pruned_heads: Sequence[np.ndarray], heads: Sequence[int], kv_heads: Sequence[int], seed: int
                 ) -> list[np.ndarray]:
    """Per layer, as many query heads pruned at random as `pruned_heads[l]` prunes, in the same grouped-query
    configuration (the same number of key/value groups kept, the same number of query heads in each), so the
    baseline has the method's shapes. One generator per (seed, layer), apart from the neurons' draw."""
    out = []
    for layer, (drop, h, kv) in enumerate(zip(pruned_heads, heads, kv_heads)):
        group = h // kv
        kept = np.setdiff1d(np.arange(h), np.asarray(drop, dtype=np.int64))
        groups = np.unique(kept // group)
        rng = np.random.default_rng([int(seed), layer, 1])
        keep = [g * group + np.sort(rng.choice(group, size=len(kept) // len(groups), replace=False))
                for g in np.sort(rng.choice(kv, size=len(groups), replace=False))] if len(kept) else []
        out.append(np.setdiff1d(np.arange(h), np.concatenate(keep) if keep else []).astype(np.int64))
    return out


def random_plan(plan: Plan, scores, seed: int, high: float | None, means: list[np.ndarray] | None = None) -> Plan:
    """The paper's random baseline for `plan`: its per-layer counts, drawn among the neurons that are not high
    (`high` None: among all, as for speed plans, whose baseline must keep the plan's shapes).

    A compensated plan gets a compensated baseline (the random neurons' mean activations from `means`,
    the same calibration statistics), so the baseline is treated exactly as the method is; the
    uncompensated reading of both is one `without_compensation()` away. A plan that prunes heads gets random
    heads in its head configurations (`random_heads`)."""
    folded = plan.compensation == "bias"
    if folded and means is None:
        raise ValueError("a compensated plan's random baseline needs the calibration means (ffn_stats.parquet)")
    masks = random_masks(scores, plan.counts, seed, high)
    pruned_means = [np.asarray(m, dtype=np.float64)[k] for m, k in zip(means, masks)] if folded else None
    table = pd.DataFrame([dict(layer=l, width=len(s), masked=len(m), masked_pct=100.0 * len(m) / len(s),
                               high=None if high is None else int((np.asarray(s) > high).sum()), threshold=float("nan"))
                          for l, (s, m) in enumerate(zip(scores, masks))])
    info = PlanInfo(plan.spec, [float("nan")] * len(masks), scoring=plan.info.scoring, seed=int(seed),
                    high_threshold=high)
    heads = None
    if plan.pruned_heads is not None:
        heads = random_heads(plan.pruned_heads, plan.table["heads"].tolist(), plan.table["kv_heads"].tolist(), seed)
        table["heads"], table["kv_heads"] = plan.table["heads"].to_numpy(), plan.table["kv_heads"].to_numpy()
        table["heads_pruned"] = [len(h) for h in heads]
    return Plan(masks, table, info, pruned_means=pruned_means, pruned_heads=heads)


# ---- files ------------------------------------------------------------------------------
def _frame(plan: Plan) -> pd.DataFrame:
    df = plan.table.copy()
    df["pruned"] = [np.asarray(p, dtype=np.int32) for p in plan.pruned]
    df["pruned_mean"] = ([np.asarray(m, dtype=np.float64) for m in plan.pruned_means] if plan.pruned_means is not None
                         else [None] * len(df))
    if plan.pruned_heads is not None:
        df["pruned_heads"] = [np.asarray(h, dtype=np.int32) for h in plan.pruned_heads]
    return df


def _table(df: pd.DataFrame, info: dict) -> pa.Table:
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = dumps(info).encode()
    return table.replace_schema_metadata(meta)


def write_plan(plan: Plan, path) -> None:
    write_parquet(_table(_frame(plan), plan.info.to_dict()), path)


def write_random_plans(plans: list[Plan], path) -> None:
    df = pd.concat([_frame(p).assign(seed=p.info.seed) for p in plans], ignore_index=True)
    write_parquet(_table(df, dict(seeds=[p.info.seed for p in plans], plans=[p.info.to_dict() for p in plans])), path)


def _from_frame(df: pd.DataFrame, info: dict, path) -> Plan:
    info = PlanInfo.from_dict(info)
    df = df.sort_values("layer").reset_index(drop=True)
    if not np.array_equal(df["layer"].to_numpy(), np.arange(len(df))):
        raise ValueError(f"{path}: layers {df['layer'].tolist()} are not 0..L-1; rewrite it with the prune_plan rule")
    pruned = [np.asarray(p, dtype=np.int64) for p in df["pruned"]]
    means = [np.asarray(m, dtype=np.float64) for m in df["pruned_mean"]] if df["pruned_mean"].notna().all() else None
    heads = [np.asarray(h, dtype=np.int64) for h in df["pruned_heads"]] if "pruned_heads" in df.columns else None
    table = df.drop(columns=["pruned", "pruned_mean", "pruned_heads", "seed"], errors="ignore")
    return Plan(pruned, table, info, pruned_means=means, pruned_heads=heads)


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


def method_from_dict(spec) -> MethodSpec | SpeedMethod:
    """A plan's method from its record (a `MethodSpec`'s or a `joint.SpeedMethod`'s dict), or the method itself."""
    if isinstance(spec, (MethodSpec, SpeedMethod)):
        return spec
    return (SpeedMethod if "speedup" in spec else MethodSpec).from_dict(dict(spec))


def prune_plan(layer_scores, neuron_scores, plan, random_plans, spec, seeds, high_threshold: float,
               average_over: str, ffn_stats=None, mask_gradients=None, contributions=None, obs_scores=None,
               sensitivity=None, latency_table=None, head_stats=None, speed_sensitivity=None,
               speed: dict | None = None) -> dict:
    """plan.parquet and random_plans.parquet (one plan per seed) of one target (rule prune_plan). `spec` is a
    MethodSpec or SpeedMethod, or its dict; the other inputs are the files the spec's criterion and allocation
    read (a speed target: this machine's latency table, the heads' statistics and the cost table made with the
    criteria `speed` names, on its width grid: `speed_plan`)."""
    spec = method_from_dict(spec)
    scoring = getattr(spec, "scoring", None) or "paper"
    c, scores = load_scores(layer_scores, neuron_scores, average_over, scoring)
    stats = None
    if spec.allocation != THRESHOLD:
        stats = NeuronStats.from_files(ffn_stats, mask_gradients, contributions, cosine=scores, obs_scores=obs_scores)
    if isinstance(spec, SpeedMethod):
        from .speed import read_latency_table  # torch (the head criteria): speed targets only

        made = speed_plan(spec, stats, read_parquet(head_stats), speed_sensitivity, read_latency_table(latency_table),
                          speed["ffn_criterion"], speed["head_criterion"], speed["width_steps"])
    else:
        made = make_plan(spec, c, scores, high_threshold, stats, read_parquet(sensitivity) if sensitivity else None)
    made.info.scoring = scoring
    means = stats["mean"] if made.compensation == "bias" else None
    write_plan(made, plan)
    # a speed plan's baseline has its shapes, so its speed: drawn among all neurons (a layer's FFN may go whole)
    high = None if isinstance(spec, SpeedMethod) else high_threshold
    write_random_plans([random_plan(made, scores, s, high, means) for s in seeds], random_plans)
    for line in made.log_lines:
        log.info(line)
    return dict(target=spec.name, pruned=sum(made.counts), neurons=int(made.table["width"].sum()))
