"""Evaluate one target: its materialised folder, then its baselines built in memory from the dense checkpoint."""
from llm_anatomy.pruning.baselines import evaluate_pruned
from llm_anatomy.logs import run_rule

run_rule(snakemake, evaluate_pruned)  # noqa: F821 (snakemake: injected by Snakemake)
