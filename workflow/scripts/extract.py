"""Extract target-token hidden states and FFN activations of one fine-tuned model (docs/ANATOMY.md)."""
from llm_anatomy.anatomy import extract_stage
from llm_anatomy.data import read_split
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
p = dict(sm.params)
info = extract_stage(sm.input.model, sm.input.probes, read_split(sm.input.train), read_split(sm.input.val),
                     dict(hidden=sm.output.hidden, ffn=sm.output.ffn, inputs=sm.output.inputs), p)
log.info("%s: %s", sm.wildcards.model, info)
