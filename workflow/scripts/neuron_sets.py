"""High neurons, their overlap, the neuron graph and the anatomy summary of one model at anatomy.threshold."""
from llm_anatomy.anatomy import neuron_sets
from llm_anatomy.logs import run_rule

run_rule(snakemake, neuron_sets)  # noqa: F821 (snakemake: injected by Snakemake)
