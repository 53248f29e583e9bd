"""The docs' result tables format what the stages wrote: built here from the stages' own table functions."""
import json

import numpy as np
import pandas as pd

from llm_anatomy.ablation import SCORES, edge_table, score_agreement, tail_agreement
from llm_anatomy.anatomy_tables import interval, report
from llm_anatomy.linear_probe import layer_probes


def test_report_from_stage_tables(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    h = rng.normal(size=(60, 2, 4))
    h[:, 1, 0] += 3 * (2 * y - 1)
    probe, _, _ = layer_probes(h[:40], y[:40], h[40:], y[40:], np.ones((20, 2)), [0.1, 1.0], 2, 0)
    rows = [dict(layer=l, neuron=j, in_sample=True, tail_of="", exact_effect=-rng.random(),
                 exact_abs_effect=rng.random(), attribution_signed=rng.normal(), **{s: rng.random() for s in SCORES})
            for l in range(2) for j in range(6)]
    rows[0]["tail_of"] = " ".join(SCORES)
    table = pd.DataFrame(rows)
    a = tmp_path / "m" / "anatomy"
    a.mkdir(parents=True)
    probe.to_csv(a / "linear_probe.csv", index=False)
    score_agreement(table, 8).to_csv(a / "ablation_scores.csv", index=False)
    tail_agreement(table).to_csv(a / "ablation_tails.csv", index=False)
    pd.DataFrame([dict(score=s, neurons=3, effect=-0.5, random_mean=-0.1, random_min=-0.3, random_max=0.1,
                       p_random=0.05, abs_effect=0.6, random_abs_mean=0.2, random_abs_max=0.4, p_random_abs=0.05)
                  for s in SCORES]).to_csv(a / "ablation_top.csv", index=False)
    edge_table(None, []).to_csv(a / "graph_edges.csv", index=False)
    (a / "ablation_summary.json").write_text(json.dumps(dict(
        neurons_per_layer=6, layers=2, sampled_neurons=12, tail_neurons=1, tail=1, graph_nodes=0, ablated_neurons=12,
        reviews=8, exact_seconds=3.0, seconds_per_block_review=1e-3, seconds=9.0)))
    text = report(tmp_path)
    r = probe.iloc[1]
    assert f"| 1 | {interval(r.lens_accuracy, r.lens_accuracy_lo, r.lens_accuracy_hi)} (1.00) |" in text
    assert "6 random neurons per layer x 2 layers = 12" in text and "1.00 ms per block and review" in text
    assert "| fluctuation |" in text and "- m: the graph has no edges" in text
    assert text.count("\n| cosine |") == 3  # agreement, tails, tops
