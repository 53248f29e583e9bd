"""Layer and neuron scores, classifier lens and direct contributions of one model (threshold-free)."""
from llm_anatomy.anatomy import score_stage
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
score_stage(sm.input.model, sm.input.hidden, sm.input.ffn, sm.input.inputs,
            {key: sm.output[key] for key in sm.output.keys()}, sm.params.threads)
