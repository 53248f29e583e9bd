"""Evaluate a classifier folder on a split: per-review logits (dense once per model and split, or a pruned folder)."""
from llm_anatomy.data import read_split
from llm_anatomy.evaluate import evaluate_stage
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
p = sm.params
evaluate_stage(sm.input.model, read_split(sm.input.split), sm.output[0], p.limit, p.batch_size, p.threads, p.device)
