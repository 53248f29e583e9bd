"""The optimal-brain-surgeon removal order of one fine-tuned model's FFN neurons (criterion obs)."""
from llm_anatomy.pruning.obs import obs_scores
from llm_anatomy.logs import run_rule

run_rule(snakemake, obs_scores)  # noqa: F821 (snakemake: injected by Snakemake)
