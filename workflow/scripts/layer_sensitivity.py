"""Per-layer validation loss increase of one criterion's pruning (the searched allocation's evidence)."""
from llm_anatomy.data import read_split
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.sensitivity import sensitivity_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
files = {k: v for k, v in sm.input.items() if k not in ("model", "val")}
info = sensitivity_stage(sm.input.model, read_split(sm.input.val), sm.wildcards.criterion, files, sm.output[0],
                         sm.params.reviews, sm.params.fractions, sm.params.batch_size, sm.threads, sm.params.device)
log.info("%s: %s", sm.wildcards.model, info)
