"""Per-review logits on disk, and accuracy from them (no torch: cheap to import for collecting).

eval_<split>.parquet: one row per review (and variant, for baselines):
  review int32 (row of the split file), label int8, logit float32 [, variant string]
with the run's facts (model folder, reviews, device, precision, seconds) as JSON in the
file's metadata under `llm_anatomy.eval`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from .io import dumps, parquet_metadata, read_parquet, write_parquet

EVAL_META = b"llm_anatomy.eval"


def first_reviews(split: pd.DataFrame, limit: int | None, where: str = "split") -> pd.DataFrame:
    """The first `limit` reviews of a split (all when None); a limit beyond the split is an error."""
    if limit is None:
        return split
    if limit > len(split):
        raise ValueError(f"{where}: {limit} reviews asked for, but the split holds {len(split)}; "
                         "lower the limit (test_limit) or enlarge the split")
    return split.iloc[:limit]


def logits_frame(logits: np.ndarray, labels, variant: str | None = None) -> pd.DataFrame:
    df = pd.DataFrame({"review": np.arange(len(logits), dtype=np.int32),
                       "label": np.asarray(labels, dtype=np.int8), "logit": np.asarray(logits, dtype=np.float32)})
    if variant is not None:
        df.insert(0, "variant", variant)
    return df


def write_logits(df: pd.DataFrame, path, info: dict) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), EVAL_META: dumps(info).encode()})
    write_parquet(table, path)


def read_logits(path) -> tuple[pd.DataFrame, dict]:
    meta = parquet_metadata(path)
    return read_parquet(path), json.loads(meta.get(EVAL_META, b"{}"))


def accuracy_of(df: pd.DataFrame) -> float:
    """Accuracy from per-review logits (logit > 0 means positive)."""
    return accuracy(df["logit"].to_numpy(), df["label"].to_numpy())


def correct(logits, labels) -> np.ndarray:
    """Per-review 0/1 outcome of a single-logit classifier (logit > 0 means positive)."""
    return ((np.asarray(logits) > 0).astype(np.int8) == np.asarray(labels).astype(np.int8)).astype(np.float64)


def accuracy(logits: np.ndarray, labels: Sequence[int]) -> float:
    return float(correct(logits, labels).mean())
