"""The prune stage's steps as artifacts: plans are deterministic files; materialised folders reload in a
fresh process with the in-memory pruned model's logits; evaluations store per-review logits whose
accuracy is recomputed independently; baselines and timing hold what they claim."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from llm_anatomy import fused
from llm_anatomy.batching import pad
from llm_anatomy.layout import folder_file
from llm_anatomy.logits import read_logits
from llm_anatomy.models import load_classifier, open_checkpoint
from llm_anatomy.pruning.materialise import pruned_copy
from llm_anatomy.pruning.plan import read_plan, read_random_plans
from llm_anatomy.pruning.refit import CalibrationSet
from llm_anatomy.pruning.spec import MethodSpec
from pruning_helpers import calibration_frame, run_chain

from conftest import ROOT, forward_tolerance, make_tiny

ENCODER = MethodSpec.threshold_rule(dict(rule="encoder", alpha=0.0, beta=0.001, focusing="even-from-third+last",
                                         focus_multiplier=3), "sweep", target=0.5)
DECODER = MethodSpec.threshold_rule(dict(rule="decoder", alpha=0.2, focusing="last-2/12", focus_multiplier=3), "dec")
FLAP = MethodSpec.flap(0.5, "uniform", True)
REFIT = MethodSpec("fisher", "global", "refit", 0.5, ridge=1e-3)
RESCALE = MethodSpec("wanda-sp", "uniform", "rescale", 0.5, ridge=1e-2)

# Loads a folder with the documented call in a new interpreter and prints its logits.
FRESH = """
import json, sys, torch
from llm_anatomy import load_pruned
from llm_anatomy import fused
from llm_anatomy.batching import pad
model, tok, meta = load_pruned(sys.argv[1])
ids, mask = pad(tok(json.loads(sys.argv[2]))["input_ids"], tok.pad_token_id, meta["padding_side"])
with torch.no_grad():
    print(json.dumps(model(ids, mask).tolist()))
"""


@pytest.mark.parametrize("arch,cfg", [("bert", ENCODER), ("gpt2", DECODER), ("llama", FLAP), ("gpt2", FLAP),
                                      ("bert", REFIT), ("llama", RESCALE)])
def test_materialised_folder_reloads_in_a_fresh_process(arch, cfg, tokenizer, reviews, tmp_path):
    model = make_tiny(arch, tokenizer)
    out = run_chain(model, tokenizer, reviews, tmp_path, cfg)
    p = out["paths"]
    plan = read_plan(p["plan"])
    calibration = CalibrationSet.from_split(calibration_frame(reviews), open_checkpoint(p["dense"]), len(reviews), 2)
    in_memory = pruned_copy(model, plan, "removed", calibration)
    ids, mask = pad(tokenizer(reviews)["input_ids"], tokenizer.pad_token_id, "right")
    with torch.no_grad():
        expect = in_memory(ids, mask)
    run = subprocess.run([sys.executable, "-c", FRESH, str(p["pruned"]), json.dumps(reviews)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    torch.testing.assert_close(torch.tensor(json.loads(run.stdout)), expect, atol=forward_tolerance(model, expect), rtol=0)
    info = json.loads(folder_file(p["pruned"], "pruning").read_text())
    assert info["ffn_widths"] == in_memory.adapter.ffn_widths() < info["ffn_widths_dense"]
    assert info["params_pruned"] == sum(t.numel() for t in in_memory.parameters()) < info["params_dense"]
    assert info["bytes"] == sum(f.stat().st_size for f in p["pruned"].rglob("*") if f.is_file() and
                                f != folder_file(p["pruned"], "pruning"))
    if plan.fitted:  # the fitted value vectors are in the folder: not the dense model's rows
        kept = np.setdiff1d(np.arange(model.adapter.ffn_width(0)), plan.pruned[0])
        dense_rows = model.adapter.value_vectors(0)[torch.as_tensor(kept)]
        assert not torch.allclose(in_memory.adapter.value_vectors(0), dense_rows, atol=1e-4)
        assert info["calibration_reviews"] == len(reviews)
    if cfg.compensation != "none" and arch == "llama":  # compensation gave Llama's FFN biases
        reloaded, _, _ = load_classifier(p["pruned"])
        assert reloaded.adapter.config.mlp_bias and reloaded.adapter.ffn(0).output.bias.abs().sum() > 0


def test_plans_are_deterministic_files(tokenizer, reviews, tmp_path):
    model = make_tiny("bert", tokenizer)
    a = run_chain(model, tokenizer, reviews, tmp_path / "a", ENCODER)
    b = run_chain(model, tokenizer, reviews, tmp_path / "b", ENCODER)
    for key in ("plan", "random"):
        assert a["paths"][key].read_bytes() == b["paths"][key].read_bytes()
    plan = read_plan(a["paths"]["plan"])
    assert [list(p) for p in plan.pruned] == [list(p) for p in a["plan"].pruned]
    assert plan.table["masked"].tolist() == [len(p) for p in plan.pruned]
    assert plan.info.search["reached"] and plan.spec.family == "encoder"
    randoms = read_random_plans(a["paths"]["random"])
    assert [r.info.seed for r in randoms] == [0, 1, 2]
    for r in randoms:  # the same per-layer counts, no high neuron, and the seeds differ
        assert r.counts == plan.counts
    assert any(not np.array_equal(x, y) for x, y in zip(randoms[0].pruned, randoms[1].pruned))


def _count_correct(logits, labels):
    """Independent of llm_anatomy.logits.accuracy: a plain loop."""
    return sum(1 for z, y in zip(logits, labels) if (z > 0) == (y == 1)) / len(labels)


def test_evaluations_baselines_and_metrics(tokenizer, reviews, tmp_path):
    model = make_tiny("llama", tokenizer)
    out = run_chain(model, tokenizer, reviews, tmp_path, FLAP, time_limit=8, time_zeroed=False)
    p, m, test = out["paths"], out["metrics"], out["test"]
    dense, info = read_logits(p["dense_eval"])
    assert info["reviews"] == len(test) == len(dense) and dense["review"].tolist() == list(range(len(test)))
    assert dense["label"].tolist() == test["label"].tolist()
    # logits equal a direct forward pass of the dense model
    ids, mask = pad(tokenizer(test["text"].tolist())["input_ids"], tokenizer.pad_token_id, "right")
    with torch.no_grad():
        direct = model(ids, mask).numpy()
    np.testing.assert_allclose(dense["logit"].to_numpy(), direct, atol=forward_tolerance(model, direct), rtol=0)
    # the evaluation's speed record: its work recounted by hand (tiny Llama: q, o, gate, up, down are
    # hidden x hidden or hidden x ffn; k, v project to half the heads; the last layer computes keys
    # and values for every token, the rest for the read token only) and its fraction of the roofline
    h, f, L = model.adapter.hidden_size, model.adapter.ffn_width(0), model.adapter.num_layers
    kv, rest = 2 * h * (h // 2), 2 * h * h + 3 * h * f
    lengths = [len(t) for t in tokenizer(test["text"].tolist())["input_ids"]]
    assert info["macs"] == sum(T * (L * kv + (L - 1) * rest) + rest + 2 * (L - 1) * T * T * h + 2 * T * h
                               for T in lengths)
    assert info["roofline_fraction"] == pytest.approx(2 * info["macs"] / info["inference_seconds"]
                                                      / (info["roofline_gflops"] * 1e9))
    assert info["machine"]["cpu"] and info["inference_seconds"] < info["seconds"]
    assert info["loop"] == dict(fused_ffn_inputs=fused.available(), read_token_only=True, weights="float32")
    # accuracies recomputed from the per-review logits equal the reported ones
    pruned, _ = read_logits(p["eval"])
    assert m.accuracy_dense == out["accuracy_dense"] == _count_correct(dense["logit"], dense["label"])
    assert m.accuracy == out["accuracy"] == _count_correct(pruned["logit"], pruned["label"])
    base, _ = read_logits(p["baselines"])
    seeds = ["random-0", "random-1", "random-2"]
    assert sorted(base["variant"].unique()) == sorted(seeds + [f"{v}-uncompensated" for v in seeds]
                                                      + ["uncompensated"])
    for v, part in base.groupby("variant"):
        acc = _count_correct(part["logit"], part["label"])
        assert acc == out["baselines"][v]
        if v == "uncompensated":
            assert m.accuracy_uncompensated == acc
        elif v.endswith("-uncompensated"):
            assert m.accuracy_random_uncompensated[int(v.split("-")[1])] == acc
        else:
            assert m.accuracy_random[int(v[-1])] == acc
    assert m.accuracy_random_mean == pytest.approx(np.mean(m.accuracy_random))
    assert m.gap_dense == pytest.approx(m.accuracy - m.accuracy_dense)
    assert m.gap_selection == pytest.approx(m.accuracy_uncompensated - np.mean(m.accuracy_random_uncompensated))
    for key in ("accuracy", "accuracy_dense", "gap_dense", "gap_random", "gap_compensation", "gap_selection"):
        value = getattr(m, "accuracy_random_mean" if key == "accuracy_random" else key)
        assert getattr(m, f"{key}_lo") <= value <= getattr(m, f"{key}_hi"), key
    # a compensated plan's random baselines are compensated with the same calibration means
    from llm_anatomy.pruning.criteria import NeuronStats
    means = NeuronStats.from_files(p["stats"])["mean"]
    for rp in read_random_plans(p["random"]):
        assert rp.compensated and rp.compensation == "bias"
        for layer, (idx, mu) in enumerate(zip(rp.pruned, rp.pruned_means)):
            np.testing.assert_array_equal(mu, means[layer][idx])
    assert m.random_seeds == [0, 1, 2] and m.test_reviews == 20 and m.bias_compensation
    # timing: alternating repeats of dense and removed on the first time_limit reviews (zeroed not timed
    # here, as for a curve point); zeroed == removed is checked all the same
    t = out["timing"]
    assert t["timed_reviews"] == 8 and sorted(t["times_s"]) == ["dense", "removed"]
    assert all(len(v) == 3 for v in t["times_s"].values())
    assert t["time_zeroed_s"] is None and t["speedup_zeroed"] is None and m.speedup_zeroed is None
    assert t["zeroed_vs_removed_max_abs_logit_diff_fp32"] < 1e-5
    assert t["speedup_removed_spread"]["min"] <= t["speedup_removed_spread"]["median"] <= t["speedup_removed_spread"]["max"]
    assert t["macs_removed"] < t["macs_dense"] and t["machine"]["cpu"]
    assert t["loop"] == m.loop == dict(fused_ffn_inputs=fused.available(), read_token_only=True, weights="float32")
    # roofline: measured in the job; the fractions recomputed from the recorded work and medians
    rate = t["roofline"]["attainable_gflops"]
    assert rate > 0 and t["roofline"]["precision"] == t["precision"]
    for name, macs in (("dense", t["macs_dense"]), ("removed", t["macs_removed"])):
        assert t[f"roofline_fraction_{name}"] == pytest.approx(2 * macs / t[f"time_{name}_s"] / (rate * 1e9))
    assert m.roofline_fraction_dense == t["roofline_fraction_dense"] and t["roofline_fraction_zeroed"] is None
    assert m.neurons_pruned == m.neurons_total // 2 and m.pruned_per_layer == read_plan(p["plan"]).counts
    json.dumps(m.to_dict(), allow_nan=False)


def test_a_headline_point_pairs_each_comparison_on_the_first_reviews_both_read(tokenizer, reviews, tmp_path):
    """Dense on every review (20), the target on its first 16, the baselines on the first 12: gaps against
    dense pair the 16, gaps against a baseline the 12 (recounted here from the per-review logits)."""
    from llm_anatomy.pruning.baselines import evaluate_baselines
    from llm_anatomy.pruning.metrics import prune_metrics

    model = make_tiny("llama", tokenizer)
    out = run_chain(model, tokenizer, reviews, tmp_path, FLAP, time_limit=8, time_zeroed=False, eval_limit=16,
                    baseline_limit=12)
    p, m = out["paths"], out["metrics"]
    ok = {k: (read_logits(p[k])[0]) for k in ("dense_eval", "eval", "baselines")}
    dense = (ok["dense_eval"]["logit"] > 0).astype(int).to_numpy() == ok["dense_eval"]["label"].to_numpy()
    pruned = (ok["eval"]["logit"] > 0).astype(int).to_numpy() == ok["eval"]["label"].to_numpy()
    base = {v: (part["logit"] > 0).astype(int).to_numpy() == part["label"].to_numpy()
            for v, part in ok["baselines"].groupby("variant")}
    assert (len(dense), len(pruned), {len(b) for b in base.values()}) == (20, 16, {12})
    assert (m.test_reviews, m.baseline_reviews) == (16, 12)
    assert m.accuracy_dense == pytest.approx(dense[:16].mean()) and m.accuracy == pytest.approx(pruned.mean())
    assert m.gap_dense == pytest.approx(pruned.mean() - dense[:16].mean())
    rand = [base[f"random-{s}"].mean() for s in (0, 1, 2)]
    assert m.accuracy_random == pytest.approx(rand)
    assert m.gap_random == pytest.approx(pruned[:12].mean() - np.mean(rand))
    assert m.gap_compensation == pytest.approx(pruned[:12].mean() - base["uncompensated"].mean())
    # baselines that read more reviews than the target are not its baselines
    evaluate_baselines(p["dense"], out["test"], p["plan"], p["random"], tmp_path / "wide.parquet", None, 20,
                       batch_size=4, threads=1, device="cpu")
    with pytest.raises(ValueError, match="are not the first of the dense evaluation"):
        prune_metrics(p["plan"], p["random"], p["pruned"], p["dense_eval"], p["eval"], tmp_path / "wide.parquet",
                      p["timing"], tmp_path / "wide_metrics.json", "m", "t")


def test_evaluating_more_reviews_than_the_split_holds_is_an_error(tokenizer, reviews, tmp_path):
    from llm_anatomy.inference import evaluate_folder
    from llm_anatomy.models import save_classifier

    save_classifier(make_tiny("bert", tokenizer), tokenizer, tmp_path / "m", dict(max_length=64))
    with pytest.raises(ValueError, match="1000 reviews asked for, but the split holds 5"):
        evaluate_folder(tmp_path / "m", pd.DataFrame({"text": reviews, "label": [1, 0, 1, 1, 0]}),
                        tmp_path / "e.parquet", limit=1000, batch_size=32, threads=None, device="cpu")
    assert not (tmp_path / "e.parquet").exists()


def test_plan_reads_the_scoring_it_is_given(tmp_path):
    """A decoder plan in the gain scoring thresholds the score_gain column against cosine_normed."""
    from llm_anatomy.pruning.plan import prune_plan

    rng = np.random.default_rng(0)
    L, F = 3, 40
    layer = pd.DataFrame([dict(input_set="probe", input_id=i, layer=l, cosine=0.1 * l, cosine_prenorm=0.5,
                               cosine_normed=0.9) for i in range(2) for l in range(L + 1)])
    neuron = pd.DataFrame([dict(input_id=i, layer=l, neuron=j, score=rng.normal(0, 0.05),
                                score_prenorm=rng.normal(0, 0.05), score_gain=rng.normal(0, 0.05))
                           for i in range(2) for l in range(L) for j in range(F)])
    layer.to_parquet(tmp_path / "l.parquet")
    neuron.to_parquet(tmp_path / "n.parquet")
    spec = MethodSpec.threshold_rule(dict(rule="decoder", alpha=0.05, focusing="none", focus_multiplier=3,
                                          scoring="gain"), "dec")
    prune_plan(tmp_path / "l.parquet", tmp_path / "n.parquet", tmp_path / "p.parquet", tmp_path / "r.parquet", spec.to_dict(),
               [0], 0.35, "probe")
    plan = read_plan(tmp_path / "p.parquet")
    s = neuron.groupby(["layer", "neuron"])["score_gain"].mean()
    for l in range(L):  # t_l = alpha * c_l with c from cosine_normed
        expect = np.flatnonzero(np.abs(s.loc[l].to_numpy()) < 0.05 * 0.9)
        assert plan.pruned[l].tolist() == expect.tolist()
    assert plan.info.scoring == "gain" and plan.spec.scoring == "gain"
