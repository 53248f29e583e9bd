"""Per-neuron activation statistics of one fine-tuned model over calibration reviews."""
from llm_anatomy.pruning.calibration import ffn_stats
from llm_anatomy.logs import run_rule

run_rule(snakemake, ffn_stats)  # noqa: F821 (snakemake: injected by Snakemake)
