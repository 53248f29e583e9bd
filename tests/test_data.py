"""IMDB splitting: sizes, balance, determinism, disjointness, and clear errors on bad inputs."""
import numpy as np
import pandas as pd
import pytest

from llm_anatomy.data import DataError, make_splits, read_mirror


def synthetic_imdb(n=400, seed=0):
    rng = np.random.default_rng(seed)
    def frame(prefix):
        labels = np.repeat([0, 1], n // 2)
        return pd.DataFrame({"text": [f"{prefix} review {i} {rng.integers(1e9)}" for i in range(n)], "label": labels})
    return {"train": frame("train"), "test": frame("test")}


def test_sizes_balance_and_disjointness():
    splits = make_splits(synthetic_imdb(), n_train=100, n_val=30, n_test=50, seed=1)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [100, 30, 50]
    for name, df in splits.items():
        counts = df["label"].value_counts().to_dict()
        assert counts == {0: len(df) - len(df) // 2, 1: len(df) // 2}, name
    train_rows, val_rows = set(splits["train"]["source_index"]), set(splits["val"]["source_index"])
    assert not train_rows & val_rows
    assert set(splits["train"]["source_split"]) == set(splits["val"]["source_split"]) == {"train"}
    assert set(splits["test"]["source_split"]) == {"test"}
    assert not set(splits["test"]["text"]) & set(splits["train"]["text"])
    # rows are what their source index says they are
    src = synthetic_imdb()
    for df in splits.values():
        for _, row in df.head(5).iterrows():
            assert src[row["source_split"]].iloc[row["source_index"]]["text"] == row["text"]


def test_deterministic_in_seed():
    a = make_splits(synthetic_imdb(), 60, 20, 20, seed=3)
    b = make_splits(synthetic_imdb(), 60, 20, 20, seed=3)
    c = make_splits(synthetic_imdb(), 60, 20, 20, seed=4)
    for s in a:
        pd.testing.assert_frame_equal(a[s], b[s])
    assert not a["train"]["source_index"].equals(c["train"]["source_index"])


def test_too_many_requested_names_the_fix():
    with pytest.raises(DataError, match="lower the split sizes"):
        make_splits(synthetic_imdb(n=40), 100, 10, 10, seed=0)


@pytest.mark.parametrize("bad,match", [
    (pd.DataFrame({"review": ["x"], "label": [0]}), r"missing column\(s\) \['text'\]"),
    (pd.DataFrame({"text": ["x", "y"], "label": [0, 3]}), "labels must be 0 or 1"),
])
def test_malformed_mirror_names_the_file(tmp_path, bad, match):
    good = synthetic_imdb(n=10)["test"]
    bad.to_parquet(tmp_path / "train.parquet")
    good.to_parquet(tmp_path / "test.parquet")
    with pytest.raises(DataError, match=match) as err:
        read_mirror(tmp_path)
    assert "train.parquet" in str(err.value)


def test_unreadable_and_missing_files(tmp_path):
    synthetic_imdb(n=10)["train"].to_parquet(tmp_path / "train.parquet")
    with pytest.raises(DataError, match="test.parquet not found"):
        read_mirror(tmp_path)
    synthetic_imdb(n=10)["test"].to_parquet(tmp_path / "test.parquet")
    (tmp_path / "train.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="train.parquet is not a readable Parquet file"):
        read_mirror(tmp_path)


def _leaky_imdb(n=400):
    """synthetic_imdb whose test split repeats every train text (with other whitespace), so any draw leaks."""
    frames = synthetic_imdb(n=n)
    frames["test"] = frames["train"].assign(text=frames["train"]["text"].str.replace(" ", "  "))
    return frames


def _keys(df):
    return {" ".join(t.split()) for t in df["text"]}


def test_cross_split_duplicates_are_dropped_and_counted():
    frames = _leaky_imdb()
    frames["test"] = pd.concat([frames["test"], synthetic_imdb(n=400, seed=9)["test"]], ignore_index=True)
    info = {}
    splits = make_splits(frames, 100, 30, 50, seed=1, overlap="drop", info=info)
    # independent check: no test text, whitespace-normalised, occurs in train or validation
    assert not _keys(splits["test"]) & (_keys(splits["train"]) | _keys(splits["val"]))
    assert not _keys(splits["val"]) & _keys(splits["train"])
    assert info["found"]["test_in_train_or_val"] > 0 and info["removed"]["test"] == info["found"]["test_in_train_or_val"]
    assert info["remaining"] == {"val_in_train": 0, "test_in_train_or_val": 0, "duplicates_within_train": 0}
    for name, size in (("train", 100), ("val", 30), ("test", 50)):  # sizes and balance kept
        df = splits[name]
        assert len(df) == size and df["label"].sum() == size // 2 and df["source_index"].is_unique


def test_overlap_report_keeps_and_error_stops():
    info = {}
    kept = make_splits(_leaky_imdb(), 100, 30, 50, seed=1, overlap="report", info=info)
    assert info["removed"] == {"val": 0, "test": 0}
    assert info["remaining"]["test_in_train_or_val"] == len(_keys(kept["test"]) & (_keys(kept["train"]) | _keys(kept["val"])))
    with pytest.raises(DataError, match=r"test reviews in train or validation; set split.overlap: drop"):
        make_splits(_leaky_imdb(), 100, 30, 50, seed=1, overlap="error")


def test_a_clean_split_is_the_split_the_seed_always_gave():
    """Dropping draws nothing when nothing overlaps: the same frames as keeping."""
    dropped = make_splits(synthetic_imdb(), 60, 20, 20, seed=3, overlap="drop")
    kept = make_splits(synthetic_imdb(), 60, 20, 20, seed=3, overlap="report")
    for s in dropped:
        pd.testing.assert_frame_equal(dropped[s], kept[s])
