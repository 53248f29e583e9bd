# llm-anatomy: fine-tune -> extract -> score -> prune -> report.
# Run: snakemake --cores all            (the `offline` profile of params.yaml)
#      snakemake --cores all --config profile=tiny
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("8.0")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the package works from a clone even before `pip install -e .`
from llm_anatomy.config import exit_on_params_error, load_params

# A YAML mistake in params.yaml stops the run here with its line and column; Snakemake's own loader
# (`configfile:`) names neither. A missing file is left to `configfile:`, which says so.
if Path("params.yaml").exists():
    with exit_on_params_error():
        load_params("params.yaml")


configfile: "params.yaml"


# A limit in profiles/default's `resources` holds per machine in a local run and per submitted job on a
# cluster, never across the cluster: one timing job at a time and one GPU per node's job (docs/WORKFLOW.md).
resource_scopes:
    prune_timing="local",
    gpu="local",


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/anatomy.smk"
include: "workflow/rules/prune.smk"


onstart:
    # Not on dry runs: a hub profile stops here, before its first job, when the hub is out of reach.
    from llm_anatomy.hub import check_hub

    check_hub(config)


# Everything the offline default (or the chosen profile) produces. (A comment, not a docstring:
# snakefmt moves default_target above a docstring and then cannot parse the result.)
rule all:
    default_target: True
    input:
        all_targets(),
    localrule: True


# A file target that no rule produces ends the run here, with the profile's nearest targets: Snakemake 9.15
# fails while formatting its own "No rule to produce" message and shows an AttributeError traceback instead.
if unproducible := unproducible_targets(workflow):
    sys.exit(unproducible_message(unproducible[0], workflow))
