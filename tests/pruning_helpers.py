"""Score tables for pruning tests and the scratch workflow: the anatomy stage's schema, computed directly.

layer_scores.parquet: input_set, input_id, layer (0..L), cosine; neuron_scores.parquet: input_id, layer,
neuron, score = cos(value vector, final target token).
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import torch

from llm_anatomy.batching import pad

HIGH = 0.35  # the paper's high-neuron threshold, as params.yaml sets it


@torch.no_grad()
def quick_scores(model, tokenizer, texts, max_length: int = 64) -> tuple[pd.DataFrame, pd.DataFrame]:
    model.eval()
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    input_ids, mask = pad(ids, tokenizer.pad_token_id, "right")
    hidden = model.adapter.hidden_states(input_ids, mask)
    pos = model.adapter.target_positions(mask)
    rows = torch.arange(len(ids))
    target = torch.stack([h[rows, pos] for h in hidden], 1).double()  # [N, L+1, H]
    final = target[:, -1]
    cos = torch.nn.functional.cosine_similarity(target, final[:, None], dim=-1).numpy()
    n, L1 = cos.shape
    layer = pd.DataFrame({"input_set": "probe", "input_id": np.repeat(np.arange(n), L1),
                          "layer": np.tile(np.arange(L1), n).astype("int16"), "cosine": cos.reshape(-1).astype("float32")})
    parts = []
    for l in range(model.adapter.num_layers):
        v = model.adapter.value_vectors(l).double()
        s = torch.nn.functional.cosine_similarity(v[None], final[:, None], dim=-1).numpy()  # [N, F]
        parts.append(pd.DataFrame({"input_id": np.repeat(np.arange(n), s.shape[1]), "layer": np.int16(l),
                                   "neuron": np.tile(np.arange(s.shape[1]), n).astype("int32"),
                                   "score": s.reshape(-1).astype("float32")}))
    return layer, pd.concat(parts, ignore_index=True)


def calibration_frame(reviews) -> pd.DataFrame:
    return pd.DataFrame({"text": list(reviews), "label": [1, 0, 1, 1, 0][:len(reviews)]})


def run_chain(model, tokenizer, reviews, tmp_path, cfg: dict, seeds=(0, 1, 2), time_limit: int | None = None,
              high: float = HIGH, time_zeroed: bool = True, eval_limit: int | None = None,
              baseline_limit: int | None = None) -> dict:
    """Every prune step on one tiny model, as the workflow chains them; returns the artifacts' paths
    and the collected metrics record. The dense model reads every test review, the target its first
    `eval_limit` and the baselines their first `baseline_limit` (None: all), as a headline point's do."""
    from llm_anatomy.evaluate import evaluate_stage
    from llm_anatomy.models import save_classifier
    from llm_anatomy.pruning.calibration import ffn_activation_stats
    from llm_anatomy.pruning.evaluate import baselines_stage
    from llm_anatomy.pruning.gradients import mask_gradients
    from llm_anatomy.pruning.materialise import materialise
    from llm_anatomy.pruning.metrics import collect_target
    from llm_anatomy.pruning.plan import plan_stage
    from llm_anatomy.pruning.targets import Sizing
    from llm_anatomy.pruning.timing import timing_stage

    p = {k: tmp_path / v for k, v in dict(
        dense="dense", layer="layer_scores.parquet", neuron="neuron_scores.parquet", stats="ffn_stats.parquet",
        grads="mask_gradients.parquet", plan="plan.parquet", random="random_plans.parquet", pruned="pruned",
        dense_eval="eval_dense.parquet",
        eval="eval_pruned.parquet", baselines="baselines.parquet").items()}
    save_classifier(model, tokenizer, p["dense"], dict(max_length=64, truncation_side="right", padding_side="right",
                                                       precision="fp32"))
    layer, neuron = quick_scores(model, tokenizer, reviews)
    layer.to_parquet(p["layer"])
    neuron.to_parquet(p["neuron"])
    ffn_activation_stats(model, tokenizer(reviews)["input_ids"], tokenizer.pad_token_id).to_parquet(p["stats"])
    cfg = dict(cfg, focus_multiplier=cfg.get("focus_multiplier", 3))
    calibrated = cfg["rule"] in ("flap", "criterion")
    if cfg["rule"] == "criterion":
        mask_gradients(copy.deepcopy(model), tokenizer(reviews)["input_ids"], [1, 0, 1, 1, 0][:len(reviews)],
                       tokenizer.pad_token_id, batch_size=2).to_parquet(p["grads"])
    plan = plan_stage(cfg, p["layer"], p["neuron"], p["plan"], p["random"], list(seeds), high,
                      ffn_stats_path=p["stats"] if calibrated else None,
                      mask_gradients_path=p["grads"] if cfg["rule"] == "criterion" else None)
    train = calibration_frame(reviews)  # what a fitted compensation is fitted on (the workflow: the train split)
    materialise(p["dense"], p["plan"], p["pruned"], target="t", train=train, calibration_reviews=len(train))
    test = pd.DataFrame({"text": reviews * 4, "label": [1, 0, 1, 1, 0] * 4})
    acc = evaluate_stage(p["dense"], test, p["dense_eval"], batch_size=4, threads=1, device="cpu")
    acc_pruned = evaluate_stage(p["pruned"], test, p["eval"], eval_limit, batch_size=4, threads=1, device="cpu")
    baselines = baselines_stage(p["dense"], test, p["plan"], p["random"], p["baselines"], baseline_limit,
                                batch_size=4, threads=1,
                                device="cpu", train=train, calibration_reviews=len(train))
    sizing = Sizing(test_limit=len(test), baseline_limit=baseline_limit or len(test),
                    time_limit=time_limit or len(test), batch_size=4, repeats=3,
                    time_zeroed=time_zeroed, random_seeds=len(seeds), equality_check_reviews=8, calibration_reviews=len(reviews))
    timing = timing_stage(p["dense"], p["pruned"], p["plan"], test, sizing, threads=1, device="cpu")
    p["timing"] = tmp_path / "timing.json"
    p["timing"].write_text(json.dumps(timing))
    metrics = collect_target("m", "t", p["plan"], p["dense_eval"], p["eval"], p["baselines"], p["pruned"], p["timing"])
    return dict(paths=p, plan=plan, test=test, accuracy_dense=acc, accuracy=acc_pruned, baselines=baselines,
                timing=timing, metrics=metrics)
