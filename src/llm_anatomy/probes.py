"""Anatomy inputs: the probe sentences (a TSV like the paper's Table 1) and seeded review samples.

Inputs table (`results/<model>/anatomy_inputs.parquet`), one row per input:
  input_set  string   "probe", "calibration" (train split) or "validation" (validation split; the anatomy
                      never reads the test split, which only the final evaluation reads)
  input_id   int64    the probe's `input_id`, or the row position within the sampled set
  subtask    string   probe sub-task ("" for reviews)
  variant    string   probe variant ("" for reviews)
  label      int64    review label 0/1; -1 for probes (they carry none)
  text       string
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PROBE_COLUMNS = ["input_id", "subtask", "variant", "text"]
INPUT_COLUMNS = ["input_set", "input_id", "subtask", "variant", "label", "text"]
INPUT_SETS = ("probe", "calibration", "validation")  # every input_set of the extraction's tables


class ProbeError(ValueError):
    """A probe file that is missing or malformed; the message names the file and the fix."""


def read_probes(path: str | Path) -> pd.DataFrame:
    """A tab-separated probe file with columns input_id, subtask, variant, text (extra columns ignored)."""
    path = Path(path)
    if not path.exists():
        raise ProbeError(f"probe file {path} not found; set anatomy.probes in params.yaml to a TSV with columns "
                         f"{PROBE_COLUMNS} (the project's own is resources/probes.tsv)")
    try:
        df = pd.read_csv(path, sep="\t", dtype={"subtask": str, "variant": str, "text": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ProbeError(f"probe file {path} is empty; it needs a header line with the tab-separated columns "
                         f"{PROBE_COLUMNS} and at least one probe row") from None
    except pd.errors.ParserError as err:
        raise ProbeError(f"probe file {path} is not a readable TSV ({err}); write tab-separated columns "
                         f"{PROBE_COLUMNS}") from None
    missing = set(PROBE_COLUMNS) - set(df.columns)
    if missing:
        raise ProbeError(f"{path}: missing column(s) {sorted(missing)}; found {list(df.columns)}. "
                         f"A probe TSV needs the tab-separated columns {PROBE_COLUMNS}.")
    if df.empty:
        raise ProbeError(f"{path}: no probe rows")
    if not pd.api.types.is_integer_dtype(df["input_id"]):
        bad = df.loc[pd.to_numeric(df["input_id"], errors="coerce").isna(), "input_id"].tolist()
        raise ProbeError(f"{path}: input_id must be an integer; found {bad[:5]}")
    if df["input_id"].duplicated().any():
        raise ProbeError(f"{path}: input_id values must be unique; repeated: "
                         f"{sorted(df.loc[df['input_id'].duplicated(), 'input_id'].tolist())}")
    if (df["text"].str.strip() == "").any():
        raise ProbeError(f"{path}: empty text for input_id {df.loc[df['text'].str.strip() == '', 'input_id'].tolist()}")
    return df[PROBE_COLUMNS].assign(input_id=df["input_id"].astype("int64")).reset_index(drop=True)


def sample_reviews(split: pd.DataFrame, n: int, seed: int, where: str) -> pd.DataFrame:
    """n reviews drawn without replacement by a seeded generator; more than the split holds is an error."""
    if not 0 <= n <= len(split):
        raise ValueError(f"{where}: sample size {n} must lie between 0 and the split's {len(split)} reviews")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(split), size=n, replace=False))
    return split.iloc[idx].reset_index(drop=True)


def anatomy_inputs(probes: pd.DataFrame, calibration: pd.DataFrame, validation: pd.DataFrame) -> pd.DataFrame:
    """One table of every input the extraction runs on, in the order of INPUT_COLUMNS."""
    parts = [probes.assign(input_set=INPUT_SETS[0], label=-1)]
    for name, df in zip(INPUT_SETS[1:], (calibration, validation)):
        parts.append(pd.DataFrame({"input_set": name, "input_id": np.arange(len(df), dtype=np.int64),
                                   "subtask": "", "variant": "", "label": df["label"].to_numpy(np.int64),
                                   "text": df["text"].to_numpy()}))
    out = pd.concat(parts, ignore_index=True)[INPUT_COLUMNS]
    return out.astype({"input_id": "int64", "label": "int64"})
