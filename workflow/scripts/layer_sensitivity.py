"""Per-layer validation loss increase of one criterion's pruning (the searched allocation's evidence)."""
from llm_anatomy.pruning.sensitivity import layer_sensitivity
from llm_anatomy.logs import run_rule

run_rule(snakemake, layer_sensitivity)  # noqa: F821 (snakemake: injected by Snakemake)
