"""This machine's latency table for a fine-tuned model (`pruning.latency`), and how well it predicts whole pruned
passes: measured (or read from the cache) on the first REF validation reviews, then checked against the loop
timing the dense model and pruned copies over the first CHECK validation reviews (5 alternating repeats).

    python experiments/latency_table.py MODEL REF CHECK [REPEATS]
    python experiments/latency_table.py minilm 128 500
    python experiments/latency_table.py smollm2 128 256 7   # 7 alternating rounds per cell (default 3)

The shapes checked: every layer's FFN at 50%, every layer at half its heads, both, and an uneven joint shape
(the lower half of the layers at a quarter of their heads and width, the upper half dense). Writes the table to
the offline run's latency cache (`Layout.latency`) and the check beside it (latency_check_<MODEL>.json); prints the
CPU. The table's seconds are for the REF reviews and the check's for the CHECK reviews: compare the speedups
(`speedup` against `predicted_speedup`), not the seconds, unless REF == CHECK. Reads the fine-tuned model and the
val split only (experiments/speed_pruning.py reads the same table: keep REF at its --latency-reviews).
"""
import json
import logging
import sys
import time
from pathlib import Path

from llm_anatomy.data import read_split
from llm_anatomy.device import machine_info
from llm_anatomy.io import write_json
from llm_anatomy.layout import Layout
from llm_anatomy.models import open_checkpoint
from llm_anatomy.pruning.joint import head_configurations
from llm_anatomy.pruning.latency import cached_table, check_predictions

import torch


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    name, nref, ncheck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    layout = Layout("offline")
    ck = open_checkpoint(layout.model(name).finetuned, threads=2)
    val = read_split(layout.split("val"))
    ref = ck.encode(val["text"].iloc[:nref].tolist())
    check = ck.encode(val["text"].iloc[:ncheck].tolist())
    start = time.time()
    table, path = cached_table(ck.model, ref, ck.pad_id, ck.padding_side, ck.precision, 32, layout.latency, repeats)
    measured = time.time() - start
    a = ck.model.adapter
    L = a.num_layers
    dense_heads = [(a.attention(l).heads, a.attention(l).kv_heads) for l in range(L)]
    widths = [a.ffn_width(l) for l in range(L)]

    def nearest(q, kv, share):  # the configuration keeping closest to `share` of the query heads (more kv heads on ties)
        return min(head_configurations(q, kv), key=lambda c: (abs(c[0] - share * q), -c[1]))

    half = [nearest(q, kv, 0.5) for q, kv in dense_heads]
    quarter = [nearest(q, kv, 0.25) for q, kv in dense_heads]
    shapes = {"ffn 50%": (dense_heads, [w // 2 for w in widths]),
              "heads 50%": (half, widths),
              "heads and ffn 50%": (half, [w // 2 for w in widths]),
              "lower half at 25%": ([quarter[l] if l < L // 2 else dense_heads[l] for l in range(L)],
                                    [widths[l] // 4 if l < L // 2 else widths[l] for l in range(L)])}
    rows = check_predictions(ck.model, table, check, ck.pad_id, ck.padding_side, ck.precision, 32, list(shapes.values()))
    for label, row in zip([*shapes, "dense"], rows):
        row["shape"] = label
    out = dict(model=name, machine=machine_info(torch.device("cpu")), table=str(path), table_seconds=measured,
               ref_reviews=nref, check_reviews=ncheck, base=table.base, dense_measured_ref=table.dense,
               body_dense=table.layer_seconds(*dense_heads[0], widths[0]),
               readout_dense=table.layer_seconds(*dense_heads[-1], widths[-1], last=True), check=rows)
    write_json(Path(path).with_name(f"latency_check_{name}.json"), out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
