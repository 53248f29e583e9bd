"""The head criteria's statistics and the heads' mean outputs on the calibration reviews."""
from llm_anatomy.pruning.speed import head_stats
from llm_anatomy.logs import run_rule

run_rule(snakemake, head_stats)  # noqa: F821 (snakemake: injected by Snakemake)
