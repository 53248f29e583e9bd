"""Per-layer linear probes beside the classifier lens, for one model (docs/ANATOMY.md)."""
from llm_anatomy.data import read_split
from llm_anatomy.linear_probe import linear_probe_stage
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
info = linear_probe_stage(sm.input.model, read_split(sm.input.train), sm.input.hidden, sm.input.inputs,
                          {key: sm.output[key] for key in sm.output.keys()},
                          dict(sm.params.p, threads=sm.params.threads, device=sm.params.device))
log.info("%s: %s", sm.wildcards.model, info)
