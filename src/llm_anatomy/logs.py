"""Logging for workflow scripts: Snakemake's `log:` redirects nothing, so each script does it."""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path


def setup_logging(log_path: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send log records (and Python warnings) to `log_path` and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", message=".*non-writable.*")
    for noisy in ("transformers", "datasets", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("llm_anatomy")


def run_rule(snakemake, stage) -> None:
    """A workflow script's whole body: log to the rule's log file, then call the rule's stage function (named
    as the rule) with the rule's named inputs, outputs and params as keywords; log what it returns."""
    log = setup_logging(snakemake.log[0])
    kwargs: dict = {}
    for part in (snakemake.input, snakemake.output, snakemake.params):
        for key, value in part.items():
            if key in kwargs:
                raise ValueError(f"rule {snakemake.rule}: {key!r} names two of its inputs, outputs and params")
            kwargs[key] = value
    kwargs.pop("code", None)  # the params entry that reruns the rule when its code changes
    result = stage(**kwargs)
    if result is not None:
        log.info("%s %s: %s", snakemake.rule, dict(snakemake.wildcards), result)
