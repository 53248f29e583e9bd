"""Figures 4 and 5 (accuracy and time vs % pruned), the summary table and the method comparisons."""
import json
from pathlib import Path

from llm_anatomy.io import write_csv
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.report import (method_comparisons, plot_accuracy, plot_time, summary_table, to_markdown,
                                         write_text)
from llm_anatomy.pruning.targets import PruneTargets

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
runs = [json.loads(Path(f).read_text()) for f in sm.input.metrics]
table = summary_table(runs)
write_csv(table, sm.output.summary)
comparisons = method_comparisons(runs, PruneTargets(sm.config, sm.params.results).target_dir)
write_csv(comparisons, sm.output.comparisons)
write_text(sm.output.summary_md, to_markdown(table) + "\n## Method comparisons (paired, same reviews)\n\n"
           + to_markdown(comparisons))
plot_accuracy(runs, sm.output.accuracy)
plot_time(runs, sm.output.time)
log.info("%d runs summarised, %d method comparisons", len(runs), len(comparisons))
