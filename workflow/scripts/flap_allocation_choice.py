"""FLAP's allocation across layers, uniform vs global, on the validation split (paired)."""
from llm_anatomy.data import read_split
from llm_anatomy.io import write_csv
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.choices import allocation_choice
from llm_anatomy.scores import mean_neuron_scores

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
p = sm.params
table = allocation_choice(sm.input.model, read_split(sm.input.val), sm.input.ffn_stats,
                          mean_neuron_scores(sm.input.neuron_scores), p.fractions, p.flap["bias_compensation"],
                          p.high_threshold, p.flap["allocation"], p.batch_size, p.threads, p.device)
write_csv(table, sm.output[0])
log.info("%s: %s", sm.wildcards.model, table[["target_pct", "accuracy_uniform", "accuracy_global", "verdict"]]
         .to_dict("records"))
