"""Speed targets in the pipeline (`joint.SpeedMethod`, docs/SPEED.md): the per-model inputs of their plans, one
stage function per rule, and the readers of their files.

  latency_table      (in `latency`, beside the table it measures) this machine's latency table, copied to the
                     model's speed/latency_table.json; or, where the sizing asks, multiply-adds (`latency.macs_table`)
  head_stats         the head criteria's statistics (`head_criteria.head_stats_frame`) and every head's mean output
                     on the calibration reviews (the means the estimated costs ablate to)
  speed_sensitivity  per layer and (head configuration, FFN width) of the joint choices (`joint.layer_choices`), the
                     estimated cost on the first search validation reviews, from one backward pass
                     (`attribution.review_effects`): objective margin, the mean |first-order margin change|
                     (`joint.estimated_margin_change`), or loss, the estimated cross-entropy increase
                     (`joint.estimated_losses`). The exactly measured costs stay in experiments/speed_pruning.py.

speed/sensitivity_<ffn criterion>+<head criterion>.parquet, one row per (layer, head configuration, width):
  layer, heads_kept, kv_kept, width int; cost float (the objective's); objective str (margin | loss).
A speed plan (`plan.speed_plan`, rule prune_plan) restricts the joint table to its structure's choices
(`joint.restrict`) and allocates on the latency table (`plan.plan_speed`). No test review is read by any of these.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..data import read_split
from ..io import atomic_path, read_json, read_parquet, write_parquet
from ..models import open_checkpoint
from ..scores import mean_neuron_scores
from .attribution import review_effects
from .calibration import calibration_reviews
from .criteria import NeuronStats, importance
from .head_criteria import head_importance, head_stats_frame
from .joint import LatencyTable, LayerChoices, estimated_losses, estimated_margin_change, layer_choices, sensitivity_frame

log = logging.getLogger(__name__)

EFFECTS_BATCH = 8  # float32 backward passes, as experiments/head_criteria.py
OBJECTIVES = ("margin", "loss")


# ---- the per-model inputs -----------------------------------------------------------------
def read_latency_table(path) -> LatencyTable:
    return LatencyTable.from_dict(read_json(path))


def head_stats(finetuned, train, head_stats, head_means, reviews: int, threads: int | None, device: str) -> dict:
    """Rule head_stats: the head criteria's statistics (`head_stats`) and every head's mean output (`head_means`,
    npz arrays arr_<layer> [heads, head_dim]) on the first `reviews` calibration (train) reviews."""
    ck = open_checkpoint(finetuned, device, threads)
    cal, cal_y = calibration_reviews(read_split(train), ck, reviews)
    effects = review_effects(ck.model, cal, cal_y, ck.pad_id, ck.padding_side, EFFECTS_BATCH, neurons=False,
                             desc="calibration heads")
    with atomic_path(head_means) as tmp, open(tmp, "wb") as f:
        np.savez(f, *effects.head_means())
    write_parquet(head_stats_frame(effects), head_stats)
    return dict(reviews=len(cal))


def read_head_means(path) -> list[np.ndarray]:
    saved = np.load(path)
    return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def ffn_statistics(ffn_stats, neuron_scores=None, mask_gradients=None, contributions=None, obs_scores=None
                   ) -> NeuronStats:
    """What the FFN criteria read, from the workflow's files, as `plan.prune_plan` reads them."""
    cosine = mean_neuron_scores(neuron_scores) if neuron_scores is not None else None
    return NeuronStats.from_files(ffn_stats, mask_gradients, contributions, cosine=cosine, obs_scores=obs_scores)


def joint_choices(stats: NeuronStats, head_stats_df: pd.DataFrame, kv_heads: Sequence[int], ffn_criterion: str,
                  head_criterion: str, width_steps: int, structures: str = "joint") -> list[LayerChoices]:
    """Every layer's choices for `structures` (`joint.layer_choices`), the neurons ranked by `ffn_criterion`, the
    heads by `head_criterion`."""
    ffn_imp = importance(ffn_criterion, stats)
    head_imp = head_importance(head_criterion, head_stats_df)
    return [layer_choices(structures, f, h, k, width_steps) for f, h, k in zip(ffn_imp, head_imp, kv_heads)]


def estimated_costs(choices: Sequence[LayerChoices], effects, head_means, ffn_means, objective: str) -> list[np.ndarray]:
    """Per layer [head choices, widths]: the objective's estimated cost of each choice (module docstring)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
    heads, neurons = effects.head_attribution(head_means), effects.neuron_attribution(ffn_means)
    return [estimated_margin_change(c, h, n) if objective == "margin" else estimated_losses(c, effects.margins, h, n)
            for c, h, n in zip(choices, heads, neurons)]


def speed_sensitivity(finetuned, val, head_stats, head_means, sensitivity, ffn_stats, ffn_criterion: str,
                      head_criterion: str, objective: str, width_steps: int, reviews: int, threads: int | None,
                      device: str, neuron_scores=None, mask_gradients=None, contributions=None, obs_scores=None
                      ) -> dict:
    """Rule speed_sensitivity: the estimated cost table (module docstring) of the joint choices on the first
    `reviews` validation reviews."""
    ck = open_checkpoint(finetuned, device, threads)
    search = read_split(val)
    if reviews >= len(search):
        log.warning("%d search reviews asked for; the validation split has %d: using them all", reviews, len(search))
    search = search.iloc[:reviews]
    stats = ffn_statistics(ffn_stats, neuron_scores, mask_gradients, contributions, obs_scores)
    heads_df = read_parquet(head_stats)
    choices = joint_choices(stats, heads_df, ck.model.adapter.kv_head_counts(), ffn_criterion, head_criterion,
                            width_steps)
    effects = review_effects(ck.model, ck.encode(search["text"].tolist()), search["label"].to_numpy(), ck.pad_id,
                             ck.padding_side, EFFECTS_BATCH, desc="search reviews")
    costs = estimated_costs(choices, effects, read_head_means(head_means), stats["mean"], objective)
    write_parquet(sensitivity_frame(choices, costs, objective), sensitivity)
    return dict(reviews=len(search), choices=int(sum(c.size for c in costs)))


def read_costs(path, choices: Sequence[LayerChoices]) -> tuple[list[np.ndarray], str]:
    """(per layer [head choices, widths] costs, objective) of a cost table written for `choices`; a ValueError
    naming the file when its rows are not those choices (another width grid, model or head criterion)."""
    df = read_parquet(path).sort_values(["layer", "heads_kept", "kv_kept", "width"], kind="stable")
    costs = []
    for layer, c in enumerate(choices):
        part = df[df.layer == layer]
        want = sorted((h.query, h.kv, w) for h in c.heads for w in c.widths)
        if list(part[["heads_kept", "kv_kept", "width"]].itertuples(index=False, name=None)) != want:
            raise ValueError(f"{path}: layer {layer}'s rows are not the choices of this plan (another width grid or "
                             "model?); rebuild it with rule speed_sensitivity")
        index = {(q, kv, w): v for q, kv, w, v in part[["heads_kept", "kv_kept", "width", "cost"]].itertuples(
            index=False, name=None)}
        costs.append(np.array([[index[h.query, h.kv, w] for w in c.widths] for h in c.heads]))
    objective = set(df["objective"])
    if len(objective) != 1:
        raise ValueError(f"{path}: costs of several objectives {sorted(objective)}; rebuild it with rule speed_sensitivity")
    return costs, objective.pop()
