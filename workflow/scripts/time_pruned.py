"""Time dense, zeroed and removed side by side (alternating, warmed up) for one target."""
from llm_anatomy.data import read_split
from llm_anatomy.io import write_json
from llm_anatomy.logs import setup_logging
from llm_anatomy.pruning.targets import Sizing
from llm_anatomy.pruning.timing import timing_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
p = sm.params
write_json(sm.output[0], timing_stage(sm.input.dense, sm.input.pruned, sm.input.plan, read_split(sm.input.test),
                                      Sizing(**p.sizing), p.threads, p.device))
