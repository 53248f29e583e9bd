"""`llm-anatomy`: the pipeline's steps on one's own checkpoint, from the command line.

    llm-anatomy finetune embedded:minilm --train train.parquet --val val.parquet --out runs/minilm
    llm-anatomy score runs/minilm --train train.parquet --val val.parquet --out runs/minilm-scores
    llm-anatomy prune runs/minilm --scores runs/minilm-scores --calibration train.parquet --sparsity 0.5 --out runs/minilm-flap50
    llm-anatomy prune runs/minilm --scores runs/minilm-scores --calibration train.parquet --sparsity 0.7 \
        --criterion fluctuation --compensation refit --out runs/minilm-refit70
    llm-anatomy evaluate runs/minilm-flap50 --data test.parquet --limit 1000
    llm-anatomy bench runs/minilm runs/minilm-flap50 --data test.parquet --reviews 1000
    llm-anatomy export runs/minilm-flap50 --onnx --out runs/minilm-flap50-hf   # loads with transformers alone
    llm-anatomy pull          # in a clone: a pushed run's outputs from the DVC remote, up to date for Snakemake

Every subcommand calls the same functions as the Snakemake rules (`finetune.finetune`,
`anatomy.extract_stage` / `score_stage`, `pruning.calibration`, `pruning.plan`, `pruning.materialise`,
`evaluate.evaluate_stage`, `pruning.timing`), so a folder it writes is the folder the pipeline would
write, and loads with `llm_anatomy.models.load_classifier(folder)`. Data files are Parquet tables
with `text` and `label` columns (the pipeline's `data/processed/<profile>/*.parquet`). `export`
(`export.export_classifier`, no rule runs it) writes a folder for use outside the project.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

SUPPORTED = "BERT, GPT-2 and Llama backbones (llm_anatomy.adapters.ADAPTERS)"


class CliError(Exception):
    """A bad argument; the message names it and the fix."""


def _classifier_dir(path: str) -> Path:
    folder = Path(path)
    if not (folder / "classifier.json").exists():
        raise CliError(f"{path}: not a classifier folder (no classifier.json). Give a folder written by "
                       "`llm-anatomy finetune` or `llm-anatomy prune`, or the pipeline's results/<profile>/<model>/finetuned")
    return folder


def _split(path: str):
    from .data import read_split
    from .io import UnreadableFile
    if not Path(path).exists():
        raise CliError(f"{path}: no such file; give a Parquet table with `text` and `label` columns")
    try:
        return read_split(path)
    except UnreadableFile as err:
        raise CliError(f"{err}: a Parquet table with `text` and `label` columns") from None


def _default_probes() -> str:
    """The project's own probe sentences, from a source checkout (an installed wheel has none: pass --probes)."""
    repo = Path(__file__).resolve().parents[2] / "resources" / "probes.tsv"
    if not repo.exists():
        raise CliError("no default probe file next to this installation; pass --probes <TSV with columns "
                       "input_id, subtask, variant, text>")
    return str(repo)


def _finetune(args) -> dict:
    from .finetune import FinetuneParams, finetune
    p = FinetuneParams(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr,
                       max_length=args.max_length, precision=args.precision, seed=args.seed, threads=args.threads,
                       truncation_side=args.truncation_side, padding_side=args.padding_side)
    out = Path(args.out)
    return finetune(args.source, args.tokenizer or args.source, _split(args.train), _split(args.val), out,
                    out.with_name(out.name + ".metrics.json"), out.with_name(out.name + ".checkpoint.pt"), p,
                    model_name=out.name, device=args.device)


def _score(args) -> dict:
    from .anatomy import extract_stage, neuron_sets_stage, score_stage
    model = _classifier_dir(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    probes = args.probes or _default_probes()
    ex = dict(hidden=out / "hidden_states.parquet", ffn=out / "ffn_activations.parquet", inputs=out / "anatomy_inputs.parquet")
    extract_stage(model, probes, _split(args.train), _split(args.val), ex,
                  dict(calibration_size=args.calibration_size, validation_size=args.validation_size, seed=args.seed,
                       batch_size=args.batch_size, precision=args.precision, threads=args.threads, device=args.device))
    files = {n: out / f"{n}.parquet" for n in ("layer_scores", "neuron_scores", "contributions")}
    files.update(lens=out / "lens.csv", score_summary=out / "score_summary.json")
    sets = {n: out / f"{n}.csv" for n in ("neuron_share", "high_neurons", "neuron_overlap", "graph_counts",
                                          "rank_agreement")}
    sets.update(graph=out / "neuron_graph.graphml", summary=out / "summary.json")
    score_stage(model, ex["hidden"], ex["ffn"], ex["inputs"], files, args.threads)
    return neuron_sets_stage(files["neuron_scores"], files["contributions"], files["score_summary"], sets, args.threshold)


def _prune(args) -> dict:
    from .pruning.calibration import calibration_stage
    from .pruning.gradients import gradients_stage
    from .pruning.materialise import materialise
    from .pruning.plan import FITTED, plan_stage
    model = _classifier_dir(args.model)
    scores = Path(args.scores)
    for name in ("layer_scores.parquet", "neuron_scores.parquet"):
        if not (scores / name).exists():
            raise CliError(f"--scores {args.scores}: no {name}; run `llm-anatomy score` on this model first")
    if not 0.0 < args.sparsity < 1.0:
        raise CliError(f"--sparsity {args.sparsity}: give the fraction of FFN neurons to remove, in (0, 1)")
    for flag, value in (("--ridge", args.ridge), ("--readout-ridge", args.readout_ridge)):
        if value < 0:
            raise CliError(f"{flag} {value}: a ridge is a non-negative multiple of the mean Gram diagonal, e.g. 0.01")
    if args.criterion == "flap":
        if args.compensation not in ("bias", "none"):
            raise CliError(f"--criterion flap --compensation {args.compensation}: FLAP folds the mean output (bias) "
                           "or nothing; for a fitted compensation use --criterion fluctuation (FLAP's score)")
        cfg = dict(rule="flap", target=args.sparsity, allocation=args.allocation,
                   bias_compensation=args.compensation == "bias")
    else:
        cfg = dict(rule="criterion", criterion=args.criterion, allocation=args.allocation,
                   compensation=args.compensation, target=args.sparsity)
        if args.compensation in FITTED:
            cfg["ridge"] = args.ridge
            cfg["readout_ridge"] = args.readout_ridge
    contributions = scores / "contributions.parquet"
    if args.criterion == "contribution" and not contributions.exists():
        raise CliError(f"--criterion contribution: no {contributions}; run `llm-anatomy score` on this model first")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = _split(args.calibration)
        calibration_stage(model, train, tmp / "ffn_stats.parquet", args.calibration_reviews,
                          args.batch_size, args.threads, args.device)
        grads = None
        if args.criterion in ("taylor", "fisher"):
            grads = tmp / "mask_gradients.parquet"
            gradients_stage(model, train, grads, args.calibration_reviews, 16, args.threads, args.device)
        plan_stage(cfg, scores / "layer_scores.parquet", scores / "neuron_scores.parquet", tmp / "plan.parquet",
                   tmp / "random_plans.parquet", [0], args.high_threshold, ffn_stats_path=tmp / "ffn_stats.parquet",
                   mask_gradients_path=grads,
                   contributions_path=contributions if args.criterion == "contribution" else None)
        info = materialise(model, tmp / "plan.parquet", args.out, target=f"{args.criterion}-{args.sparsity:g}",
                           train=train, calibration_reviews=args.calibration_reviews)
        shutil.copy(tmp / "plan.parquet", Path(args.out) / "plan.parquet")
    return info


def _evaluate(args) -> dict:
    import numpy as np

    from .evaluate import evaluate_stage
    from .logits import read_logits
    from .stats import accuracy_interval, correct
    model = _classifier_dir(args.model)
    out = args.out or str(Path(tempfile.mkdtemp()) / "eval.parquet")
    evaluate_stage(model, _split(args.data), out, args.limit, args.batch_size, args.threads, args.device)
    df, info = read_logits(out)
    acc = accuracy_interval(correct(df["logit"].to_numpy(), df["label"].to_numpy()))
    return dict(model=str(model), reviews=int(len(df)), accuracy=acc.value, accuracy_lo=acc.lo, accuracy_hi=acc.hi,
                seconds=info.get("seconds"), logits=out, positive_share=float(np.mean(df["logit"] > 0)))


def _bench(args) -> dict:
    import numpy as np

    from .batching import encode_reviews
    from .device import machine_info, model_device
    from .evaluate import inference_model, loop_parts
    from .logits import first_reviews
    from .models import load_classifier, set_threads
    from .pruning.timing import ratio_spread, time_variants
    set_threads(args.threads)
    dense, tok, meta = load_classifier(_classifier_dir(args.dense), args.device)
    pruned, _, _ = load_classifier(_classifier_dir(args.pruned), args.device)
    encoded = encode_reviews(tok, meta, first_reviews(_split(args.data), args.reviews, "--reviews")["text"])
    precision = meta.get("precision", "fp32")
    runners = {"dense": inference_model(dense, precision), "pruned": inference_model(pruned, precision)}
    times = time_variants(runners, encoded, tok.pad_token_id, args.batch_size, precision,
                          meta.get("padding_side", "right"), args.repeats)
    return dict(machine=machine_info(model_device(dense)), loop=loop_parts(runners["dense"]), reviews=len(encoded),
                repeats=args.repeats,
                seconds=times, median_s={k: float(np.median(v)) for k, v in times.items()},
                speedup=ratio_spread(times["dense"], times["pruned"]))


def _export(args) -> dict:
    from .export import check_out, export_classifier
    model = _classifier_dir(args.model)
    check_out(model, args.out)  # before loading anything
    if args.onnx:
        import importlib.util
        missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise CliError(f"--onnx needs {', '.join(missing)}: pip install 'llm-anatomy[onnx]'")
    return export_classifier(model, args.out, args.onnx)


def _pull(args) -> dict:
    from .share import pull
    return pull(Path(args.repo), args.jobs)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llm-anatomy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p, batch=32):
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:<i> or auto")
        p.add_argument("--batch-size", type=int, default=batch)

    p = sub.add_parser("finetune", help="fine-tune a backbone + head as a sentiment classifier")
    p.add_argument("source", help="hub:<id>, path:<folder>, embedded:minilm|smollm2 or tiny:bert|gpt2|llama; " + SUPPORTED)
    p.add_argument("--tokenizer", default=None, help="tokenizer source (default: the model's)")
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--out", required=True, help="classifier folder to write")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--truncation-side", choices=["left", "right"], default="right")
    p.add_argument("--padding-side", choices=["left", "right"], default="right")
    p.add_argument("--seed", type=int, default=42)
    common(p, 16)
    p.set_defaults(run=_finetune)

    p = sub.add_parser("score", help="layer and neuron scores, graph, lens (the anatomy stage)")
    p.add_argument("model", help="classifier folder")
    p.add_argument("--train", required=True, help="calibration reviews are sampled from it")
    p.add_argument("--val", required=True, help="lens reviews are sampled from it (validation split; never the test split)")
    p.add_argument("--probes", default=None, help="probe TSV (default: the project's own)")
    p.add_argument("--out", required=True, help="folder for the score tables")
    p.add_argument("--threshold", type=float, default=0.35)
    p.add_argument("--calibration-size", type=int, default=64)
    p.add_argument("--validation-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    common(p, 16)
    p.set_defaults(run=_score)

    from .pruning.compensation import METHODS
    from .pruning.criteria import CRITERIA
    p = sub.add_parser("prune", help="remove FFN neurons by a criterion of the registry, write a smaller classifier")
    p.add_argument("model", help="classifier folder")
    p.add_argument("--scores", required=True, help="folder written by `llm-anatomy score` for this model")
    p.add_argument("--criterion", choices=["flap", *CRITERIA], default="flap",
                   help="flap: FLAP as the pipeline's flap-<pct>; otherwise a criterion (docs/PRUNING.md, Methods)")
    p.add_argument("--compensation", choices=METHODS, default="bias",
                   help="none, bias (fold the mean output), rescale or refit (fitted on the calibration reviews)")
    p.add_argument("--ridge", type=float, default=0.01, help="relative ridge of rescale/refit")
    p.add_argument("--readout-ridge", type=float, default=10.0,
                   help="relative ridge of the last layer's rescale/refit (fitted on one token per review)")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of FFN neurons to remove, e.g. 0.5")
    p.add_argument("--calibration", required=True, help="Parquet reviews for the activation statistics (train split)")
    p.add_argument("--calibration-reviews", type=int, default=128)
    p.add_argument("--allocation", choices=["uniform", "global"], default="uniform")
    p.add_argument("--high-threshold", type=float, default=0.35)
    p.add_argument("--out", required=True, help="pruned classifier folder to write")
    common(p, 32)  # the pipeline's batch size: in bf16 the statistics depend on the batching
    p.set_defaults(run=_prune)

    p = sub.add_parser("evaluate", help="accuracy (95%% interval) and per-review logits")
    p.add_argument("model", help="classifier folder")
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int, default=None, help="the first N reviews")
    p.add_argument("--out", default=None, help="logits Parquet to write")
    common(p)
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("bench", help="time a dense and a pruned classifier alternately")
    p.add_argument("dense")
    p.add_argument("pruned")
    p.add_argument("--data", required=True)
    p.add_argument("--reviews", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    common(p)
    p.set_defaults(run=_bench)

    p = sub.add_parser("export", help="write a folder transformers loads (from_pretrained, trust_remote_code) and "
                                      "optionally ONNX")
    p.add_argument("model", help="classifier folder (fine-tuned or pruned)")
    p.add_argument("--out", default=None, help="folder to write (default: <model>-hf beside it)")
    p.add_argument("--onnx", action="store_true", help="also model.onnx (dynamic batch and length), checked with "
                                                       "ONNX Runtime; needs the `onnx` extra")
    p.set_defaults(run=_export)

    p = sub.add_parser("pull", help="restore a pushed run's outputs from the DVC remote (dvc pull + snakemake --touch)")
    p.add_argument("--repo", default=".", help="the clone (default: here)")
    p.add_argument("--jobs", type=int, default=None, help="parallel downloads (DVC's default if not given)")
    p.set_defaults(run=_pull)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .io import user_files
    try:
        from .logs import setup_logging
        setup_logging()
        with user_files():  # every file a command reads was named by the user: never moved aside
            result = args.run(args)
    except (CliError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"llm-anatomy {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
