"""Fine-tune one model of the active profile; resumes from its last checkpoint if one exists."""
from llm_anatomy.finetune import finetune
from llm_anatomy.logs import run_rule

run_rule(snakemake, finetune)  # noqa: F821 (snakemake: injected by Snakemake)
