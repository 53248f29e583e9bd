"""Tokenise once, then batch with dynamic padding: length-sorted for inference, length-grouped
shuffles for training (both cut the padding a fixed-length batch would compute on)."""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .progress import progress

log = logging.getLogger(__name__)


class Encoded(list):
    """Token ids per text (a list), and how many tokens truncation cut from each (`cut`)."""

    def __init__(self, ids: list[list[int]], cut: list[int], max_length: int, side: str):
        super().__init__(ids)
        self.cut, self.max_length, self.side = cut, max_length, side

    def truncation(self) -> dict:
        """What truncation did, for an output's metadata."""
        cut = np.asarray(self.cut, dtype=np.int64)
        return dict(texts=len(cut), truncated=int((cut > 0).sum()), tokens_cut=int(cut.sum()),
                    max_cut=int(cut.max(initial=0)), max_length=self.max_length, side=self.side)


def encode(tokenizer, texts: Sequence[str], max_length: int, truncation_side: str = "right",
           what: str = "texts") -> Encoded:
    """Token ids per text, special tokens included, truncated to `max_length` on the given side; how
    many texts were cut, and by how much, is logged and kept on the result.

    One tokenisation pass: a fast tokenizer returns what truncation cut as overflow rows (stride 0), whose
    content tokens are counted and dropped. A tokenizer without that support is run twice (cut and uncut)."""
    texts = list(texts)
    tokenizer.truncation_side = truncation_side
    out = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True,
                    return_overflowing_tokens=True)
    if "overflow_to_sample_mapping" in out:
        special = tokenizer.num_special_tokens_to_add(pair=False)
        ids, cut = [None] * len(texts), [0] * len(texts)
        for row, text in zip(out["input_ids"], out["overflow_to_sample_mapping"]):
            if ids[text] is None:  # a text's first row is the kept part, whichever side was cut
                ids[text] = row
            else:
                cut[text] += len(row) - special
    else:
        ids = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
        full = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]  # verbose: no too-long warning
        cut = [len(f) - len(o) for f, o in zip(full, ids)]
    encoded = Encoded(ids, cut, max_length, truncation_side)
    t = encoded.truncation()
    if t["truncated"]:
        log.info("%s: %d of %d cut to %d tokens on the %s (%d tokens dropped, at most %d from one)", what,
                 t["truncated"], t["texts"], max_length, truncation_side, t["tokens_cut"], t["max_cut"])
    return encoded


def encode_reviews(tokenizer, meta: dict, texts, what: str = "reviews") -> Encoded:
    """Tokenise as a saved checkpoint was fine-tuned (its classifier.json max_length and truncation side)."""
    return encode(tokenizer, texts, meta["max_length"], meta.get("truncation_side", "right"), what)


def pad(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [batch, longest] for a list of id lists."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        at = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[row, at], mask[row, at] = torch.as_tensor(s), 1
    return ids, mask


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches over items sorted by length (longest first, so memory peaks early)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, group: int = 50) -> list[np.ndarray]:
    """A seeded shuffle, sorted by length within groups of `group` batches, batch order shuffled.

    Deterministic in (lengths, batch_size, seed), which is what lets training resume mid-epoch."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    batches = []
    chunk = batch_size * group
    for start in range(0, len(order), chunk):
        part = order[start: start + chunk]
        batches += [part[idx] for idx in sorted_batches(lengths[part], batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def iter_padded(encoded: Sequence[Sequence[int]], batches: Sequence[np.ndarray], pad_id: int,
                side: str = "right", device: torch.device | None = None
                ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """(indices, input_ids, attention_mask) per batch, the tensors on `device` (default: CPU)."""
    for idx in batches:
        ids, mask = pad([encoded[i] for i in idx], pad_id, side)
        if device is not None and device.type != "cpu":
            ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        yield idx, ids, mask


def progress_batches(encoded: Sequence[Sequence[int]], batch_size: int, pad_id: int, side: str = "right",
                     desc: str | None = None, mininterval: float = 10, device: torch.device | None = None
                     ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Length-sorted, dynamically padded batches for inference, with a progress bar when `desc` is given."""
    batches = sorted_batches([len(s) for s in encoded], batch_size)
    return progress(iter_padded(encoded, batches, pad_id, side, device), total=len(batches), desc=desc,
                    mininterval=mininterval)

