"""Pruning to a target speedup on the latency model: FFN neurons only, attention heads only, or both under one
budget (`pruning.joint`, `plan.plan_speed`), each compensated as the pipeline compensates (refit by default,
with params.yaml's `pruning.methods` ridge and readout_ridge), and evaluated on held-out reviews against the
dense model (paired bootstrap intervals, McNemar). Every choice is made on validation reviews; the test split
is never read. Run from the repository root of an offline run (its results/offline/<MODEL>/ and data/processed/):

    python experiments/speed_pruning.py MODEL [options]
    python experiments/speed_pruning.py minilm --speedups 1.4,1.6,1.8,2.0 --structures ffn,heads,joint
    python experiments/speed_pruning.py minilm --sensitivity measured --speedups 1.8 --save
    python experiments/speed_pruning.py smollm2 --ffn-criterion wanda-sp --cal 64 --speedups 1.2,1.3,1.4,1.5
    # the smoke test (small sizes; refuses to measure a latency table of its own):
    python experiments/speed_pruning.py minilm --cal 16 --search 16 --extra 16 --speedups 1.5 \\
        --structures ffn,heads,joint --no-measure

What it reads and writes (paths from `llm_anatomy.layout.Layout("offline")`):
- the latency table of this machine (`pruning.latency.cached_table`, cached under `Layout.latency`), timed on
  the first --latency-reviews validation reviews (default 128) at the evaluation's batch size and the default
  width grid, at the profile's thread count (--threads): measured once per machine and then read from the cache
  (--no-measure: stop instead of measuring one when it is not there);
- head statistics on the first --cal labelled train reviews (the calibration reviews; default the profile's
  calibration_reviews): the head criterion and the heads' calibration means (`pruning.speed.head_stats`, the
  pipeline's rule head_stats; cached in speed/heads_cal<N>.*);
- the FFN criterion's calibration statistics (ffn_stats.parquet and what the criterion reads besides);
- the sensitivity on the first --search validation reviews (default 256): `estimated` (one backward pass:
  per-review attributions of heads and neurons, `pruning.speed.estimated_costs` as the pipeline's rule
  speed_sensitivity; --objective margin, the default: the mean |margin change|, `joint.estimated_margin_change`;
  loss: `joint.estimated_losses`, which on MiniLM is negative and over-prunes) or `measured` (every head choice
  and FFN fraction ablated exactly, float32; loss only: this experiment's alone, the pipeline estimates), cached
  in speed/costs-<criteria>-<kind>-<objective>-c<cal>-s<search>-w<steps>.parquet (`speed` module's columns);
- then per structure and speedup: the plan, the compensated pruned model (calibration reviews as the pipeline's
  materialise), its logits on the held-out reviews: validation reviews --search..end and --extra reviews of the
  IMDB train half in neither the offline train nor val split (`heldout.py`).
One JSON line per point: the predicted speedup and cost, the kept heads and widths, accuracy against
dense with the paired interval and McNemar p, the cross-entropy difference; with --save, the pruned folder
(speed/<point>-<sensitivity>-<objective>/, or under the folder given) written atomically: it loads with
`llm_anatomy.load_pruned` / `load_classifier` and holds plan.parquet and pruning.json (time it with
benchmarks/prune_speed.py --folders).
"""
import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from heldout import heldout_reviews
from llm_anatomy.ablation import Ablator
from llm_anatomy.config import check_schema, load_params, resolve_path
from llm_anatomy.costs import count_parameters
from llm_anatomy.data import read_split
from llm_anatomy.inference import predict_logits
from llm_anatomy.io import atomic_dir, read_parquet, write_json, write_parquet
from llm_anatomy.layout import SCHEMA, Layout, folder_file
from llm_anatomy.models import open_checkpoint, save_classifier
from llm_anatomy.pruning.attribution import review_effects
from llm_anatomy.pruning.compensation import FITTED
from llm_anatomy.pruning.criteria import NeuronStats, criterion_inputs, importance
from llm_anatomy.pruning.head_criteria import head_importance
from llm_anatomy.pruning.joint import SpeedMethod, layer_choices, measured_losses, restrict, sensitivity_frame
from llm_anatomy.pruning.latency import cached_table, signature, table_path
from llm_anatomy.pruning.materialise import pruned_copy
from llm_anatomy.pruning.plan import plan_speed, write_plan
from llm_anatomy.pruning.refit import CalibrationSet
from llm_anatomy.pruning.sensitivity import head_sensitivity, sensitivity_table
from llm_anatomy.pruning.speed import EFFECTS_BATCH, estimated_costs, head_stats, read_costs, read_head_means
from llm_anatomy.pruning.targets import Targets
from llm_anatomy.stats import paired_difference

PROFILE = "offline"
FFN_FRACTIONS = [i / 8 for i in range(1, 9)]  # measured sensitivity: the FFN fractions ablated (interpolated between)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--ffn-criterion", default="fluctuation")
    ap.add_argument("--head-criterion", default="fluctuation")
    ap.add_argument("--structures", default="ffn,heads,joint")
    ap.add_argument("--speedups", default="1.4,1.6,1.8")
    ap.add_argument("--compensation", default="refit")
    ap.add_argument("--sensitivity", choices=["estimated", "measured"], default="estimated")
    ap.add_argument("--objective", choices=["margin", "loss"], default="margin",
                    help="what the allocation minimises (estimated sensitivity): the mean |first-order margin change| "
                         "or the cross-entropy increase (measured sensitivity: loss only)")
    ap.add_argument("--cal", type=int, help="calibration train reviews (default: the profile's calibration_reviews)")
    ap.add_argument("--search", type=int, default=256, help="the first validation reviews: the sensitivity")
    ap.add_argument("--latency-reviews", type=int, default=128, help="the first validation reviews: the latency table")
    ap.add_argument("--latency-repeats", type=int, default=3)
    ap.add_argument("--no-measure", action="store_true",
                    help="stop if this machine's latency table is not cached, rather than measure it")
    ap.add_argument("--extra", type=int, default=1000, help="held-out train-half reviews added to the evaluation")
    ap.add_argument("--width-steps", type=int, default=32)
    ap.add_argument("--threads", type=int, help="torch threads (default: the profile's; the latency table's key)")
    ap.add_argument("--save", nargs="?", const="", metavar="DIR",
                    help="write each pruned folder, under DIR or the model's speed/ folder")
    args = ap.parse_args()
    if args.sensitivity == "measured" and args.objective != "loss":
        ap.error("--sensitivity measured has the exact loss increase only; add --objective loss")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    config = load_params("params.yaml")
    check_schema(config, SCHEMA)  # fills the schema's defaults
    config["profile"] = PROFILE
    targets = Targets(config)
    sizing, methods = targets.sizing(args.model), targets.pruning["methods"]
    ncal = args.cal or sizing.calibration_reviews
    threads = args.threads or targets.profile["threads"]
    layout = Layout(PROFILE)
    files = layout.model(args.model)
    ck = open_checkpoint(files.finetuned, threads=threads)
    model, batch = ck.model, sizing.batch_size
    train, val = read_split(layout.split("train")), read_split(layout.split("val"))
    if args.search >= len(val):
        raise SystemExit(f"--search {args.search} leaves none of the {len(val)} validation reviews to evaluate on")

    ref = ck.encode(val["text"].iloc[: args.latency_reviews].tolist())
    cached = table_path(layout.latency, signature(model, [len(e) for e in ref], ck.precision, batch))
    if args.no_measure and not cached.exists():
        raise SystemExit(f"no cached latency table {cached} (--no-measure); run without --no-measure to measure it")
    table, table_file = cached_table(model, ref, ck.pad_id, ck.padding_side, ck.precision, batch, layout.latency,
                                      args.latency_repeats)
    logging.info("latency table %s: dense %.3f s predicted %.3f s", table_file, table.dense, table.dense_predicted)

    search = val.iloc[: args.search]
    search_enc = ck.encode(search["text"].tolist())
    mirror = resolve_path(config["data"]["mirror_dir"], ".")
    held = pd.concat([val.iloc[args.search:], heldout_reviews(args.extra, mirror, layout)], ignore_index=True)
    held_enc, held_y = ck.encode(held["text"].tolist()), held["label"].to_numpy()

    head_means, heads_df = _head_statistics(files.finetuned, layout.split("train"), ncal, threads,
                                            files.speed(f"heads_cal{ncal}"))
    stats_files = files.files("ffn_stats", *criterion_inputs(args.ffn_criterion))
    ffn_stats = NeuronStats.from_files(**stats_files)
    ffn_imp = importance(args.ffn_criterion, ffn_stats)
    head_imp = head_importance(args.head_criterion, heads_df)
    kv = model.adapter.kv_head_counts()
    structures = args.structures.split(",")
    choices = {s: [layer_choices(s, f, h, k, args.width_steps) for f, h, k in zip(ffn_imp, head_imp, kv)]
               for s in structures}
    joint = [layer_choices("joint", f, h, k, args.width_steps) for f, h, k in zip(ffn_imp, head_imp, kv)]
    tag = (f"{args.ffn_criterion}+{args.head_criterion}-{args.sensitivity}-{args.objective}-c{ncal}-s{args.search}"
           f"-w{args.width_steps}")
    losses_joint = _sensitivity(args.sensitivity, args.objective, ck, search_enc, search["label"].to_numpy(), joint, head_means,
                                ffn_stats, ffn_imp, Path(files.speed(f"costs-{tag}.parquet")))

    dense_logits = predict_logits(model, held_enc, ck.pad_id, batch, ck.precision, ck.padding_side)
    base = _outcomes(dense_logits, held_y)
    fitted = args.compensation in FITTED
    ridges = dict(ridge=methods["ridge"], readout_ridge=methods["readout_ridge"]) if fitted else {}
    print(json.dumps(dict(model=args.model, reviews=len(held_y), validation_reviews=len(val) - args.search,
                          extra_reviews=args.extra, dense_accuracy=round(float(base["acc"].mean()), 4),
                          latency_table=str(table_file), latency_reviews=args.latency_reviews, threads=threads,
                          sensitivity=args.sensitivity, objective=args.objective,
                          search_reviews=args.search, calibration_reviews=ncal,
                          **ridges)), flush=True)
    calibration = CalibrationSet.from_split(train, ck, ncal, sizing.calibration_batch_size)
    for structure in structures:
        layer_sets = choices[structure]
        losses = [restrict(lj, cj, c) for lj, cj, c in zip(losses_joint, joint, layer_sets)]
        crit = args.head_criterion if structure == "heads" else args.ffn_criterion
        for speedup in (float(s) for s in args.speedups.split(",")):
            method = SpeedMethod(crit, structure, args.compensation, speedup, args.head_criterion, **ridges)
            start = time.time()
            try:
                plan = plan_speed(method, layer_sets, losses, table, ffn_stats, args.sensitivity, args.objective)
            except ValueError as err:
                print(json.dumps(dict(point=method.name, error=str(err))), flush=True)
                continue
            removed = pruned_copy(model, plan, "removed", calibration)
            fit_s = time.time() - start
            got = _outcomes(predict_logits(removed, held_enc, ck.pad_id, batch, ck.precision, ck.padding_side), held_y)
            acc, ce = paired_difference(got["acc"], base["acc"]), paired_difference(got["ce"], base["ce"])
            s = plan.info.search
            row = dict(point=method.name, head_criterion=args.head_criterion if structure == "joint" else None,
                       predicted_speedup=round(s["predicted_speedup"], 3),
                       predicted_cost=round(s["predicted_cost"], 4), objective=s["objective"],
                       heads=removed.adapter.head_counts(), kv_heads=removed.adapter.kv_head_counts(),
                       widths=removed.adapter.ffn_widths(), accuracy=round(float(got["acc"].mean()), 4),
                       vs_dense=[round(100 * x, 2) for x in (acc.diff, acc.lo, acc.hi)],
                       p_mcnemar=round(acc.p_mcnemar, 4), ce_vs_dense=[round(x, 4) for x in (ce.diff, ce.lo, ce.hi)],
                       agree_with_dense=round(float(((got["z"] > 0) == (dense_logits > 0)).mean()), 4),
                       fit_s=round(fit_s, 1))
            print(json.dumps(row), flush=True)
            if args.save is not None:
                name = f"{method.name}-{args.sensitivity}-{args.objective}"  # the name carries the head criterion
                folder = Path(args.save, name) if args.save else Path(files.speed(name))
                _save(ck, removed, plan, row, folder, files.finetuned, ncal)


def _head_statistics(finetuned, train, ncal: int, threads: int, stem: str):
    """(calibration means of every head's output, head_stats), cached at <stem>.npz / .parquet (rule head_stats's
    stage function)."""
    stem = Path(stem)
    if not stem.with_suffix(".parquet").exists():  # written last: it marks the pair complete
        head_stats(finetuned, train, stem.with_suffix(".parquet"), stem.with_suffix(".npz"), ncal, threads, "cpu")
    return read_head_means(stem.with_suffix(".npz")), read_parquet(stem.with_suffix(".parquet"))


def _sensitivity(kind, objective, ck, search_enc, labels, joint, head_means, ffn_stats, ffn_imp, path: Path):
    """Per layer [head choices, widths] costs of the joint choices on the search reviews, cached in `path`: the loss
    increase, or (objective margin) the mean |margin change| (the table's `cost`, beside its `objective`)."""
    if path.exists():
        return read_costs(path, joint)[0]
    model = ck.model
    if kind == "estimated":
        effects = review_effects(model, search_enc, labels, ck.pad_id, ck.padding_side, EFFECTS_BATCH,
                                 desc="search reviews")
        losses = estimated_costs(joint, effects, head_means, ffn_stats["mean"], objective)
    else:
        ablator = Ablator(model, search_enc, labels, ck.pad_id, ck.padding_side, EFFECTS_BATCH)
        options = [[c.pruned for c in layer.heads] for layer in joint]
        heads = head_sensitivity(ablator, options, [torch.tensor(m, dtype=torch.float32) for m in head_means])
        ablator.means = [torch.tensor(m, dtype=torch.float32) for m in ffn_stats["mean"]]
        ffn = sensitivity_table(ablator, ffn_imp, FFN_FRACTIONS)
        losses = [measured_losses(c, heads[heads.layer == l].sort_values("option")["loss_increase"].to_numpy(),
                                  ffn[ffn.layer == l]) for l, c in enumerate(joint)]
    write_parquet(sensitivity_frame(joint, losses, objective), path)
    return losses


def _outcomes(z, y):
    return dict(z=z, acc=((z > 0) == y).astype(float), ce=np.logaddexp(0, -(2 * y - 1) * z))


def _save(ck, model, plan, row, folder: Path, source: str, ncal: int):
    """The pruned classifier folder (atomically), with its plan and pruning.json."""
    with atomic_dir(folder) as tmp:
        save_classifier(model, ck.tokenizer, tmp, dict(ck.meta, pruned_from=source, target=row["point"]))
        write_plan(plan, folder_file(tmp, "plan"))
        write_json(folder_file(tmp, "pruning"), dict(
            target=row["point"], source=source, plan=plan.info.to_dict(), validation=row, calibration_reviews=ncal,
            ffn_widths=model.adapter.ffn_widths(), attention_heads=model.adapter.head_counts(),
            kv_heads=model.adapter.kv_head_counts(), params_dense=count_parameters(ck.model),
            params_pruned=count_parameters(model)))
    logging.info("saved %s", folder)


if __name__ == "__main__":
    main()
