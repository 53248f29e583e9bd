"""One named configuration's headline metrics over the profile's models (what `dvc metrics show` reads)."""
from llm_anatomy.pruning.report import prune_collect
from llm_anatomy.logs import run_rule

run_rule(snakemake, prune_collect)  # noqa: F821 (snakemake: injected by Snakemake)
