"""Figures 4 and 5, the summary table, the method comparisons, the headline metrics and DVC's data plots."""
from llm_anatomy.pruning.report import prune_report
from llm_anatomy.logs import run_rule

run_rule(snakemake, prune_report)  # noqa: F821 (snakemake: injected by Snakemake)
