# Shared helpers: params validation (before any compute), the active profile, output layout, targets.
import re
from dataclasses import asdict
from pathlib import Path

ROOT = Path(workflow.basedir)  # the Snakefile's folder, which also put ROOT/src on sys.path

from llm_anatomy.provenance import code_digest
from llm_anatomy.config import exit_on_params_error, resolve_path, retype_overrides, validate
from llm_anatomy.pruning.criteria import CRITERIA
from llm_anatomy.pruning.targets import PruneTargets

with exit_on_params_error():  # a bad value ends the run with its message, before any job
    retype_overrides(config, getattr(getattr(workflow, "config_settings", None), "overwrite_config", None) or {})
    PROFILE = validate(config, ROOT / "workflow/schemas/params.schema.yaml", ROOT)  # fills schema defaults
PROFILE_NAME = config["profile"]
MODELS = list(PROFILE["models"])
SPLITS = ["train", "val", "test"]

# Every profile writes under its own folders, so a run of one never overwrites (or outdates) another's.
DATA = f"data/processed/{PROFILE_NAME}"
RES = f"results/{PROFILE_NAME}"
TARGETS = PruneTargets(config, RES)
LOGS = f"logs/{PROFILE_NAME}"
DEVICE = PROFILE["device"]
CONDA_ENV = "../envs/llm-anatomy.yaml"  # used only under `--sdm conda`; relative to workflow/rules/
THREADS = PROFILE["threads"]


wildcard_constraints:
    model="|".join(MODELS),
    split="|".join(SPLITS),


def workdir_path(path):
    """A file's path relative to the working directory when it lies inside it, else absolute: a copied
    or cloned checkout then records the same input paths, and Snakemake does not rerun for a move."""
    path = resolve_path(path, ROOT).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def model_spec(wildcards):
    return PROFILE["models"][wildcards.model]


def all_targets():
    targets = expand(f"{RES}/{{model}}/finetune_metrics.json", model=MODELS) + [f"{RES}/metrics/finetune.json"]
    return targets + ANATOMY_TARGETS + prune_targets()  # workflow/rules/anatomy.smk, prune.smk


# Input and parameter functions of the rules (workflow/rules/anatomy.smk, prune.smk).
def ablation_params(wildcards):
    p = dict(ANATOMY["ablation"])
    kind = TARGETS.kinds[wildcards.model]
    p["neurons_per_layer"], p["tail"] = p["neurons_per_layer"][kind], p["tail"][kind]
    return p


def sizing(wildcards):
    return asdict(TARGETS.sizing(wildcards.model, wildcards.get("target")))


def calibration_reviews(wildcards):
    return TARGETS.sizing(wildcards.model).calibration_reviews


def eval_limit(wildcards):
    """Pruning is judged on the first test reviews (the target's test_limit); other splits are read whole."""
    return TARGETS.sizing(wildcards.model, wildcards.get("target")).test_limit if wildcards.split == "test" else None


def baseline_limit(wildcards):
    """A target's baselines: on the first baseline_limit of its test reviews; other splits are read whole."""
    return TARGETS.sizing(wildcards.model, wildcards.target).baseline_limit if wildcards.split == "test" else None


def random_seeds(wildcards):
    return TARGETS.random_seeds(wildcards.model, wildcards.target)


def fitted_inputs(wildcards):
    """The train split, for targets whose compensation is fitted on calibration reviews."""
    return dict(train=f"{DATA}/train.parquet") if TARGETS.needs_train(wildcards.target) else {}


def fit_params(wildcards):
    """Calibration sizing of a fitted compensation (None for every other target)."""
    if not TARGETS.needs_train(wildcards.target):
        return None
    return dict(reviews=TARGETS.sizing(wildcards.model).calibration_reviews)


def rule_config(wildcards):
    return TARGETS.rule_config(wildcards.model, wildcards.target)


def plan_inputs(wildcards):
    return TARGETS.plan_inputs(wildcards.model, wildcards.target)


def metrics_inputs(wildcards):
    return TARGETS.metrics_inputs(wildcards.model, wildcards.target)


def criterion_inputs(wildcards):
    return TARGETS.criterion_inputs(wildcards.model, wildcards.criterion)


def search_reviews(wildcards):
    return TARGETS.sizing_tree[TARGETS.kinds[wildcards.model]]["methods"]["search_reviews"]


def benchmark_inputs(wildcards):
    return {f"benchmark_{k}": v for k, v in TARGETS.benchmark_files(wildcards.model, wildcards.target).items()}


def config_metrics_inputs(wildcards):
    return TARGETS.config_metrics_inputs(wildcards.target)


def prune_targets():
    return TARGETS.final_outputs()


def source_digest(script):
    """A digest of a rule's script and the package modules it imports: a params entry, so Snakemake
    reruns the rule when that code changes (llm_anatomy.provenance)."""
    return code_digest(ROOT / "workflow/scripts" / script, ROOT / "src")
