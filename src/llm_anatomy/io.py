"""The one atomic writer (`atomic_path`, and `atomic_dir` for folders): every artifact appears complete or not
at all; `write_json`, `write_parquet`, `write_csv`, `write_text` and every other writer of the package use it.
Readers of cached intermediates: a file that exists but cannot be read is moved aside and named, so the next
run rebuilds it; a file the user named (`user_files`, the command line) is named and left as it is."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import pandas as pd


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
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


def json_digest(obj) -> str:
    """16 hex digits of sha256 over `obj` as JSON with sorted keys: a key for what a cached result depends on."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path to write; on success it replaces `path`, on error it is removed. The
    temporary name keeps the suffix (`x.tmp.png`), so writers that infer the format from it still do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def from_record(cls, d: dict, **replaced):
    """A dataclass record from its JSON object (without the `null_reasons` that `dumps` adds)."""
    return cls(**{k: v for k, v in d.items() if k != NULL_REASONS}, **replaced)


def write_json(path: str | Path, obj) -> None:
    write_text(path, dumps(obj, indent=2) + "\n")


PARQUET_INFO = b"llm_anatomy.info"


def write_parquet(df: pd.DataFrame, path: str | Path, info: dict | None = None) -> None:
    """`info`: a JSON object kept in the file's schema metadata (read it back with `parquet_info`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    if info is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_INFO: dumps(info).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def parquet_info(path: str | Path) -> dict:
    """The `info` a file was written with ({} when none)."""
    return json.loads(parquet_metadata(path).get(PARQUET_INFO, b"{}"))


class UnreadableFile(RuntimeError):
    """A file that exists but cannot be read (a kill mid-copy, a full disk, a foreign file)."""


# Moving an unreadable file aside is right for the pipeline's own intermediates, which the rule that
# writes them rebuilds; a file the user named is theirs, so it is reported and never moved (`user_files`).
_MOVE_ASIDE = ContextVar("move_aside", default=True)


@contextmanager
def user_files():
    """Within it, every file read is the user's: an unreadable one is named and left untouched."""
    token = _MOVE_ASIDE.set(False)
    try:
        yield
    finally:
        _MOVE_ASIDE.reset(token)


def read_back(path: str | Path, reader: Callable):
    """`reader(path)`, except that an unreadable file is moved to `<name>.unreadable-<time>` (kept for
    inspection, not deleted) and reported by name: with the file gone, rerunning Snakemake runs the
    rule that writes it again. Inside `user_files()` it is reported and left where it is. A missing file
    is the caller's error as before (FileNotFoundError)."""
    path = Path(path)
    try:
        return reader(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 (Arrow, JSON and OS errors alike mean "cannot be read")
        if not path.is_file():
            raise
        why = f"{type(err).__name__}: {str(err)[:200]}"
        if not _MOVE_ASIDE.get():
            raise UnreadableFile(f"{path} cannot be read ({why}); the file is left as it is. Give a complete, "
                                 "readable copy of it") from None
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        raise UnreadableFile(f"{path} cannot be read ({why}); moved it to {aside}. "
                             "Rerun Snakemake: the file is now missing, so the rule that writes it runs again.") from None


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """pandas.read_parquet of a cached intermediate (see `read_back`). Asking for a column the file does
    not have is a ValueError naming both (a file from another version is readable, not corrupt)."""
    import pyarrow.parquet as pq

    names = read_back(path, pq.read_schema).names
    missing = [c for c in columns or [] if c not in names]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing} (it has {names}); it was written by another version: "
                         "delete it and rerun Snakemake")
    return read_back(path, lambda p: pd.read_parquet(p, columns=columns))


def read_json(path: str | Path):
    """A JSON file the pipeline wrote (see `read_back`)."""
    return read_back(path, lambda p: json.loads(p.read_text()))


def parquet_metadata(path: str | Path) -> dict:
    """A Parquet file's schema metadata (bytes -> bytes; {} when none; see `read_back`)."""
    import pyarrow.parquet as pq

    return read_back(path, lambda p: pq.read_schema(p).metadata or {})


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


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
