"""Anatomy checked by ablation for one model: exact effects, attribution patching, score agreement."""
from llm_anatomy.ablation import ablate
from llm_anatomy.logs import run_rule

run_rule(snakemake, ablate)  # noqa: F821 (snakemake: injected by Snakemake)
