"""Write the physically pruned classifier of one plan as a checkpoint folder."""
from llm_anatomy.data import read_split
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.materialise import materialise

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
fit = sm.params.fit  # None unless the plan's compensation is fitted on calibration reviews
train = read_split(sm.input.train) if fit else None
materialise(sm.input.model, sm.input.plan, sm.output[0], target=sm.wildcards.target, train=train,
            calibration_reviews=fit["reviews"] if fit else 0)
