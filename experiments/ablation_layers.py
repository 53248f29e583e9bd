"""Within-layer ranking evidence on a subset of layers: the `ablate` rule's sample and checks, with more random
neurons per layer and more reviews than the offline default affords, on the layers given (the upper layers
are the cheap ones: ablating a neuron of layer l recomputes L - l blocks). docs/ANATOMY.md, "Results".

    python experiments/ablation_layers.py RESULTS_MODEL_DIR VAL_PARQUET FIRST_LAYER PER_LAYER TAIL REVIEWS OUT_DIR [THREADS]
    python experiments/ablation_layers.py results/offline/smollm2 data/processed/offline/val.parquet 25 20 2 64 /tmp/abl

RESULTS_MODEL_DIR holds the model's finetuned/, neuron_scores.parquet, anatomy/contributions.parquet and
ffn_stats.parquet (as the pipeline writes them). Writes OUT_DIR/ablation_layers_{table.parquet,scores.csv,
tails.csv,summary.json}: the rule's tables restricted to layers >= FIRST_LAYER. Reads the validation split only.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

from llm_anatomy.ablation import (Ablator, ablate_each, importance_table, score_agreement, score_frame, tail_agreement,
                                  tail_neurons)
from llm_anatomy.data import read_split
from llm_anatomy.io import write_csv, write_parquet
from llm_anatomy.layout import ModelFiles
from llm_anatomy.logs import setup_logging
from llm_anatomy.models import open_checkpoint
from llm_anatomy.progress import progress


def main(model_dir, val_path, first: int, per_layer: int, tail: int, reviews: int, out: Path, threads: int = 2,
         seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    log = setup_logging(str(out / "ablation_layers.log"))
    files = ModelFiles(model_dir)  # the pipeline's names for the model folder's files (llm_anatomy.layout)
    start = time.perf_counter()
    ck = open_checkpoint(files.finetuned, "cpu", threads)
    val = read_split(val_path).iloc[:reviews]
    ablator = Ablator(ck.model, ck.encode(val["text"]), val["label"].to_numpy(), ck.pad_id, ck.padding_side, 8)
    table = importance_table(ablator, score_frame(files.neuron_scores, files.contributions, files.ffn_stats))
    widths = ablator.adapter.ffn_widths()
    rng = np.random.default_rng(seed)
    sample = [(l, int(j)) for l in range(first, len(widths))
              for j in np.sort(rng.choice(widths[l], size=per_layer, replace=False))]
    tails = {k: v for k, v in tail_neurons(table, tail).items() if k[0] >= first}
    timings = ablate_each(ablator, table, sample, tails, [], 1, lambda xs: progress(xs, desc="ablate (layers)"))
    flat = table.reset_index()
    flat = flat[flat["layer"] >= first].reset_index(drop=True)
    agreement, tails_table = score_agreement(flat, ablator.n_reviews, seed), tail_agreement(flat)
    write_parquet(flat, out / "ablation_layers_table.parquet")
    write_csv(agreement, out / "ablation_layers_scores.csv")
    write_csv(tails_table, out / "ablation_layers_tails.csv")
    summary = dict(layers=f"{first}..{len(widths) - 1}", per_layer=per_layer, tail=tail, reviews=ablator.n_reviews,
                   **timings, seconds=time.perf_counter() - start)
    (out / "ablation_layers_summary.json").write_text(json.dumps(summary, indent=1))
    log.info("%s", summary)
    return summary


if __name__ == "__main__":
    a = sys.argv[1:]
    main(Path(a[0]), a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), Path(a[6]), int(a[7]) if len(a) > 7 else 2)
