"""The baselines of one target, evaluated in memory on the dense checkpoint (never saved as folders).

baselines_<split>.parquet (the eval schema of `llm_anatomy.evaluate`, with a `variant` column):
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

from ..device import describe, model_device
from ..batching import encode_reviews
from ..evaluate import predict_logits
from ..logits import accuracy_of, first_reviews, logits_frame, write_logits
from ..models import load_classifier, set_threads
from .materialise import pruned_copy
from .plan import read_plan, read_random_plans
from .refit import CalibrationSet

log = logging.getLogger(__name__)


def baselines_stage(dense_dir, split: pd.DataFrame, plan_path, random_path, out_path, limit: int | None = None,
                    batch_size: int = 32, threads: int | None = None, device: str = "auto",
                    train: pd.DataFrame | None = None, calibration_reviews: int = 0) -> dict[str, float]:
    """Per-review logits of every baseline variant of a plan; returns {variant: accuracy}. A plan with a
    fitted compensation has its random baselines fitted the same way, on the first `calibration_reviews`
    reviews of `train`."""
    set_threads(threads)
    start = time.perf_counter()
    model, tokenizer, meta = load_classifier(dense_dir, device)
    reviews = first_reviews(split, limit, f"{out_path}")
    encoded = encode_reviews(tokenizer, meta, reviews["text"])
    kw = dict(batch_size=batch_size, precision=meta.get("precision", "fp32"),
              padding_side=meta.get("padding_side", "right"))
    randoms = read_random_plans(random_path)
    variants = {f"random-{p.info['seed']}": p for p in randoms}
    plan = read_plan(plan_path)
    calibration = None
    if plan.fitted:
        if train is None:
            raise ValueError(f"{plan_path}: the random baselines of a {plan.compensation}-compensated plan are fitted "
                             "on the train split's calibration reviews; pass train")
        calibration = CalibrationSet.from_split(train, tokenizer, meta, calibration_reviews)
    if plan.compensated:
        variants["uncompensated"] = plan.without_compensation()
        variants.update({f"random-{p.info['seed']}-uncompensated": p.without_compensation() for p in randoms})
    frames, acc = [], {}
    for name, variant_plan in variants.items():
        pruned = pruned_copy(model, variant_plan, "removed", calibration)
        logits = predict_logits(pruned, encoded, tokenizer.pad_token_id, **kw, desc=name)
        del pruned
        frames.append(logits_frame(logits, reviews["label"], variant=name))
        acc[name] = accuracy_of(frames[-1])
        log.info("%s: accuracy %.4f on %d reviews", name, acc[name], len(reviews))
    info = dict(model=str(dense_dir), plan=str(plan_path), reviews=len(reviews), variants=list(variants),
                device=describe(model_device(model)), precision=kw["precision"], batch_size=batch_size,
                seconds=time.perf_counter() - start)
    write_logits(pd.concat(frames, ignore_index=True), out_path, info)
    return acc
