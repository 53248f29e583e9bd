"""Figures 4 and 5 (accuracy and time vs % pruned), the summary table, the method comparisons, and the
headline metrics and data plots DVC compares across experiments."""
import json
from pathlib import Path

from llm_anatomy.io import write_csv, write_json
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.report import (experiment_headline, frontier_table, method_comparisons, plot_accuracy,
                                         plot_pareto, plot_series, plot_time, summary_table, to_markdown, write_text)
from llm_anatomy.pruning.targets import PruneTargets

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
runs = [json.loads(Path(f).read_text()) for f in sm.input.metrics]
table = summary_table(runs)
write_csv(table, sm.output.summary)
comparisons = method_comparisons(runs, PruneTargets(sm.config, str(Path(sm.output.summary).parent)).target_dir)
write_csv(comparisons, sm.output.comparisons)
frontier = frontier_table(runs)
write_csv(frontier, sm.output.frontier)
write_text(sm.output.summary_md, to_markdown(table) + "\n## Method comparisons (paired, same reviews)\n\n"
           + to_markdown(comparisons) + "\n## Frontier (no other point is as accurate at as many % pruned, or as fast)\n\n"
           + to_markdown(frontier))
plot_pareto(runs, sm.output.pareto)
plot_accuracy(runs, sm.output.accuracy)
plot_time(runs, sm.output.time)
write_json(sm.output.headline, experiment_headline(runs))
accuracy_series, speedup_series = plot_series(runs)
write_csv(accuracy_series, sm.output.plot_accuracy)
write_csv(speedup_series, sm.output.plot_speedup)
log.info("%d runs summarised, %d method comparisons", len(runs), len(comparisons))
