"""Time dense, zeroed and removed side by side (alternating, warmed up) for one target."""
from llm_anatomy.pruning.timing import time_pruned
from llm_anatomy.logs import run_rule

run_rule(snakemake, time_pruned)  # noqa: F821 (snakemake: injected by Snakemake)
