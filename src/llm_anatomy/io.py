"""Atomic writers: every artifact appears complete or not at all."""
from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


NULL_REASONS = "null_reasons"


def strict(obj, where: str = "", nulls: dict | None = None):
    """`obj` with every NaN or infinity replaced by None (strict JSON parsers reject them), recording
    in `nulls` the dotted key of each and what it was."""
    if isinstance(obj, (np.floating, float)) and not math.isfinite(obj):
        if nulls is not None:
            nulls[where or "<value>"] = "NaN: undefined for these inputs" if math.isnan(obj) else f"{float(obj)}"
        return None
    if isinstance(obj, dict):
        return {k: strict(v, f"{where}.{k}" if where else str(k), nulls) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v, f"{where}[{i}]", nulls) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return strict(obj.tolist(), where, nulls)
    return obj


def dumps(obj, **kwargs) -> str:
    """Strict JSON: non-finite numbers become null; in a top-level object `null_reasons` says which
    keys were nulled and what they held."""
    nulls: dict = {}
    clean = strict(obj, nulls=nulls)
    if nulls and isinstance(clean, dict):
        clean[NULL_REASONS] = {**clean.get(NULL_REASONS, {}), **nulls}
    return json.dumps(clean, allow_nan=False, default=_jsonable, **kwargs)


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


PARQUET_INFO = b"llm_anatomy.info"


def write_parquet(df: pd.DataFrame, path: str | Path, schema=None, info: dict | None = None) -> None:
    """`info`: a JSON object kept in the file's schema metadata (read it back with `parquet_info`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    if info is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_INFO: dumps(info).encode()})
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def parquet_info(path: str | Path) -> dict:
    """The `info` a file was written with ({} when none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[PARQUET_INFO]) if PARQUET_INFO in meta else {}


def write_csv(df: pd.DataFrame, path: str | Path, **kwargs) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False, **kwargs)
    os.replace(tmp, path)


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary sibling folder; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
