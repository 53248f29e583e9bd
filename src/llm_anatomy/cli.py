"""`llm-anatomy`: the pipeline's steps on one's own checkpoint, from the command line.

    llm-anatomy finetune embedded:minilm --train train.parquet --val val.parquet --out runs/minilm
    llm-anatomy score runs/minilm --train train.parquet --val val.parquet --out runs/minilm-scores
    llm-anatomy prune runs/minilm --scores runs/minilm-scores --calibration train.parquet --sparsity 0.5 --out runs/minilm-flap50
    llm-anatomy prune runs/minilm --scores runs/minilm-scores --calibration train.parquet --sparsity 0.7 \\
        --criterion fluctuation --allocation searched --validation val.parquet --compensation refit --out runs/minilm-refit70
    llm-anatomy evaluate runs/minilm-flap50 --data test.parquet --limit 1000
    llm-anatomy bench runs/minilm runs/minilm-flap50 --data test.parquet --reviews 1000
    llm-anatomy export runs/minilm-flap50 --onnx --out runs/minilm-flap50-hf   # loads with transformers alone
    llm-anatomy pull          # in a clone: a pushed run's outputs from the DVC remote, up to date for Snakemake

Every subcommand calls the stage functions the Snakemake rules call (rule `x` runs `llm_anatomy...x()`), so a
folder it writes is the folder the pipeline would write, and loads with `llm_anatomy.load_classifier(folder)`.
`score --out` is laid out as the pipeline's model folder (`llm_anatomy.layout.ModelFiles`). Every default is
params.yaml's schema's (workflow/schemas/params.schema.yaml). Data files are Parquet tables with `text` and
`label` columns (the pipeline's `data/processed/<profile>/*.parquet`). `export` (`export.export_classifier`, no
rule runs it) writes a folder for use outside the project.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from .config import schema_properties
from .layout import PROBES, ModelFiles, beside, folder_file

SUPPORTED = "BERT, GPT-2 and Llama backbones (llm_anatomy.adapters.ADAPTERS)"
TYPES = {"integer": int, "number": float, "string": str}


class CliError(Exception):
    """A bad argument; the message names it and the fix."""


def _classifier_dir(path: str) -> Path:
    if not folder_file(path, "meta").exists():
        raise CliError(f"{path}: not a classifier folder (no {folder_file(path, 'meta').name}). Give a folder written "
                       "by `llm-anatomy finetune` or `llm-anatomy prune`, or the pipeline's results/<profile>/<model>/finetuned")
    return Path(path)


def _data(path: str | None, flag: str) -> str | None:
    """A data file the user named, checked before any model is loaded: it exists and reads as Parquet (an
    unreadable one is named and left as it is: `io.user_files`)."""
    if path is None:
        return None
    if not Path(path).exists():
        raise CliError(f"{flag} {path}: no such file; give a Parquet table with `text` and `label` columns")
    import pyarrow.parquet as pq

    from .io import UnreadableFile, read_back
    try:
        read_back(path, pq.read_schema)
    except UnreadableFile as err:
        raise CliError(f"{err}: a Parquet table with `text` and `label` columns") from None
    return path


def _default_probes() -> str:
    """The project's own probe sentences, from a source checkout (an installed wheel has none: pass --probes)."""
    repo = Path(__file__).resolve().parents[2] / PROBES
    if not repo.exists():
        raise CliError("no default probe file next to this installation; pass --probes <TSV with columns "
                       "input_id, subtask, variant, text>")
    return str(repo)


def _finetune(args) -> dict:
    from .finetune import finetune
    out = Path(args.out)
    settings = {k: getattr(args, k) for k in schema_properties("$defs", "finetune") if hasattr(args, k)}
    spec = dict(source=args.source, tokenizer=args.tokenizer or args.source, finetune=settings)
    metrics = beside(out, "metrics")
    finetune(train=_data(args.train, "--train"), val=_data(args.val, "--val"), finetuned=out, metrics=metrics,
             spec=spec, model_name=out.name, threads=args.threads, device=args.device,
             checkpoint=beside(out, "checkpoint"))
    return json.loads(Path(metrics).read_text())


def _score(args) -> dict:
    from .anatomy import extract, neuron_sets, score
    model, out = _classifier_dir(args.model), ModelFiles(args.out)
    run = dict(finetuned=model, threads=args.threads)
    extract(**run, train=_data(args.train, "--train"), val=_data(args.val, "--val"),
            probes=args.probes or _default_probes(), **out.files("hidden", "ffn", "inputs"),
            calibration_size=args.calibration_size, validation_size=args.validation_size, seed=args.seed,
            batch_size=args.batch_size, precision=args.precision, device=args.device)
    score(**run, **out.files("hidden", "ffn", "inputs", *ModelFiles.SCORES))
    neuron_sets(**out.files("neuron_scores", "contributions", "score_summary", *ModelFiles.NEURON_SETS),
                threshold=args.threshold)
    return json.loads(Path(out.summary).read_text())


def _prune(args) -> dict:
    from .pruning.chain import prune_model
    from .pruning.spec import MethodSpec, method_params
    if args.speedup is not None:  # before anything is read
        raise CliError(f"--speedup {args.speedup:g}: a speed target reads this machine's latency table, the heads' "
                       "statistics and the estimated per-layer costs, which the pipeline's rules build; run "
                       "`snakemake --config profile=<profile> -- results/<profile>/<model>/prune/"
                       f"fluctuation-joint-refit-x{args.speedup:g}/metrics.json` (any speed target "
                       "<criterion>-<ffn|heads|joint>-<compensation>-x<speedup>; docs/SPEED.md)")
    model, scores = _classifier_dir(args.model), ModelFiles(args.scores)
    for name in ("layer_scores", "neuron_scores"):
        if not Path(getattr(scores, name)).exists():
            raise CliError(f"--scores {args.scores}: no {getattr(scores, name)}; run `llm-anatomy score` on this "
                           "model first")
    if not 0.0 < args.sparsity < 1.0:
        raise CliError(f"--sparsity {args.sparsity}: give the fraction of FFN neurons to remove, in (0, 1)")
    if args.criterion == "flap":
        if args.compensation not in ("bias", "none"):
            raise CliError(f"--criterion flap --compensation {args.compensation}: FLAP folds the mean output (bias) "
                           "or nothing; for a fitted compensation use --criterion fluctuation (FLAP's score)")
        if args.allocation == "searched":
            raise CliError("--criterion flap --allocation searched: FLAP allocates uniform or global; for a searched "
                           "allocation use --criterion fluctuation (FLAP's score)")
        spec = MethodSpec.flap(args.sparsity, args.allocation, args.compensation == "bias")
    else:
        spec = MethodSpec(args.criterion, args.allocation, args.compensation, args.sparsity)
    spec = spec.with_values({name: getattr(args, name) for name, _ in method_params() if hasattr(args, name)})
    if spec.criterion == "contribution" and not Path(scores.contributions).exists():
        raise CliError(f"--criterion contribution: no {scores.contributions}; run `llm-anatomy score` on this model "
                       "first")
    if spec.allocation == "searched" and args.validation is None:
        raise CliError("--allocation searched: the layer sensitivity is measured on validation reviews; pass "
                       "--validation <the validation split's Parquet>")
    with tempfile.TemporaryDirectory() as work:
        target = prune_model(model, scores, spec, _data(args.calibration, "--calibration"), args.out, work,
                             val=_data(args.validation, "--validation"), calibration_reviews=args.calibration_reviews,
                             batch_size=args.batch_size, calibration_batch_size=args.calibration_batch_size,
                             ridge=args.ridge, high_threshold=args.high_threshold, average_over=args.average_over,
                             search_reviews=args.search_reviews, search_fractions=args.search_fractions,
                             threads=args.threads, device=args.device)
        shutil.copy(target.plan, folder_file(args.out, "plan"))
    return json.loads(folder_file(args.out, "pruning").read_text())


def _evaluate(args) -> dict:
    model, data = _classifier_dir(args.model), _data(args.data, "--data")  # before torch loads and --out is made
    import numpy as np

    from .data import read_split
    from .inference import evaluate_folder
    from .logits import read_logits
    from .stats import accuracy_interval, correct
    out = args.out or ModelFiles(tempfile.mkdtemp()).dense_eval(Path(data).stem)
    evaluate_folder(model, read_split(data), out, args.limit, args.batch_size, args.threads, args.device)
    df, info = read_logits(out)
    acc = accuracy_interval(correct(df["logit"].to_numpy(), df["label"].to_numpy()))
    return dict(model=str(model), reviews=int(len(df)), accuracy=acc.value, accuracy_lo=acc.lo, accuracy_hi=acc.hi,
                seconds=info.get("seconds"), logits=out, positive_share=float(np.mean(df["logit"] > 0)))


def _bench(args) -> dict:
    import numpy as np

    from .data import read_split
    from .device import machine_info, model_device
    from .inference import inference_model, loop_parts
    from .logits import first_reviews
    from .models import load_classifier, open_checkpoint
    from .pruning.timing import ratio_spread, time_variants
    dense = open_checkpoint(_classifier_dir(args.dense), args.device, args.threads)
    pruned, _, _ = load_classifier(_classifier_dir(args.pruned), args.device)
    encoded = dense.encode(first_reviews(read_split(_data(args.data, "--data")), args.reviews, "--reviews")["text"])
    runners = {"dense": inference_model(dense.model, dense.precision),
               "pruned": inference_model(pruned, dense.precision)}
    times = time_variants(runners, encoded, dense.pad_id, args.batch_size, dense.precision, dense.padding_side,
                          args.repeats)
    return dict(machine=machine_info(model_device(dense.model)), loop=loop_parts(runners["dense"]),
                reviews=len(encoded), repeats=args.repeats, seconds=times,
                median_s={k: float(np.median(v)) for k, v in times.items()},
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


def _option(p, key: str, prop: dict) -> None:
    """An option for one params.yaml key: its type, choices, default and description from the schema."""
    flag = "--" + key.replace("_", "-")
    kw = dict(dest=key, default=prop.get("default"))
    if "enum" in prop:
        kw["choices"] = prop["enum"]
    elif prop.get("type") == "boolean":
        kw["action"] = argparse.BooleanOptionalAction
    elif prop.get("type") == "array":
        kw.update(type=TYPES[prop["items"]["type"]], nargs="+")
    else:
        kw["type"] = TYPES[prop["type"]]
    if "minimum" in prop:
        kind, minimum = kw["type"], prop["minimum"]
        def parse(text):  # argparse names the type by this name when `kind` rejects the text
            value = kind(text)
            if value < minimum:
                raise argparse.ArgumentTypeError(f"{flag} {value}: must be >= {minimum}")
            return value
        kw["type"] = parse
    p.add_argument(flag, help=f"{prop.get('description', '')} (default: %(default)s)".lstrip(), **kw)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llm-anatomy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sizing = schema_properties("$defs", "profile_pruning")

    def common(p, batch_size: dict):
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        _option(p, "device", schema_properties("$defs", "profile")["device"])
        _option(p, "batch_size", batch_size)

    p = sub.add_parser("finetune", help="fine-tune a backbone + head as a sentiment classifier")
    p.add_argument("source", help="hub:<id>, path:<folder>, embedded:minilm|smollm2 or tiny:bert|gpt2|llama; " + SUPPORTED)
    p.add_argument("--tokenizer", default=None, help="tokenizer source (default: the model's)")
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--out", required=True, help="classifier folder to write")
    settings = schema_properties("$defs", "finetune")
    for key, prop in settings.items():
        if key not in ("train_limit", "batch_size"):
            _option(p, key, prop)
    common(p, settings["batch_size"])
    p.set_defaults(run=_finetune)

    p = sub.add_parser("score", help="layer and neuron scores, graph, lens (the anatomy stage)")
    p.add_argument("model", help="classifier folder")
    p.add_argument("--train", required=True, help="calibration reviews are sampled from it")
    p.add_argument("--val", required=True, help="lens reviews are sampled from it (validation split; never the test split)")
    p.add_argument("--probes", default=None, help="probe TSV (default: the project's own)")
    p.add_argument("--out", required=True, help="folder for the score tables (laid out as the pipeline's model folder)")
    anatomy = {k: {**v, **schema_properties("properties", "anatomy").get(k, {})}
               for k, v in schema_properties("$defs", "anatomy").items()}
    for key in ("threshold", "calibration_size", "validation_size", "seed", "precision"):
        _option(p, key, anatomy[key])
    common(p, anatomy["batch_size"])
    p.set_defaults(run=_score)

    from .pruning.allocation import ALLOCATIONS
    from .pruning.compensation import METHODS
    from .pruning.criteria import CRITERIA
    from .pruning.spec import MethodSpec, method_params
    pruning, flap = schema_properties("$defs", "pruning"), schema_properties("$defs", "pruning", "flap")
    p = sub.add_parser("prune", help="remove FFN neurons by a method of the registry, write a smaller classifier")
    p.add_argument("model", help="classifier folder")
    p.add_argument("--scores", required=True, help="folder written by `llm-anatomy score` for this model")
    p.add_argument("--criterion", choices=["flap", *CRITERIA], default="flap",
                   help="flap: FLAP as the pipeline's flap-<pct>; otherwise a criterion (docs/PRUNING.md, Methods)")
    _option(p, "allocation", dict(flap["allocation"], enum=list(ALLOCATIONS),
                                  description="uniform, global (per-layer standardised) or searched (validation "
                                              "sensitivity, needs --validation); the paper's threshold rules run in "
                                              "the pipeline (sweep-<pct> and the named configurations)"))
    p.add_argument("--compensation", choices=METHODS, default="bias" if flap["bias_compensation"]["default"] else "none",
                   help="none, bias (fold the mean output), rescale or refit (fitted on the calibration reviews) "
                        "(default: %(default)s)")
    cli_methods = [MethodSpec(c, a, m, 0.5) for c in CRITERIA for a in ALLOCATIONS for m in METHODS]
    for name, key in method_params():  # the method parameters the command line's methods read
        if any(s.with_values({name: 0}) != s for s in cli_methods):
            *section, leaf = key.split(".")
            _option(p, name, schema_properties("$defs", "pruning", *section)[leaf])
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--sparsity", type=float, help="fraction of FFN neurons to remove, e.g. 0.5")
    size.add_argument("--speedup", type=float, help="refused: speed targets are built by the pipeline (docs/SPEED.md)")
    p.add_argument("--calibration", required=True, help="Parquet reviews for the activation statistics (train split)")
    p.add_argument("--validation", default=None, help="Parquet reviews for the searched allocation (validation split)")
    _option(p, "calibration_reviews", schema_properties("$defs", "prune_sizing")["calibration_reviews"])
    _option(p, "calibration_batch_size", sizing["calibration_batch_size"])
    _option(p, "search_reviews", schema_properties("$defs", "prune_sizing", "methods")["search_reviews"])
    _option(p, "search_fractions", schema_properties("$defs", "pruning", "methods")["search_fractions"])
    _option(p, "high_threshold", pruning["high_threshold"])
    _option(p, "average_over", pruning["average_over"])
    p.add_argument("--out", required=True, help="pruned classifier folder to write")
    common(p, sizing["batch_size"])  # the pipeline's batch size: in bf16 the statistics depend on the batching
    p.set_defaults(run=_prune)

    p = sub.add_parser("evaluate", help="accuracy (95%% interval) and per-review logits")
    p.add_argument("model", help="classifier folder")
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int, default=None, help="the first N reviews")
    p.add_argument("--out", default=None, help="logits Parquet to write")
    common(p, sizing["batch_size"])
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("bench", help="time a dense and a pruned classifier alternately")
    p.add_argument("dense")
    p.add_argument("pruned")
    p.add_argument("--data", required=True)
    p.add_argument("--reviews", type=int, default=256, help="the first N reviews of --data (default: %(default)s)")
    _option(p, "repeats", sizing["repeats"])
    common(p, sizing["batch_size"])
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
