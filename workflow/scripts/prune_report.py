"""Figures 4 and 5 (accuracy and time vs % pruned) and the summary table."""
import json
from pathlib import Path

from llm_anatomy.io import write_csv
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.report import plot_accuracy, plot_time, summary_table, to_markdown, write_text

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
runs = [json.loads(Path(f).read_text()) for f in sm.input]
table = summary_table(runs)
write_csv(table, sm.output.summary)
write_text(sm.output.summary_md, to_markdown(table))
plot_accuracy(runs, sm.output.accuracy)
plot_time(runs, sm.output.time)
log.info("%d runs summarised", len(runs))
