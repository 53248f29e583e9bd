"""One named configuration's headline metrics over the profile's models (what `dvc metrics show` reads)."""
import json

from llm_anatomy.io import write_json
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.report import headline

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
runs = [json.loads(open(f).read()) for f in sm.input]
write_json(sm.output[0], {m["model"]: headline(m) for m in runs})
