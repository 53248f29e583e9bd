"""Tokenisation: truncation is counted, logged and kept with the ids, never silent."""
import logging

import pytest

from llm_anatomy.batching import encode


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_is_counted_and_logged(tokenizer, side, caplog):
    long_text = " ".join(f"word{i}" for i in range(400))  # a 400-word probe
    texts = ["a short review", long_text]
    with caplog.at_level(logging.INFO):
        enc = encode(tokenizer, texts, max_length=16, truncation_side=side, what="probes")
    # independent: the untruncated token counts straight from the tokenizer, specials included
    full = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert full[0] < 16 < full[1]
    assert [len(e) for e in enc] == [full[0], 16]
    assert enc.cut == [0, full[1] - 16]
    assert enc.truncation() == dict(texts=2, truncated=1, tokens_cut=full[1] - 16, max_cut=full[1] - 16,
                                    max_length=16, side=side)
    assert f"probes: 1 of 2 cut to 16 tokens on the {side} ({full[1] - 16} tokens dropped" in caplog.text
    # special tokens survive truncation on either side
    assert enc[1][0] == tokenizer.cls_token_id and enc[1][-1] == tokenizer.sep_token_id


def test_nothing_cut_logs_nothing(tokenizer, caplog):
    with caplog.at_level(logging.INFO):
        enc = encode(tokenizer, ["short", "also short"], max_length=64)
    assert enc.cut == [0, 0] and enc.truncation()["truncated"] == 0 and "cut to" not in caplog.text


class _NoOverflow:
    """A tokenizer that ignores return_overflowing_tokens (as slow tokenizers may): encode's two-pass path."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __setattr__(self, name, value):
        if name == "tok":
            object.__setattr__(self, name, value)
        else:
            setattr(self.tok, name, value)

    def __call__(self, texts, return_overflowing_tokens=False, **kw):
        return self.tok(texts, **kw)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("overflow", [True, False])
def test_ids_are_the_tokenizers_own_truncation(tokenizer, side, overflow):
    texts = ["", "one", "a short review", " ".join(f"w{i}" for i in range(300)), "x " * 17, "good " * 40]
    tok = tokenizer if overflow else _NoOverflow(tokenizer)
    enc = encode(tok, texts, max_length=12, truncation_side=side)
    tokenizer.truncation_side = side
    assert list(enc) == tokenizer(texts, truncation=True, max_length=12)["input_ids"]
    assert enc.cut == [max(0, len(tokenizer(t)["input_ids"]) - 12) for t in texts]
