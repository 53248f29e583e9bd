"""Gather per-model metrics JSON files into one file keyed by model (what `dvc metrics show` reads)."""
import json
from pathlib import Path

from llm_anatomy.io import write_json
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
write_json(sm.output[0], {Path(f).parent.name: json.loads(Path(f).read_text()) for f in sm.input})
