"""Write the physically pruned classifier of one plan as a checkpoint folder."""
from llm_anatomy.pruning.materialise import materialise
from llm_anatomy.logs import run_rule

run_rule(snakemake, materialise)  # noqa: F821 (snakemake: injected by Snakemake)
