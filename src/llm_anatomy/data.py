"""IMDB: read the local Parquet mirror or the hub copy, check it, split it.

Processed split schema (`data/processed/{train,val,test}.parquet`):
  text          string   the review as distributed (HTML `<br />` kept)
  label         int64    0 negative, 1 positive
  source_split  string   "train" or "test": the IMDB split the row comes from
  source_index  int64    row index in that IMDB split (after the mirror's own order)
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .io import read_parquet, write_parquet
from .layout import mirror_file

log = logging.getLogger(__name__)

SPLIT_COLUMNS = ["text", "label", "source_split", "source_index"]


class DataError(ValueError):
    """A data input that is missing or malformed; the message names the file and the fix."""


def check_frame(df: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = {"text", "label"} - set(df.columns)
    if missing:
        raise DataError(f"{where}: missing column(s) {sorted(missing)}; found {list(df.columns)}. "
                        "An IMDB table needs `text` (string) and `label` (0/1).")
    labels = set(pd.unique(df["label"]))
    if not labels <= {0, 1}:
        raise DataError(f"{where}: labels must be 0 or 1, found {sorted(labels)[:10]}")
    if df["text"].isna().any() or not all(isinstance(t, str) for t in df["text"].head(1000)):
        raise DataError(f"{where}: column `text` must hold non-null strings")
    return df.assign(label=df["label"].astype("int64"))


def read_mirror(mirror_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The `train` and `test` splits of a local Parquet mirror (see ../shared/data/imdb/README.md)."""
    frames = {}
    for split in ("train", "test"):
        path = mirror_file(mirror_dir, split)
        if not path.exists():
            raise DataError(f"{path} not found. Point `data.mirror_dir` in params.yaml at a folder holding "
                            "IMDB train.parquet and test.parquet, or set `data.source: hub` where a network exists.")
        try:
            df = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a bad file
            raise DataError(f"{path} is not a readable Parquet file: {err}") from err
        frames[split] = check_frame(df, str(path))
    return frames


def read_imdb(source: str, mirror_dir: str | Path, hub_name: str) -> dict[str, pd.DataFrame]:
    if source == "mirror":
        return read_mirror(mirror_dir)
    if source == "hub":  # a hub dataset such as `stanfordnlp/imdb` (needs a network)
        from datasets import load_dataset

        ds = load_dataset(hub_name)
        return {split: check_frame(ds[split].to_pandas(), f"{hub_name}[{split}]") for split in ("train", "test")}
    raise DataError(f"data.source is {source!r}; use `mirror` or `hub`")


def balanced_sample(df: pd.DataFrame, n: int, rng: np.random.Generator, where: str) -> np.ndarray:
    """Row positions of n rows, half of each label (the odd one negative), in shuffled order."""
    picks = []
    for label, count in ((0, n - n // 2), (1, n // 2)):
        pool = np.flatnonzero(df["label"].to_numpy() == label)
        if count > len(pool):
            raise DataError(f"{where}: asked for {count} reviews of label {label}, only {len(pool)} exist; "
                            "lower the split sizes in the profile")
        picks.append(rng.choice(pool, size=count, replace=False))
    picked = np.concatenate(picks)
    rng.shuffle(picked)
    return picked


OVERLAP_POLICIES = ("drop", "report", "error")


def text_key(text: str) -> str:
    """Reviews that differ only in whitespace are the same review."""
    return " ".join(str(text).split())


def overlap_counts(splits: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Exact duplicates (after whitespace normalisation) across the splits, and within train."""
    keys = {name: df["text"].map(text_key) for name, df in splits.items()}
    train, val = set(keys["train"]), set(keys["val"])
    return {"val_in_train": int(keys["val"].isin(train).sum()),
            "test_in_train_or_val": int(keys["test"].isin(train | val).sum()),
            "duplicates_within_train": int(keys["train"].duplicated().sum())}


def _replace_overlap(src: pd.DataFrame, idx: np.ndarray, forbidden: set[str], taken: set[int],
                     rng: np.random.Generator, where: str) -> tuple[np.ndarray, int]:
    """Swap every pick whose text is in `forbidden` for a fresh pick of the same label; no draw at all
    when nothing overlaps, so a clean split is the split the seed always gave."""
    keys = src["text"].map(text_key).to_numpy()
    bad = [i for i, pos in enumerate(idx) if keys[pos] in forbidden]
    if not bad:
        return idx, 0
    idx = idx.copy()
    labels = src["label"].to_numpy()
    used, chosen = set(taken) | set(idx.tolist()), set(keys[idx]) - forbidden
    candidates: dict[int, list] = {}
    for i in bad:
        label = int(labels[idx[i]])
        if label not in candidates:
            candidates[label] = list(rng.permutation(np.flatnonzero(labels == label)))
        while candidates[label]:
            pos = int(candidates[label].pop())
            if pos not in used and keys[pos] not in forbidden and keys[pos] not in chosen:
                break
        else:
            raise DataError(f"{where}: not enough distinct reviews of label {label} left to replace the ones that "
                            "also occur in another split; lower the split sizes")
        idx[i] = pos
        used.add(pos)
        chosen.add(keys[pos])
    return idx, len(bad)


def make_splits(frames: dict[str, pd.DataFrame], n_train: int, n_val: int, n_test: int,
                seed: int, overlap: str = "drop", info: dict | None = None) -> dict[str, pd.DataFrame]:
    """Seeded, class-balanced train/val from IMDB train and test from IMDB test, disjoint in rows and,
    with `overlap: drop`, in text: a val or test review whose text (whitespace-normalised) also occurs
    in an earlier split is replaced by a fresh review of the same label. `report` keeps such reviews
    and says how many; `error` stops. `info`, when given, receives what was found and removed."""
    if overlap not in OVERLAP_POLICIES:
        raise DataError(f"split.overlap is {overlap!r}; use one of {OVERLAP_POLICIES}")
    rng = np.random.default_rng(seed)
    train_src, test_src = frames["train"].reset_index(drop=True), frames["test"].reset_index(drop=True)
    trainval = balanced_sample(train_src, n_train + n_val, rng, "IMDB train")
    # Split the pooled pick so both halves stay balanced.
    labels = train_src["label"].to_numpy()[trainval]
    val_idx = np.concatenate([trainval[labels == 0][: n_val - n_val // 2], trainval[labels == 1][: n_val // 2]])
    train_idx = np.setdiff1d(trainval, val_idx, assume_unique=True)
    rng.shuffle(val_idx)
    rng.shuffle(train_idx)
    test_idx = balanced_sample(test_src, n_test, rng, "IMDB test")

    def frame(src, idx, name):
        out = src.iloc[idx][["text", "label"]].assign(source_split=name, source_index=idx.astype("int64"))
        return out.reset_index(drop=True)[SPLIT_COLUMNS]

    splits = {"train": frame(train_src, train_idx, "train"), "val": frame(train_src, val_idx, "train"),
              "test": frame(test_src, test_idx, "test")}
    found = overlap_counts(splits)
    removed = {"val": 0, "test": 0}
    if overlap == "error" and (found["val_in_train"] or found["test_in_train_or_val"]):
        raise DataError(f"the split shares texts across splits: {found['val_in_train']} validation reviews occur in "
                        f"train and {found['test_in_train_or_val']} test reviews in train or validation; set "
                        "split.overlap: drop to replace them (or report to keep them)")
    if overlap == "drop":
        train_keys = set(splits["train"]["text"].map(text_key))
        val_idx, removed["val"] = _replace_overlap(train_src, val_idx, train_keys, set(train_idx.tolist()), rng,
                                                   "IMDB train (validation)")
        splits["val"] = frame(train_src, val_idx, "train")
        forbidden = train_keys | set(splits["val"]["text"].map(text_key))
        test_idx, removed["test"] = _replace_overlap(test_src, test_idx, forbidden, set(), rng, "IMDB test")
        splits["test"] = frame(test_src, test_idx, "test")
    if info is not None:
        info.update(policy=overlap, found=found, removed=removed, remaining=overlap_counts(splits))
    return splits


def read_split(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} not found; build it with `snakemake --cores all {path}`")
    return check_frame(read_parquet(path), str(path))


def split_data(source: str, mirror_dir, hub_name: str, split: dict, train, val, test) -> dict:
    """Read IMDB (mirror or hub) and write the seeded, class-balanced train/val/test splits (rule split_data);
    texts shared across splits are dropped, reported or an error (`split.overlap`), and what was found goes
    into each file's info."""
    hygiene: dict = {}
    splits = make_splits(read_imdb(source, mirror_dir, hub_name), split["train"], split["val"], split["test"],
                         split["seed"], split["overlap"], hygiene)
    found, removed = hygiene["found"], hygiene["removed"]
    (log.warning if hygiene["policy"] == "report" and any(hygiene["remaining"].values()) else log.info)(
        "texts shared across splits (whitespace-normalised): %d validation reviews in train, %d test reviews in "
        "train or validation, %d duplicates within train; policy %s: replaced %d validation and %d test reviews",
        found["val_in_train"], found["test_in_train_or_val"], found["duplicates_within_train"], hygiene["policy"],
        removed["val"], removed["test"])
    for name, path in dict(train=train, val=val, test=test).items():
        write_parquet(splits[name], path, info={"overlap": hygiene})
        log.info("%s: %d reviews, %d positive -> %s", name, len(splits[name]), int(splits[name]["label"].sum()), path)
    return {name: len(df) for name, df in splits.items()}
