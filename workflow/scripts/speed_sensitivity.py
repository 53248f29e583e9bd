"""The speed targets' estimated cost of every head configuration and FFN width, per layer."""
from llm_anatomy.pruning.speed import speed_sensitivity
from llm_anatomy.logs import run_rule

run_rule(snakemake, speed_sensitivity)  # noqa: F821 (snakemake: injected by Snakemake)
