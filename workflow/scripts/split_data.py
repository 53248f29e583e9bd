"""Read IMDB (mirror or hub) and write the seeded, class-balanced train/val/test splits."""
from llm_anatomy.data import split_data
from llm_anatomy.logs import run_rule

run_rule(snakemake, split_data)  # noqa: F821 (snakemake: injected by Snakemake)
