"""Per-review logits of a dense fine-tuned classifier on one split."""
from llm_anatomy.inference import evaluate_dense
from llm_anatomy.logs import run_rule

run_rule(snakemake, evaluate_dense)  # noqa: F821 (snakemake: injected by Snakemake)
