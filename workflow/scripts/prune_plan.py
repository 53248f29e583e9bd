"""Plan one prune target: the neurons it prunes per layer (no forward pass), and its random baselines."""
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.plan import plan_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
plan = plan_stage(sm.params.cfg, sm.input.layer_scores, sm.input.neuron_scores, sm.output.plan, sm.output.random_plans,
                  sm.params.seeds, sm.params.high_threshold, sm.params.average_over, sm.input.get("ffn_stats"),
                  sm.input.get("mask_gradients"), sm.input.get("contributions"), sm.input.get("obs_scores"),
                  sm.input.get("sensitivity"))
for line in plan.log_lines:
    log.info(line)
log.info("%s/%s: %d of %d FFN neurons pruned", sm.wildcards.model, sm.wildcards.target, sum(plan.counts),
         int(plan.table["width"].sum()))
