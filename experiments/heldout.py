"""Extra held-out reviews for choices made on validation: IMDB *train*-half reviews that are in neither the offline
train nor the offline validation split (by `source_index`, the row in the mirror's train.parquet), whose text
(whitespace-normalised, `data.text_key`) is not that of an offline train or validation review, and that occur
once in the train half. Neither the test half nor the offline test split is opened (so a train-half text that
also appears in the test half cannot be excluded: IMDB's halves share few texts, and 1,000 of these reviews are
expected to meet the 1,000 offline test reviews in well under one).

    from heldout import heldout_reviews
    extra = heldout_reviews(1000, mirror_dir, layout)  # text, label, source_split, source_index; balanced, seeded
"""
import numpy as np
import pandas as pd

from llm_anatomy.data import balanced_sample, check_frame, read_split, text_key
from llm_anatomy.layout import Layout, mirror_file


def heldout_pool(train_half: pd.DataFrame, offline: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The train half's rows (with `source_index`, their row number) that no offline split in `offline` (train and
    val: reviews of the IMDB train half) holds by row or by text, and whose text occurs once in the train half."""
    used, texts = set(), set()
    for name, df in offline.items():
        if set(df["source_split"]) != {"train"}:
            raise ValueError(f"the offline {name} split holds reviews of {sorted(set(df['source_split']))}; expected "
                             "the IMDB train half only")
        used |= set(df["source_index"].astype(int))
        texts |= set(df["text"].map(text_key))
    keys = train_half["text"].map(text_key)
    pool = train_half.reset_index(drop=True).assign(source_index=np.arange(len(train_half)))
    keep = ~pool["source_index"].isin(used).to_numpy() & ~keys.isin(texts).to_numpy() & ~keys.duplicated(keep=False).to_numpy()
    return pool[keep].reset_index(drop=True)


def heldout_reviews(n: int, mirror_dir, layout: Layout, seed: int = 0) -> pd.DataFrame:
    """`n` class-balanced reviews of `heldout_pool` (seeded): text, label, source_split, source_index."""
    path = mirror_file(mirror_dir, "train")  # the train half's file alone: the test half's is never opened
    train_half = check_frame(pd.read_parquet(path), str(path))
    pool = heldout_pool(train_half, {s: read_split(layout.split(s)) for s in ("train", "val")})
    pick = balanced_sample(pool, n, np.random.default_rng(seed), "held-out train-half reviews")
    out = pool.iloc[pick][["text", "label", "source_index"]].reset_index(drop=True)
    out.insert(2, "source_split", "train")
    return out
