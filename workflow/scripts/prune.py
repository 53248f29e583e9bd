"""Prune one fine-tuned model under one configuration; evaluate; write metrics and the per-layer table."""
from llm_anatomy.data import read_split
from llm_anatomy.io import write_csv, write_json
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.evaluate import EvalSettings, prune_and_evaluate

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
settings = EvalSettings.from_dict(sm.params.settings)
metrics, table = prune_and_evaluate(sm.input.model, sm.input.layer_scores, sm.input.neuron_scores,
                                    read_split(sm.input.test), sm.params.cfg, settings,
                                    focus_multiplier=sm.params.focus_multiplier,
                                    config_name=sm.wildcards.config, model_name=sm.wildcards.model,
                                    ffn_stats_path=sm.input.get("ffn_stats"))
write_csv(table, sm.output.layers)
write_json(sm.output.metrics, metrics)
