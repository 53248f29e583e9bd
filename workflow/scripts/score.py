"""Layer and neuron scores, neuron graph, classifier lens and direct contributions of one model."""
from llm_anatomy.anatomy import score_stage
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
out = {key: sm.output[key] for key in sm.output.keys()}
summary = score_stage(sm.input.model, sm.input.hidden, sm.input.ffn, sm.input.inputs, out,
                      sm.params.threshold, sm.params.threads)
log.info("%s: funnel necks %s, lens test accuracy by layer %s", sm.wildcards.model, summary["funnel_necks"],
         [round(a, 3) for a in summary["lens_test_accuracy"]])
