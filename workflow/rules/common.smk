# Shared helpers: params validation (before any compute), the active profile, its files and targets.
# Every path comes from llm_anatomy.layout; what each rule reads, from llm_anatomy.pipeline (unit-tested).
import difflib
import functools
import os
import re
import sys
from pathlib import Path

ROOT = Path(workflow.basedir)  # the Snakefile's folder, which also put ROOT/src on sys.path

from llm_anatomy.provenance import code_digest
from llm_anatomy.config import exit_on_params_error, resolve_path, retype_overrides, validate
from llm_anatomy.layout import SCHEMA, Layout
from llm_anatomy.pipeline import Pipeline
from llm_anatomy.pruning.criteria import CRITERIA
from llm_anatomy.pruning.targets import TargetError

with exit_on_params_error():  # a bad value ends the run with its message, before any job
    retype_overrides(config, getattr(getattr(workflow, "config_settings", None), "overwrite_config", None) or {})
    PROFILE = validate(config, ROOT / SCHEMA, ROOT)  # fills schema defaults
MODELS = list(PROFILE["models"])
SPLITS = ["train", "val", "test"]

# Every profile writes under its own folders, so a run of one never overwrites (or outdates) another's.
PIPE = Pipeline(config)
TARGETS = PIPE.targets
LAYOUT = PIPE.layout
MODEL = LAYOUT.model("{model}")  # one model's files, as rule patterns
TARGET = LAYOUT.target("{model}", "{target}")
PRUNED = LAYOUT.pruned("{model}", "{target}")
DEVICE = PROFILE["device"]
CONDA_ENV = "../envs/llm-anatomy.yaml"  # used only under `--sdm conda`; relative to workflow/rules/
THREADS = PROFILE["threads"]


wildcard_constraints:
    model="|".join(MODELS),
    split="|".join(SPLITS),
    target="[^/]+",  # any folder name: a bad one stops the DAG with the valid names (Targets.check_name)
    criterion="|".join(re.escape(c) for c in CRITERIA),
    head_criterion="[a-z0-9][a-z0-9_-]*",  # checked when the speed target that reads it is (Targets.check_name)


def workdir_path(path):
    """A file's path relative to the working directory when it lies inside it, else absolute: a copied
    or cloned checkout then records the same input paths, and Snakemake does not rerun for a move."""
    path = resolve_path(path, ROOT).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def all_targets():
    targets = expand(MODEL.finetune_metrics, model=MODELS) + [LAYOUT.finetune_summary]
    return targets + ANATOMY_TARGETS + PIPE.prune_outputs()  # workflow/rules/anatomy.smk


def unproducible_targets(workflow):
    """The command line's file targets that no rule produces and that do not exist. Read with Snakemake's own
    parser: the workflow is loaded before Snakemake hands its targets over."""
    from snakemake.cli import get_argument_parser

    try:
        args, _ = get_argument_parser().parse_known_args(sys.argv[1:])
    except SystemExit:  # not Snakemake's command line (its API, a test runner): Snakemake reports what it finds
        return []
    rules = list(workflow.rules)
    names = {r.name for r in rules}
    # Snakemake matches a relative file target as os.path.relpath gives it (./results/... is results/...)
    return [
        t
        for t in args.targets or []
        if t not in names and not Path(t).exists() and not any(r.is_producer(os.path.relpath(t)) for r in rules)
    ]


def unproducible_message(target, workflow):
    near = difflib.get_close_matches(target, all_targets(), n=3, cutoff=0.6)
    patterns = sorted(
        {re.sub(r"{(\w+),[^}]*}", r"{\1}", o) for r in workflow.rules for o in r.output}
    )  # no constraints
    return (
        f"TargetError: no rule produces {target}"
        + (f" (did you mean {' or '.join(near)}?)" if near else "")
        + f". The workflow's outputs are: {', '.join(patterns)}; "
        f"`snakemake --config profile={config['profile']}` with no target runs them all (docs/WORKFLOW.md)."
    )


def source_digest(script):
    """A digest of a rule's script and the package modules it imports: a params entry, so Snakemake
    reruns the rule when that code changes (llm_anatomy.provenance)."""
    return code_digest(ROOT / "workflow/scripts" / script, ROOT / "src")


# Input and parameter functions of the rules (workflow/rules/anatomy.smk, prune.smk): thin wrappers of
# llm_anatomy.pipeline and llm_anatomy.pruning.targets, which the tests import.
def target_checked(func):
    """An input function that checks a target's name (Targets.check_name): a bad name ends the run with its
    message alone. Snakemake follows an input function's exception with its traceback, but not an exit."""

    @functools.wraps(func)
    def checked(wildcards):
        try:
            return func(wildcards)
        except TargetError as err:
            raise SystemExit(f"TargetError: {err}") from None

    return checked


def model_spec(wildcards):
    return PROFILE["models"][wildcards.model]


def ablation_params(wildcards):
    p = dict(ANATOMY["ablation"])
    kind = TARGETS.kinds[wildcards.model]
    p["neurons_per_layer"], p["tail"] = p["neurons_per_layer"][kind], p["tail"][kind]
    return p


def sizing(key):
    """A parameter function for one field of a target's `Sizing` (a model's, for the per-model rules)."""

    def value(wildcards):
        return getattr(TARGETS.sizing(wildcards.model, wildcards.get("target")), key)

    return value


def eval_limit(wildcards):
    """Pruning is judged on the first test reviews (the target's test_limit); other splits are read whole."""
    return TARGETS.sizing(wildcards.model, wildcards.get("target")).test_limit if wildcards.split == "test" else None


def baseline_limit(wildcards):
    """A target's baselines: on the first baseline_limit of its test reviews; other splits are read whole."""
    return TARGETS.sizing(wildcards.model, wildcards.target).baseline_limit if wildcards.split == "test" else None


def random_seeds(wildcards):
    return TARGETS.random_seeds(wildcards.model, wildcards.target)


@target_checked
def method_spec(wildcards):
    return TARGETS.checked_spec(wildcards.model, wildcards.target).to_dict()


@target_checked
def fitted_inputs(wildcards):
    """The train split, for targets whose compensation is fitted on calibration reviews."""
    fitted = TARGETS.checked_spec(wildcards.model, wildcards.target).fitted
    return dict(train=LAYOUT.split("train")) if fitted else {}


@target_checked
def fit_params(wildcards):
    """Calibration sizing of a fitted compensation (None for every other target)."""
    if not TARGETS.checked_spec(wildcards.model, wildcards.target).fitted:
        return None
    s = TARGETS.sizing(wildcards.model)
    return dict(reviews=s.calibration_reviews, batch_size=s.calibration_batch_size)


@target_checked
def plan_inputs(wildcards):
    return PIPE.plan_inputs(wildcards.model, wildcards.target)


def metrics_inputs(wildcards):
    return PIPE.metrics_inputs(wildcards.model, wildcards.target)


@target_checked
def benchmark_inputs(wildcards):
    return PIPE.benchmark_inputs(wildcards.model, wildcards.target)


@target_checked
def speed_params(wildcards):
    """A speed target's cost table criteria, objective and width grid (None for every other target)."""
    return PIPE.speed_params(wildcards.model, wildcards.target)


def speed_sensitivity_inputs(wildcards):
    return PIPE.speed_sensitivity_inputs(wildcards.model, wildcards.criterion)


def criterion_inputs(wildcards):
    return PIPE.criterion_inputs(wildcards.model, wildcards.criterion)


def flap_fractions(wildcards):
    return TARGETS.flap_fractions(wildcards.model)


@target_checked
def config_metrics_inputs(wildcards):
    return PIPE.config_metrics_inputs(wildcards.target)
