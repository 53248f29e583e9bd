"""Score tables for pruning tests and the scratch workflow: the anatomy stage's schema, computed directly.

layer_scores.parquet: input_set, input_id, layer (0..L), cosine; neuron_scores.parquet: input_id, layer,
neuron, score = cos(value vector, final target token).
"""
from __future__ import annotations

from pathlib import Path

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


def run_chain(model, tokenizer, reviews, tmp_path, spec, seeds=(0, 1, 2), time_limit: int | None = None,
              high: float = HIGH, time_zeroed: bool = True, eval_limit: int | None = None,
              baseline_limit: int | None = None) -> dict:
    """Every prune step on one tiny model, by the stage functions the workflow's rules call (`spec`: a
    MethodSpec); returns the artifacts' paths and the metrics record. The dense model reads every test review,
    the target its first `eval_limit` and the baselines their first `baseline_limit` (None: all), as a headline
    point's do."""
    from llm_anatomy.inference import evaluate_folder
    from llm_anatomy.io import read_json
    from llm_anatomy.layout import ModelFiles, TargetFiles
    from llm_anatomy.models import save_classifier
    from llm_anatomy.pruning.baselines import evaluate_baselines
    from llm_anatomy.pruning.chain import prune_model
    from llm_anatomy.pruning.metrics import PruneMetrics, prune_metrics
    from llm_anatomy.pruning.plan import read_plan
    from llm_anatomy.pruning.timing import time_pruned

    files, target = ModelFiles(tmp_path), TargetFiles(tmp_path / "prune")
    p = dict(dense=files.finetuned, layer=files.layer_scores, neuron=files.neuron_scores, stats=files.ffn_stats,
             plan=target.plan, random=target.random_plans, pruned=tmp_path / "pruned", dense_eval=files.dense_eval("test"),
             eval=target.eval("test"), baselines=target.baselines("test"), timing=target.timing,
             train=tmp_path / "train.parquet", test=tmp_path / "test.parquet")
    p = {k: Path(v) for k, v in p.items()}
    save_classifier(model, tokenizer, p["dense"], dict(max_length=64, truncation_side="right", padding_side="right",
                                                       precision="fp32"))
    layer, neuron = quick_scores(model, tokenizer, reviews)
    layer.to_parquet(p["layer"])
    neuron.to_parquet(p["neuron"])
    calibration_frame(reviews).to_parquet(p["train"])  # what a fitted compensation is fitted on (the workflow: train)
    test = pd.DataFrame({"text": reviews * 4, "label": [1, 0, 1, 1, 0] * 4})
    test.to_parquet(p["test"])
    fit = dict(reviews=len(reviews), batch_size=2) if spec.fitted else None
    prune_model(p["dense"], files, spec, p["train"], p["pruned"], tmp_path, calibration_reviews=len(reviews),
                       batch_size=4, calibration_batch_size=2, ridge=1e-2, high_threshold=high, average_over="probe",
                       seeds=seeds, threads=1)
    run = dict(batch_size=4, threads=1, device="cpu")
    acc = evaluate_folder(p["dense"], test, p["dense_eval"], None, **run)
    acc_pruned = evaluate_folder(p["pruned"], test, p["eval"], eval_limit, **run)
    baselines = evaluate_baselines(p["dense"], test, p["plan"], p["random"], p["baselines"], fit, baseline_limit, **run,
                                   train=p["train"])
    time_pruned(p["dense"], p["pruned"], p["plan"], p["test"], p["timing"], time_limit=time_limit or len(test),
                batch_size=4, repeats=3, time_zeroed=time_zeroed, equality_check_reviews=8, threads=1, device="cpu")
    prune_metrics(p["plan"], p["random"], p["pruned"], p["dense_eval"], p["eval"], p["baselines"], p["timing"],
                  target.metrics, "m", "t")
    return dict(paths=p, plan=read_plan(p["plan"]), test=test, accuracy_dense=acc, accuracy=acc_pruned, baselines=baselines,
                timing=read_json(p["timing"]), metrics=PruneMetrics.from_dict(read_json(target.metrics)))
