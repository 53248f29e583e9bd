"""Evaluate one target: its materialised folder, then its baselines built in memory from the dense checkpoint."""
from llm_anatomy.data import read_split
from llm_anatomy.evaluate import evaluate_stage
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.evaluate import baselines_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
p = sm.params
split = read_split(sm.input.split)
evaluate_stage(sm.input.pruned, split, sm.output.eval, p.limit, p.batch_size, p.threads, p.device)
baselines_stage(sm.input.model, split, sm.input.plan, sm.input.random_plans, sm.output.baselines,
                p.baseline_limit, p.batch_size, p.threads, p.device, train=read_split(sm.input.train) if p.fit else None,
                calibration_reviews=p.fit["reviews"] if p.fit else 0)
