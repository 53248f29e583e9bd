"""Which per-head criterion ranks attention heads by what removing them does: each criterion of
`pruning.head_criteria` (measured on the first CAL labelled train reviews, the calibration reviews) against the
exact effect of removing each head alone, measured on the first VAL validation reviews in float32
(`pruning.sensitivity.head_sensitivity`: the blocks below replay their cached dense outputs):

  loss_mean    validation loss increase with the head's output pinned to its calibration mean (the bias fold)
  margin_mean  |mean margin change| of the same (what the neuron check of docs/ANATOMY.md ranks against)
  loss_zero    validation loss increase with the head zeroed (removal without compensation)

Spearman's rho with 95% bootstrap intervals, pooled over layers and within layers. Two more rows are not
criteria but checks of the first-order estimate itself: `attribution (val)` and `loss-estimate (val)` are
the same quantities as `attribution` and `loss-estimate`, measured on the validation reviews the exact
effects are measured on.

    python experiments/head_criteria.py MODEL CAL VAL [LAYERS]
    python experiments/head_criteria.py minilm 128 128
    python experiments/head_criteria.py smollm2 128 64 1,4,7,10,13,16,19,22,25,28

LAYERS (default: every layer) limits the exact ablations to those layers (SmolLM2's 270 heads in float32 cost
hours on two shared cores). Writes the offline run's head_criteria_stats, head_criteria and head_agreement files
(`llm_anatomy.layout.ModelFiles`); reads its fine-tuned model and its train and val splits, never the test split.
"""
import json
import logging
import sys
import time

import numpy as np
import pandas as pd
import torch

from llm_anatomy.ablation import Ablator, effect_summary
from llm_anatomy.data import read_split
from llm_anatomy.io import write_csv, write_parquet
from llm_anatomy.layout import Layout
from llm_anatomy.models import open_checkpoint
from llm_anatomy.pruning.attribution import review_effects
from llm_anatomy.pruning.calibration import calibration_reviews
from llm_anatomy.pruning.head_criteria import HEAD_CRITERIA, criterion_agreement, head_stats_frame
from llm_anatomy.pruning.sensitivity import head_sensitivity


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    name, ncal, nval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    layout = Layout("offline")
    files = layout.model(name)
    start = time.time()
    ck = open_checkpoint(files.finetuned, threads=2)
    cal, cal_y = calibration_reviews(read_split(layout.split("train")), ck, ncal)
    cal_effects = review_effects(ck.model, cal, cal_y, ck.pad_id, ck.padding_side, 8, neurons=False,
                                 desc="calibration")
    stats = head_stats_frame(cal_effects)
    write_parquet(stats, files.head_criteria_stats)
    means = cal_effects.head_means()  # the calibration means the bias fold (and the mean-ablation) uses
    table = stats[["layer", "head"]].copy()
    for c, crit in HEAD_CRITERIA.items():
        table[c] = crit.compute(stats)
    # the first-order estimates on the validation reviews themselves, with the calibration means
    val = read_split(layout.split("val")).iloc[:nval]
    venc, vy = ck.encode(val["text"].tolist()), val["label"].to_numpy()
    val_effects = review_effects(ck.model, venc, vy, ck.pad_id, ck.padding_side, 8, neurons=False, desc="validation")
    for l, a in enumerate(val_effects.head_attribution(means)):
        rows = table["layer"] == l
        table.loc[rows, "attribution (val)"] = np.abs(a.mean(0))
        table.loc[rows, "loss-estimate (val)"] = effect_summary(a.T, val_effects.margins)["exact_loss_effect"]

    L = ck.model.adapter.num_layers
    layers = [int(x) for x in sys.argv[4].split(",")] if len(sys.argv) > 4 else list(range(L))
    ablator = Ablator(ck.model, venc, vy, ck.pad_id, ck.padding_side, 8)
    pinned = [torch.tensor(m, dtype=torch.float32) for m in means]
    options = [[np.array([h]) for h in range(ck.model.adapter.attention(l).heads)] if l in layers else []
               for l in range(L)]
    logging.info("exact ablation of %d heads on %d validation reviews", sum(map(len, options)), len(vy))
    mean_abl = head_sensitivity(ablator, options, pinned, desc="heads pinned to their means")
    zero_abl = head_sensitivity(ablator, options, None, desc="heads zeroed")
    exact = pd.DataFrame({"layer": mean_abl["layer"].to_numpy(), "head": [h[0] for h in mean_abl["heads"]],
                          "loss_mean": mean_abl["loss_increase"].to_numpy(),
                          "margin_signed": mean_abl["margin_change"].to_numpy(),
                          "margin_mean": mean_abl["margin_change"].abs().to_numpy(),
                          "loss_zero": zero_abl["loss_increase"].to_numpy()}).astype({"layer": "int16", "head": "int16"})
    table = table.merge(exact, on=["layer", "head"])
    write_csv(table, files.head_criteria)
    criteria = [*HEAD_CRITERIA, "attribution (val)", "loss-estimate (val)"]
    agree = criterion_agreement(table, criteria, ["loss_mean", "margin_mean", "loss_zero"])
    write_csv(agree, files.head_agreement)
    print(json.dumps(dict(model=name, calibration_reviews=ncal, validation_reviews=len(vy), heads=len(table),
                          layers=layers, seconds=round(time.time() - start))))
    for r in agree.itertuples():
        print(json.dumps(dict(criterion=r.criterion, effect=r.effect,
                              pooled=[round(r.spearman, 3), round(r.spearman_lo, 3), round(r.spearman_hi, 3)],
                              within_layer=[round(r.spearman_within_layer, 3), round(r.spearman_within_layer_lo, 3),
                                            round(r.spearman_within_layer_hi, 3)])), flush=True)


if __name__ == "__main__":
    main()
