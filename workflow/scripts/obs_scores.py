"""The optimal-brain-surgeon removal order of one fine-tuned model's FFN neurons on calibration reviews (obs)."""
from llm_anatomy.data import read_split
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.obs import obs_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
info = obs_stage(sm.input.model, read_split(sm.input.train), sm.output[0], sm.params.reviews, sm.params.ridge,
                 sm.params.batch_size, sm.threads, sm.params.device)
log.info("%s: %s", sm.wildcards.model, info)
