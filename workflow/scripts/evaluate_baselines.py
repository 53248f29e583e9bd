"""Evaluate one plan's baselines in memory: random plans per seed, and the plan without compensation."""
from llm_anatomy.data import read_split
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.evaluate import baselines_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
p = sm.params
baselines_stage(sm.input.model, read_split(sm.input.split), sm.input.plan, sm.input.random_plans, sm.output[0],
                p.limit, p.batch_size, p.threads, p.device)
