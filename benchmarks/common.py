"""What every benchmark script shares: its command line (a fine-tuned checkpoint, the test split, how
many reviews, batch size, threads, repeats) and loading the checkpoint with those reviews."""
from __future__ import annotations

import argparse

import pandas as pd

from llm_anatomy.data import read_split
from llm_anatomy.models import load_classifier, set_threads


def parser(doc: str, reviews: int, repeats: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--test", default="data/processed/offline/test.parquet")
    ap.add_argument("--reviews", type=int, default=reviews)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=repeats)
    return ap


def load(args) -> tuple:
    """(model, tokenizer, meta, the first `--reviews` test reviews), with `--threads` set."""
    set_threads(args.threads)
    model, tok, meta = load_classifier(args.checkpoint)
    reviews: pd.DataFrame = read_split(args.test).iloc[: args.reviews]
    return model, tok, meta, reviews
