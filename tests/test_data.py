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
