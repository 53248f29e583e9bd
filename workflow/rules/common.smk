# Shared helpers: params validation (before any compute), the active profile, output layout, targets.
import re
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(workflow.basedir)
sys.path.insert(0, str(ROOT / "src"))  # the package works from a clone even before `pip install -e .`

from llm_anatomy.config import resolve_path, retype_overrides, validate
from llm_anatomy.pruning.targets import CURVE_PATTERN as TARGETS_CURVE_PATTERN, PruneTargets

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
THREADS = PROFILE["threads"]


wildcard_constraints:
    model="|".join(MODELS),
    split="|".join(SPLITS),


def model_spec(wildcards):
    return PROFILE["models"][wildcards.model]


def all_targets():
    targets = expand(f"{RES}/{{model}}/finetune_metrics.json", model=MODELS) + [f"{RES}/metrics/finetune.json"]
    return targets + ANATOMY_TARGETS + prune_targets()  # workflow/rules/anatomy.smk, prune.smk
