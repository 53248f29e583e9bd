"""Target-token hidden states and FFN activations of one fine-tuned model (docs/ANATOMY.md)."""
from llm_anatomy.anatomy import extract
from llm_anatomy.logs import run_rule

run_rule(snakemake, extract)  # noqa: F821 (snakemake: injected by Snakemake)
