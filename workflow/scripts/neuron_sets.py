"""High neurons, their overlap, the neuron graph and the anatomy summary of one model at anatomy.threshold."""
from llm_anatomy.anatomy import neuron_sets_stage
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
neuron_sets_stage(sm.input.neuron_scores, sm.input.contributions, sm.input.score_summary,
                  {key: sm.output[key] for key in sm.output.keys()}, sm.params.threshold)
