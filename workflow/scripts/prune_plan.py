"""Plan one prune target: the neurons it prunes per layer (no forward pass), and its random baselines."""
from llm_anatomy.pruning.plan import prune_plan
from llm_anatomy.logs import run_rule

run_rule(snakemake, prune_plan)  # noqa: F821 (snakemake: injected by Snakemake)
