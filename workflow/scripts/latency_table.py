"""This machine's latency table of one model (a timing), from the cache or measured."""
from llm_anatomy.pruning.latency import latency_table
from llm_anatomy.logs import run_rule

run_rule(snakemake, latency_table)  # noqa: F821 (snakemake: injected by Snakemake)
