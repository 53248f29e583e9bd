"""Per-layer linear probes beside the classifier lens, for one model (docs/ANATOMY.md)."""
from llm_anatomy.linear_probe import linear_probe
from llm_anatomy.logs import run_rule

run_rule(snakemake, linear_probe)  # noqa: F821 (snakemake: injected by Snakemake)
