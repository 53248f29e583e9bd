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
