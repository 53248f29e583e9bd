"""Layer and neuron scores, classifier lens and direct contributions of one model (threshold-free)."""
from llm_anatomy.anatomy import score
from llm_anatomy.logs import run_rule

run_rule(snakemake, score)  # noqa: F821 (snakemake: injected by Snakemake)
