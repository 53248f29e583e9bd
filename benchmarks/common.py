"""What every benchmark script shares: its command line (a fine-tuned checkpoint, the test split, how
many reviews, batch size, threads, repeats), loading the checkpoint with those reviews, timing runs
side by side in alternating order, and comparing two runs' predictions."""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from llm_anatomy.data import read_split
from llm_anatomy.layout import Layout
from llm_anatomy.models import load_classifier, set_threads


def parser(doc: str, reviews: int, repeats: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--test", default=Layout("offline").split("test"))
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


def best_seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def alternate(runs: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds of each of `runs` (name -> no-argument callable), `repeats` passes in alternating order
    (reversed every other repeat) after a warm-up of each; also the last output of each."""
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up: kernels, allocator, set-up
    times = {name: [] for name in runs}
    for r in range(repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            outputs[name] = runs[name]()
            times[name].append(time.perf_counter() - start)
    return times, outputs


def compare_predictions(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> dict:
    """Two logit vectors for the same reviews: each accuracy, the paired difference a - b with its 95%
    interval and exact McNemar p, how many predictions differ, the largest logit difference."""
    from llm_anatomy.stats import paired_difference

    right_a, right_b = (a > 0) == labels, (b > 0) == labels
    d = paired_difference(right_a, right_b)
    return dict(accuracy=(float(right_a.mean()), float(right_b.mean())),
                difference=dict(diff=d.diff, lo=d.lo, hi=d.hi, p_mcnemar=d.p_mcnemar),
                predictions_that_differ=int(((a > 0) != (b > 0)).sum()),
                max_abs_logit_diff=float(np.abs(a - b).max()))
