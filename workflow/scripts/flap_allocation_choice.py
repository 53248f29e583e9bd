"""FLAP's allocation across layers, uniform vs global, on the validation split (paired)."""
from llm_anatomy.pruning.choices import flap_allocation_choice
from llm_anatomy.logs import run_rule

run_rule(snakemake, flap_allocation_choice)  # noqa: F821 (snakemake: injected by Snakemake)
