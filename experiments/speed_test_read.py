"""The final read of speed points chosen on validation (experiments/speed_pruning.py): each saved pruned folder
evaluated once on the first headline test reviews of the offline profile (the evidence issue's count: the
dense model's own evaluation, results/offline/<MODEL>/eval_test.parquet, which the pipeline wrote), paired with
the dense model's logits on the same reviews. Run from the repository root of an offline run:

    python experiments/speed_test_read.py MODEL FOLDER [FOLDER ...]
    python experiments/speed_test_read.py minilm results/offline/minilm/speed/fluctuation-joint-refit-x1.6-...

Per folder: accuracy, the paired difference against dense with its 95% bootstrap interval (unadjusted, as every
interval the project reports) and the exact McNemar p; the p-values Holm-adjusted over the folders of this call
(one family per model, as `stats.FAMILIES["summary"]`), and the verdict that follows. Writes each folder's
logits to <folder>-test.parquet and the table to speed/test_read-<MODEL>.csv. Refuses a folder whose test
logits exist: the test split is read once per choice (--again reads it again, and the table says so).
"""
import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from llm_anatomy.config import check_schema, load_params
from llm_anatomy.data import read_split
from llm_anatomy.inference import evaluate_folder
from llm_anatomy.io import read_json, write_csv
from llm_anatomy.layout import SCHEMA, Layout, folder_file
from llm_anatomy.logits import correct, read_logits
from llm_anatomy.pruning.targets import Targets
from llm_anatomy.stats import FAMILIES, accuracy_interval, judge, paired_difference

PROFILE = "offline"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--again", action="store_true", help="read the test reviews again for folders read before")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = load_params("params.yaml")
    check_schema(config, SCHEMA)
    config["profile"] = PROFILE
    targets = Targets(config)
    sizing = targets.sizing(args.model)  # the dense evaluation's sizes: the headline count of test reviews
    layout, files = Layout(PROFILE), Layout(PROFILE).model(args.model)
    dense, _ = read_logits(files.dense_eval("test"))
    if len(dense) < sizing.test_limit:
        raise SystemExit(f"{files.dense_eval('test')} holds {len(dense)} reviews, fewer than the headline "
                         f"{sizing.test_limit}: run the pipeline's evaluate_dense first")
    dense = dense.iloc[: sizing.test_limit]
    outs = {f: f.with_name(f"{f.name}-test.parquet") for f in args.folders}
    read_before = [str(o) for o in outs.values() if o.exists()]
    if read_before and not args.again:
        raise SystemExit(f"already read on the test reviews: {read_before}; the test split is read once per "
                         "choice (--again reads it again, and the table records it)")
    missing = [str(f) for f in args.folders if not folder_file(f, "pruning").exists()]
    if missing:
        raise SystemExit(f"not a saved speed point (no pruning.json): {missing}")
    test = read_split(layout.split("test"))
    base = correct(dense["logit"], dense["label"])
    rows = []
    for folder, out in outs.items():
        evaluate_folder(folder, test, out, sizing.test_limit, sizing.batch_size, targets.profile["threads"], "cpu")
        got, _ = read_logits(out)
        if not got[["review", "label"]].reset_index(drop=True).equals(dense[["review", "label"]].reset_index(drop=True)):
            raise SystemExit(f"{out}: its reviews are not the dense evaluation's")
        outcome = correct(got["logit"], got["label"])
        acc, diff = accuracy_interval(outcome), paired_difference(outcome, base)
        validation = read_json(folder_file(folder, "pruning"))["validation"]
        rows.append(dict(model=args.model, point=folder.name, reviews=len(got), read_again=bool(args.again and
                         str(out) in read_before), accuracy=acc.value, accuracy_lo=acc.lo, accuracy_hi=acc.hi,
                         dense_accuracy=float(base.mean()), **diff.to_dict("vs_dense"),
                         validation_vs_dense=validation["vs_dense"][0] / 100,
                         predicted_speedup=validation["predicted_speedup"]))
    table = judge(pd.DataFrame(rows), "vs_dense", FAMILIES["summary"])
    write_csv(table, files.speed(f"test_read-{args.model}.csv"))
    for row in table.to_dict("records"):
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
