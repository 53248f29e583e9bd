"""The latency model (`pruning.latency`): its cache key (what makes a table this machine's and these shapes'),
the interpolation and sums of a hand-made table, the inputs it replays against what the loop feeds the first
block, and the pruned shapes it times. No timed assertions: times are only checked to be measured."""
import numpy as np
import pytest
import torch

from conftest import make_tiny
from llm_anatomy.batching import encode, iter_padded, sorted_batches
from llm_anatomy.inference import inference_model
from llm_anatomy.layout import Layout
from llm_anatomy.pruning import latency
from llm_anatomy.pruning.latency import LatencyTable, cached_table, pruned_to, signature, table_path

TEXTS = ["A wonderful, moving film with superb acting. " * k for k in range(1, 7)]


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _table(layers=3) -> LatencyTable:
    sig = dict(shapes=dict(arch="bert", layers=layers, hidden=8, head_dim=2, heads=4, kv_heads=4, ffn_width=100))
    heads = [(1, 1), (2, 2), (3, 3), (4, 4)]
    widths = [1, 50, 100]
    body = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [3.0, 4.0, 5.0], [4.0, 5.0, 6.0]])
    return LatencyTable(sig, heads, widths, body, body / 10, base=0.5, dense=12.5)


def test_a_hand_made_table_interpolates_and_sums():
    t = _table()
    assert t.layer_seconds(2, 2, 75) == pytest.approx(3.5)  # halfway between widths 50 and 100
    assert t.layer_seconds(4, 4, 1) == 4.0 and t.layer_seconds(4, 4, 0) == 4.0  # no neuron left keeps one
    assert t.layer_seconds(0, 0, 100) == t.layer_seconds(1, 1, 100) == 3.0  # no head left keeps one, zeroed
    assert t.layer_seconds(3, 3, 25, last=True) == pytest.approx(0.3 + 0.1 * 24 / 49)
    assert t.dense_predicted == pytest.approx(0.5 + 6 + 6 + 0.6)
    heads, widths = [(2, 2), (4, 4), (1, 1)], [100, 50, 1]
    assert t.seconds(heads, widths) == pytest.approx(0.5 + 4 + 5 + 0.1)
    assert t.speedup(heads, widths) == pytest.approx(13.1 / 9.6)
    with pytest.raises(ValueError, match=r"\(5 query, 5 key/value heads\) was not measured"):
        t.layer_seconds(5, 5, 10)
    with pytest.raises(ValueError, match="for a table of 3 layers"):
        t.seconds(heads[:2], widths[:2])
    back = LatencyTable.from_dict(t.to_dict())
    assert back.heads == t.heads and np.array_equal(back.body, t.body) and back.base == t.base


def test_the_cache_key_follows_machine_shapes_and_settings(tokenizer, monkeypatch):
    bert, llama = make_tiny("bert", tokenizer), make_tiny("llama", tokenizer)
    lengths = [10, 20, 30]
    base = signature(bert, lengths, "bf16", 32)
    assert base["shapes"] == dict(arch="bert", layers=4, hidden=32, head_dim=8, heads=4, kv_heads=4, ffn_width=64)
    assert signature(llama, lengths, "bf16", 32)["shapes"]["kv_heads"] == 2
    path = table_path("cache", base)
    assert path.parent.name == "cache" and path.name.startswith("bert-4x32-4h4kv-ffn64-bf16-b32-")
    assert table_path("cache", signature(bert, lengths[::-1], "bf16", 32)) == path  # the lengths' order is not a key
    others = [signature(bert, [10, 20, 31], "bf16", 32), signature(bert, lengths, "fp32", 32),
              signature(bert, lengths, "bf16", 16), signature(llama, lengths, "bf16", 32)]
    torch.set_num_threads(2)
    others.append(signature(bert, lengths, "bf16", 32))  # another thread count
    torch.set_num_threads(1)
    real = latency.cpu_fields()
    monkeypatch.setattr(latency, "cpu_fields", lambda: dict(real, flags=real.get("flags", "") + " amx_fp16"))
    others.append(signature(bert, lengths, "bf16", 32))  # the same CPU model with another flag set
    assert len({table_path("cache", s) for s in others} | {path}) == len(others) + 1
    uneven = pruned_to(bert, [(4, 4), (2, 2), (4, 4), (4, 4)], [64, 64, 32, 64])
    with pytest.raises(ValueError, match="measured on the dense model"):
        signature(uneven, lengths, "bf16", 32)


def test_a_cached_table_is_read_not_remeasured(tokenizer, tmp_path, monkeypatch):
    model = make_tiny("bert", tokenizer)
    enc = encode(tokenizer, TEXTS, 32)
    calls = []
    real = latency.measure_table

    def measured(*args, **kwargs):
        calls.append(1)
        return real(*args, **dict(kwargs, repeats=1))
    monkeypatch.setattr(latency, "measure_table", measured)
    cache = tmp_path / Layout("tiny").latency
    table, path = cached_table(model, enc, tokenizer.pad_token_id, "right", "fp32", 4, cache, widths=[1, 64])
    assert path.exists() and path.parent == cache and len(calls) == 1
    assert table.heads == [(1, 1), (2, 2), (3, 3), (4, 4)] and table.widths == [1, 64]
    assert table.body.shape == table.readout.shape == (4, 2) and (table.body > 0).all() and table.dense > 0
    again, same = cached_table(model, enc, tokenizer.pad_token_id, "right", "fp32", 4, cache, widths=[1, 64])
    assert same == path and len(calls) == 1 and np.array_equal(again.body, table.body)
    cached_table(model, enc, tokenizer.pad_token_id, "right", "fp32", 4, cache, remeasure=True, widths=[1, 64])
    assert len(calls) == 2
    cached_table(model, enc, tokenizer.pad_token_id, "right", "fp32", 4, cache, widths=[1, 32, 64])  # a finer grid
    assert len(calls) == 3
    cached_table(model, enc[:-1], tokenizer.pad_token_id, "right", "fp32", 4, cache, widths=[1, 64])  # other reviews
    assert len(calls) == 4 and len(list(cache.glob("*.json"))) == 2


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
@torch.no_grad()
def test_the_replayed_inputs_are_what_the_loop_feeds_the_first_block(arch, tokenizer):
    """The first block run on the captured inputs gives the first block's output inside the loop's own pass."""
    model = make_tiny(arch, tokenizer)
    enc = encode(tokenizer, TEXTS, 32)
    runner = inference_model(model, "fp32")
    inputs = latency._Inputs(runner, enc, tokenizer.pad_token_id, "right", 4, "fp32")
    block = runner.adapter.layers()[0]
    seen = []
    handle = block.register_forward_hook(lambda _m, _a, out: seen.append(out))
    for _idx, ids, mask in iter_padded(enc, sorted_batches([len(e) for e in enc], 4), tokenizer.pad_token_id):
        runner(ids, mask)
    handle.remove()
    assert len(inputs.calls) == len(seen) == 2
    for (args, kwargs), out in zip(inputs.calls, seen):
        torch.testing.assert_close(block(*args, **kwargs), out, rtol=0, atol=0)
    assert inputs.run(block, False) > 0 and inputs.run(runner.adapter.layers()[-1], True) > 0


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_timed_shapes_are_the_ones_asked_for(arch, tokenizer):
    model = make_tiny(arch, tokenizer)
    cfgs = {"llama": [(1, 1), (2, 1), (2, 2), (4, 2)]}.get(arch, [(1, 1), (2, 2), (4, 4)])
    dense = cfgs[-1]
    for q, kv in cfgs:
        m = pruned_to(model, [(q, kv), dense, (q, kv), (0, 0)], [17, 64, 1, 0])
        assert m.adapter.head_counts() == [q, 4, q, 1] and m.adapter.kv_head_counts() == [kv, dense[1], kv, 1]
        assert m.adapter.ffn_widths() == [17, 64, 1, 1]  # none left keeps one, as remove_heads / remove_masked do
        first, last = latency._shaped_blocks(model, q, kv, 17, "bf16")
        for blk in (first, last):
            weights = [p for p in blk.parameters() if p.dim() == 2]
            assert all(p.dtype == torch.bfloat16 for p in weights)  # as the loop stores them
            assert sum(p.numel() for p in weights) < sum(p.numel() for p in model.adapter.layers()[0].parameters())
    assert model.adapter.head_counts() == [4] * 4  # the model itself is left as it was


def test_check_predictions_reports_the_tables_sums(tokenizer):
    """Each shape's predicted seconds are the table's sum for it (the hand-made table's, so known); the measured
    times are only checked to be there."""
    model = make_tiny("bert", tokenizer)
    enc = encode(tokenizer, TEXTS, 32)
    t = _table(layers=4)
    shapes = [([(2, 2), (4, 4), (1, 1), (3, 3)], [64, 50, 1, 17])]
    rows = latency.check_predictions(model, t, enc, tokenizer.pad_token_id, "right", "fp32", 4, shapes, repeats=1)
    assert [r["heads"] for r in rows] == [[[2, 2], [4, 4], [1, 1], [3, 3]], "dense"]
    assert rows[0]["predicted_seconds"] == pytest.approx(0.5 + (3 + 14 / 50) + 5 + 1 + (0.3 + 0.1 * 16 / 49))
    assert rows[1]["predicted_seconds"] == pytest.approx(t.dense_predicted)
    assert all(r["seconds"] > 0 for r in rows)
