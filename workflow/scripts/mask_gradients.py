"""Per-neuron mask gradients of one fine-tuned model on labelled calibration reviews (Taylor, Fisher)."""
from llm_anatomy.pruning.gradients import mask_gradients
from llm_anatomy.logs import run_rule

run_rule(snakemake, mask_gradients)  # noqa: F821 (snakemake: injected by Snakemake)
