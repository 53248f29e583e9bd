"""The searched allocation's evidence: each layer's validation loss increase, checked against full forward
passes of models pruned the ordinary way (mean output folded into the bias, neurons removed)."""
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ARCHS, forward_tolerance, make_tiny
from llm_anatomy.ablation import Ablator
from llm_anatomy.batching import encode, pad
from llm_anatomy.pruning.allocation import allocate, lowest, searched_counts
from llm_anatomy.pruning.sensitivity import sensitivity_table
from llm_anatomy.pruning.materialise import pruned_copy
from llm_anatomy.pruning.plan import Plan, PlanInfo
from llm_anatomy.pruning.spec import MethodSpec

REVIEWS = ["a wonderful film with superb acting", "dull, I walked out after twenty minutes",
           "the plot twists kept me guessing", "not bad at all", "an overlong mess that wastes its cast",
           "funny, warm and far too short"]
LABELS = [1, 0, 1, 1, 0, 1]


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_sensitivity_is_the_loss_increase_of_the_pruned_model(arch, tokenizer):
    dense = make_tiny(arch, tokenizer).float().eval()
    enc = encode(tokenizer, REVIEWS, 24)
    rng = np.random.default_rng(1)
    widths = dense.adapter.ffn_widths()
    importance = [rng.normal(size=w) for w in widths]
    means = [rng.normal(size=w) for w in widths]  # stand-ins for the calibration means
    ablator = Ablator(dense, enc, LABELS, tokenizer.pad_token_id, "right", batch_size=4)
    ablator.means = [torch.as_tensor(m, dtype=torch.float32) for m in means]
    table = sensitivity_table(ablator, importance, [0.25, 0.5])

    ids, mask = pad(enc, tokenizer.pad_token_id, "right")
    y = torch.tensor(LABELS, dtype=torch.float32)

    def loss(model):
        with torch.no_grad():
            return float(torch.nn.functional.binary_cross_entropy_with_logits(model(ids, mask).float(), y))

    base = loss(dense)
    for row in table.itertuples():
        pruned = [np.array([], dtype=np.int64)] * len(widths)
        pruned[row.layer] = lowest(importance[row.layer], row.pruned)
        folded = PlanInfo(MethodSpec("fluctuation", "uniform", "bias", 0.5), [])  # the mean output kept
        plan = Plan(pruned, None, folded, pruned_means=[np.asarray(m)[p] for m, p in zip(means, pruned)])
        expected = loss(pruned_copy(dense, plan, "removed")) - base
        # both losses are means of softplus of float32 logits (slope <= 1): each within a forward tolerance
        assert row.loss_increase == pytest.approx(expected, abs=2 * forward_tolerance(dense)), (row.layer, row.fraction)
    assert (table[table.fraction == 0].loss_increase == 0).all()
    assert table.pruned.tolist()[:3] == [0, round(0.25 * widths[0]), round(0.5 * widths[0])]


def test_the_searched_allocation_takes_the_cheapest_neurons_first():
    """Two layers of 10 neurons; layer 0 costs 0.01 per 10% pruned, layer 1 nothing up to 50% and then 1.0
    per 10%. At 50% overall the least summed increase is layer 1 at 50%, layer 0 at 50%; at 70% layer 0
    must reach 90% (its grid's end) and layer 1 50%."""
    rows = [dict(layer=0, fraction=f / 10, pruned=f, loss_increase=0.01 * f) for f in range(10)]
    rows += [dict(layer=1, fraction=f / 10, pruned=f, loss_increase=0.0 if f <= 5 else 1.0 * (f - 5)) for f in range(10)]
    table = pd.DataFrame(rows)
    assert searched_counts(table, [10, 10], 0.5) == [5, 5]
    assert searched_counts(table, [10, 10], 0.7) == [9, 5]
    assert searched_counts(table, [10, 10], 0.25) == [0, 5]  # layer 1's free neurons first
    with pytest.raises(ValueError, match="the sensitivity grid reaches 18"):
        searched_counts(table, [10, 10], 0.95)
    # a dip in a layer's curve: the hull takes the two-step segment at its average cost
    dip = pd.DataFrame([dict(layer=0, fraction=f, pruned=n, loss_increase=y)
                        for f, n, y in ((0, 0, 0.0), (0.5, 5, 0.5), (1.0, 10, 0.2))])
    assert searched_counts(dip, [10], 0.3) == [3]
    imp = [np.arange(10.0)[::-1], np.arange(10.0)]
    pruned = allocate(imp, 0.5, "searched", table)
    assert pruned[0].tolist() == [5, 6, 7, 8, 9] and pruned[1].tolist() == [0, 1, 2, 3, 4]
