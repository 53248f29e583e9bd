"""Write the physically pruned classifier of one plan as a checkpoint folder."""
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.materialise import materialise

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
materialise(sm.input.model, sm.input.plan, sm.output[0], target=sm.wildcards.target)
