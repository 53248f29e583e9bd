"""One target's metrics.json (the PruneMetrics record) from its plan, evaluations, folder and timing."""
from llm_anatomy.pruning.metrics import prune_metrics
from llm_anatomy.logs import run_rule

run_rule(snakemake, prune_metrics)  # noqa: F821 (snakemake: injected by Snakemake)
