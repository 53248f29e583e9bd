"""experiments/heldout.py: the extra held-out reviews are train-half reviews that no offline train or val review is,
by row or by text, and that occur once in the train half; the test half is never read."""
import sys

import numpy as np
import pandas as pd
import pytest

from llm_anatomy.data import make_splits, text_key
from llm_anatomy.io import write_parquet
from llm_anatomy.layout import Layout

from conftest import ROOT
from test_data import synthetic_imdb

sys.path.insert(0, str(ROOT / "experiments"))
from heldout import heldout_pool, heldout_reviews  # noqa: E402


def _halves():
    """The synthetic IMDB halves with, in the train half, a row holding an offline val review's text in other
    whitespace and two rows sharing one text; and the offline splits made from the unchanged halves."""
    frames = synthetic_imdb(n=200)
    splits = make_splits(frames, 40, 8, 12, seed=0)
    train = frames["train"].copy()
    free = sorted(set(range(len(train))) - set(splits["train"]["source_index"]) - set(splits["val"]["source_index"]))
    copy_of_val, twin_a, twin_b = free[:3]
    train.loc[copy_of_val, "text"] = "  " + splits["val"]["text"].iloc[0].replace(" ", "\n ")
    train.loc[[twin_a, twin_b], "text"] = "the same review twice"
    return {**frames, "train": train}, splits, {copy_of_val, twin_a, twin_b}


def test_pool_excludes_offline_reviews_by_row_and_text_and_repeated_texts():
    frames, splits, planted = _halves()
    pool = heldout_pool(frames["train"], {s: splits[s] for s in ("train", "val")})
    rows = set(pool["source_index"])
    used = set(splits["train"]["source_index"]) | set(splits["val"]["source_index"])
    # exactly the train half's rows less the offline ones and the three planted ones
    assert rows == set(range(len(frames["train"]))) - used - planted
    assert not set(pool["text"].map(text_key)) & set(pd.concat([splits["train"], splits["val"]])["text"].map(text_key))
    assert (frames["train"]["text"].iloc[pool["source_index"]].to_numpy() == pool["text"].to_numpy()).all()


def test_pool_refuses_an_offline_split_of_the_test_half():
    frames, splits, _ = _halves()
    with pytest.raises(ValueError, match="IMDB train half only"):
        heldout_pool(frames["train"], {"train": splits["train"], "val": splits["test"]})


def test_heldout_reviews_read_the_train_half_and_the_offline_splits(tmp_path, monkeypatch):
    frames, splits, planted = _halves()
    mirror = tmp_path / "imdb"
    mirror.mkdir()
    frames["train"].to_parquet(mirror / "train.parquet")  # no test.parquet: it must not be needed
    monkeypatch.chdir(tmp_path)
    layout = Layout("t")
    for s in ("train", "val"):
        write_parquet(splits[s], layout.split(s))
    got = heldout_reviews(20, mirror, layout, seed=3)
    assert len(got) == 20 and got["label"].sum() == 10 and set(got["source_split"]) == {"train"}
    used = set(splits["train"]["source_index"]) | set(splits["val"]["source_index"]) | planted
    assert not set(got["source_index"]) & used and got["source_index"].is_unique
    assert (frames["train"]["text"].iloc[got["source_index"]].to_numpy() == got["text"].to_numpy()).all()
    assert got.equals(heldout_reviews(20, mirror, layout, seed=3))  # seeded
    assert not np.array_equal(got["source_index"], heldout_reviews(20, mirror, layout, seed=4)["source_index"])
