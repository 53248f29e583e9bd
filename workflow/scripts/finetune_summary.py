"""Every model's validation accuracy in one DVC metrics file."""
from llm_anatomy.finetune import finetune_summary
from llm_anatomy.logs import run_rule

run_rule(snakemake, finetune_summary)  # noqa: F821 (snakemake: injected by Snakemake)
