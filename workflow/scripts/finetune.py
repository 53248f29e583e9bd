"""Fine-tune one model of the active profile; resumes from its last checkpoint if one exists."""
import shutil
from pathlib import Path

from llm_anatomy.data import read_split
from llm_anatomy.finetune import FinetuneParams, finetune
from llm_anatomy.logs import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
spec = sm.params.spec
p = FinetuneParams.from_dict(dict(spec["finetune"], threads=sm.params.threads))
train = read_split(sm.input.train).iloc[: spec["finetune"]["train_limit"]]
metrics = finetune(spec["source"], spec["tokenizer"], train, read_split(sm.input.val), sm.output.model, sm.output.metrics,
                   sm.params.checkpoint, p, model_name=sm.wildcards.model,
                   expect_layers=spec["num_layers"], device=sm.params.device)
log.info("%s: validation accuracy %.4f [%.4f, %.4f], %.0f s training", sm.wildcards.model, metrics["val_accuracy"],
         metrics["val_accuracy_lo"], metrics["val_accuracy_hi"], metrics["train_seconds"])
shutil.rmtree(Path(sm.params.checkpoint).parent, ignore_errors=True)  # the finished model supersedes it
