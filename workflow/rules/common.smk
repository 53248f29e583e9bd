# Shared helpers: params validation (before any compute), the active profile, target lists.
import sys
from pathlib import Path

ROOT = Path(workflow.basedir)
sys.path.insert(0, str(ROOT / "src"))  # the package works from a clone even before `pip install -e .`

from llm_anatomy.config import resolve_path, validate

PROFILE = validate(config, ROOT / "workflow/schemas/params.schema.yaml", ROOT)
MODELS = list(PROFILE["models"])
SPLITS = ["train", "val", "test"]


wildcard_constraints:
    model="|".join(MODELS),
    split="|".join(SPLITS),


def model_spec(wildcards):
    return PROFILE["models"][wildcards.model]


def all_targets():
    targets = expand("results/{model}/finetune_metrics.json", model=MODELS) + ["results/metrics/finetune.json"]
    return targets + ANATOMY_TARGETS + prune_targets()  # workflow/rules/anatomy.smk, prune.smk
