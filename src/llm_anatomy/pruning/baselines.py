"""One target evaluated (rule evaluate_pruned): its materialised folder, then its baselines, built in memory from
the dense checkpoint (never saved as folders).

baselines_<split>.parquet (the eval schema of `llm_anatomy.logits`, with a `variant` column):
  random-<seed>   the plan's random baseline for that seed (its per-layer counts, high neurons kept),
                  treated as the plan is: compensated the same way (bias fold, or fitted) when the plan is
compensated plans only, so that choosing the neurons and compensating are separated in every row:
  uncompensated                the plan itself without its compensation
  random-<seed>-uncompensated  the random baseline without compensation
"""
from __future__ import annotations

import logging
import time

import pandas as pd

from ..data import read_split
from ..device import describe, model_device
from ..inference import evaluate_folder, predict_logits
from ..logits import accuracy_of, first_reviews, logits_frame, write_logits
from ..models import open_checkpoint
from .materialise import calibration_set, pruned_copy
from .plan import read_plan, read_random_plans

log = logging.getLogger(__name__)


def evaluate_pruned(finetuned, pruned, split, plan, random_plans, eval, baselines, fit: dict | None,
                    limit: int | None, baseline_limit: int | None, batch_size: int, threads: int | None, device: str,
                    train=None) -> dict:
    """Rule evaluate_pruned: per-review logits of the `pruned` folder (`eval`, the first `limit` reviews) and of
    every baseline variant of its plan (`baselines`, the first `baseline_limit` of the same reviews: a headline
    point reads more reviews than its baselines); a fitted plan's random baselines are fitted on the calibration
    reviews `fit` names, as the plan was."""
    reviews = read_split(split)
    accuracy = evaluate_folder(pruned, reviews, eval, limit, batch_size, threads, device)
    return dict(accuracy=accuracy, baselines=evaluate_baselines(finetuned, reviews, plan, random_plans, baselines,
                                                                fit, baseline_limit, batch_size, threads, device,
                                                                train))


def evaluate_baselines(finetuned, split: pd.DataFrame, plan, random_plans, baselines, fit: dict | None,
                       limit: int | None, batch_size: int, threads: int | None, device: str,
                       train=None) -> dict[str, float]:
    """Per-review logits of every baseline variant of a plan; returns {variant: accuracy}."""
    start = time.perf_counter()
    ck = open_checkpoint(finetuned, device, threads)
    reviews = first_reviews(split, limit, f"{baselines}")
    encoded = ck.encode(reviews["text"])
    kw = dict(batch_size=batch_size, precision=ck.precision, padding_side=ck.padding_side)
    randoms = read_random_plans(random_plans)
    variants = {f"random-{p.info.seed}": p for p in randoms}
    the_plan = read_plan(plan)
    calibration = calibration_set(the_plan, ck, fit, train, plan)
    if the_plan.compensated:
        variants["uncompensated"] = the_plan.without_compensation()
        variants.update({f"random-{p.info.seed}-uncompensated": p.without_compensation() for p in randoms})
    frames, acc = [], {}
    for name, variant_plan in variants.items():
        logits = predict_logits(pruned_copy(ck.model, variant_plan, "removed", calibration), encoded, ck.pad_id, **kw, desc=name)
        frames.append(logits_frame(logits, reviews["label"], variant=name))
        acc[name] = accuracy_of(frames[-1])
        log.info("%s: accuracy %.4f on %d reviews", name, acc[name], len(reviews))
    info = dict(model=str(finetuned), plan=str(plan), reviews=len(reviews), variants=list(variants),
                device=describe(model_device(ck.model)), precision=kw["precision"], batch_size=batch_size,
                seconds=time.perf_counter() - start)
    write_logits(pd.concat(frames, ignore_index=True), baselines, info)
    return acc
