"""One target's metrics.json (the PruneMetrics record) from its plan, evaluations, folder and timing."""
from llm_anatomy.io import write_json
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.metrics import collect_target

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
i = sm.input
benchmarks = {k.removeprefix("benchmark_"): v for k, v in i.items() if k.startswith("benchmark_")}
m = collect_target(sm.wildcards.model, sm.wildcards.target, i.plan, i.dense_eval, i.eval, i.baselines, i.pruned,
                   i.timing, benchmarks=benchmarks)
write_json(sm.output[0], m.to_dict())
log.info("%s/%s: pruned %.1f%%, accuracy %.4f (dense %.4f, random %.4f +- %.4f), speedup removed %.3fx",
         m.model, m.target, m.pruned_pct, m.accuracy, m.accuracy_dense, m.accuracy_random_mean,
         m.accuracy_random_std, m.speedup_removed)
