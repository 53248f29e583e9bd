"""Speed targets in the pipeline (`joint.SpeedMethod`, `pruning.speed`): their names among a profile's targets
with the other targets' error messages, and the rules' stage functions on tiny BERT, GPT-2 and Llama against an
independent computation: the plan the prune_plan stage makes from the files equals `plan.plan_speed` on costs
computed here from `attribution.review_effects`, its kept heads and widths meet the target on the latency table,
and the materialised folder has the plan's head counts and widths. The latency table is hand-made (no timing):
the latency_table stage reads it from its cache, as it reads this machine's."""
import numpy as np
import pandas as pd
import pytest

from conftest import ARCHS, ROOT, make_tiny
from llm_anatomy.config import load_params, validate
from llm_anatomy.io import read_json, write_json
from llm_anatomy.layout import SCHEMA, ModelFiles
from llm_anatomy.models import open_checkpoint, save_classifier
from llm_anatomy.pipeline import Pipeline
from llm_anatomy.pruning.attribution import review_effects
from llm_anatomy.pruning.calibration import ffn_stats
from llm_anatomy.pruning.criteria import NeuronStats, importance
from llm_anatomy.pruning.head_criteria import head_importance
from llm_anatomy.pruning.joint import SpeedMethod, estimated_margin_change, head_configurations, layer_choices
from llm_anatomy.costs import forward_macs
from llm_anatomy.pruning.latency import LatencyTable, latency_table, pruned_to, signature, table_path, width_grid
from llm_anatomy.pruning.materialise import materialise
from llm_anatomy.pruning.plan import plan_speed, prune_plan, read_plan, read_random_plans
from llm_anatomy.pruning.speed import head_stats, read_head_means, speed_sensitivity
from llm_anatomy.pruning.targets import TargetError
from llm_anatomy.scores import mean_neuron_scores
from pruning_helpers import quick_scores
from test_pruning_refit import REVIEWS


def offline_pipeline(edit=None) -> Pipeline:
    params = load_params(ROOT / "params.yaml")
    params["profile"] = "offline"
    if edit:
        edit(params)
    validate(params, ROOT / SCHEMA, ROOT)
    return Pipeline(params)


def test_the_offline_profile_lists_its_speed_points_by_model_kind_and_runs_them_when_asked():
    t = offline_pipeline().targets
    assert t.speed_names("minilm") == ["fluctuation-joint-refit-x1.6", "fluctuation-joint-refit-x1.8",
                                       "fluctuation-joint-refit-x2", "fluctuation-heads-refit-x1.6"]
    # the decoder's FFN criterion is its kind's (wanda-sp, its FFN method's), its heads pruning.speed's
    assert t.speed_criteria("smollm2") == ("wanda-sp", "fluctuation")
    assert t.speed_names("smollm2") == ["wanda-sp+fluctuation-joint-refit-x1.2", "wanda-sp+fluctuation-joint-refit-x1.4",
                                        "fluctuation-heads-refit-x1.2"]
    # off the default run (they cost more than its budget leaves) until speed_targets says so
    assert not set(t.speed_names("minilm") + t.speed_names("smollm2")) & set(t for _m, t in t.pairs())
    on = offline_pipeline(lambda p: p["profiles"]["offline"]["pruning"].update(speed_targets=True))
    assert on.targets.names("minilm")[-4:] == t.speed_names("minilm")
    assert [n for m, n in on.targets.pairs() if m == "smollm2"][-3:] == t.speed_names("smollm2")
    assert on.report_inputs()["metrics"][-1] == on.layout.target("smollm2", "fluctuation-heads-refit-x1.2").metrics
    # the heads point shares the joint points' cost table: the kind's FFN criterion, not pruning.speed's
    files = on.layout.model("smollm2")
    for name in t.speed_names("smollm2"):
        assert on.plan_inputs("smollm2", name)["speed_sensitivity"] == files.speed_sensitivity("wanda-sp", "fluctuation")


def test_a_speed_target_resolves_to_its_method_with_the_methods_ridges_and_headline_sizes():
    pipe = offline_pipeline(lambda p: p["pruning"]["speed"].update(head_criterion="attribution"))
    t = pipe.targets
    name = "fluctuation+attribution-joint-refit-x1.6"
    assert t.speed_names("minilm")[0] == name
    spec = t.checked_spec("minilm", name)
    assert spec == SpeedMethod("fluctuation", "joint", "refit", 1.6, "attribution", ridge=0.01, readout_ridge=10.0)
    assert spec.name == name and SpeedMethod.from_dict(spec.to_dict()) == spec
    sizing, flap = t.sizing("minilm", name), t.sizing("minilm", "flap-50")
    assert (sizing.test_limit, sizing.baseline_limit, sizing.random_seeds) == (flap.test_limit, flap.baseline_limit, 5)
    assert sizing.speed_search_reviews == 256 and sizing.calibration_reviews == 128
    # the plan's files: the FFN criterion's statistics, this machine's table, the heads' statistics, the cost table
    inputs = pipe.plan_inputs("minilm", name)
    files = pipe.layout.model("minilm")
    assert inputs["speed_sensitivity"] == files.speed_sensitivity("fluctuation", "attribution")
    assert (inputs["latency_table"], inputs["head_stats"]) == (files.latency_table, files.head_stats)
    # a heads target reads the joint table of params.yaml's FFN criterion: its costs do not depend on it
    heads = pipe.plan_inputs("minilm", "fisher-heads-refit-x1.6")["speed_sensitivity"]
    assert heads == files.speed_sensitivity("fluctuation", "fisher")
    assert pipe.speed_params("minilm", name) == dict(ffn_criterion="fluctuation", head_criterion="attribution",
                                                     objective="margin", width_steps=32)
    assert pipe.speed_params("minilm", "flap-50") is None


@pytest.mark.parametrize("name, message", [
    ("fluctuation-joint-refit-x0.9", "fluctuation-joint-refit-x0.9: a speedup of 0.9 is no speedup; give one above 1, "
                                     "e.g. fluctuation-joint-refit-x1.6"),
    ("fluctuation-joint-refit-x1,6", "fluctuation-joint-refit-x1,6: x1,6 is not a speedup; write it as a decimal "
                                     "number with a point, e.g. fluctuation-joint-refit-x1.6"),
    ("flux-joint-refit-x1.6", "flux-joint-refit-x1.6: 'flux' is not an FFN criterion; choose one of ["),
    ("fluctuation+flux-joint-refit-x1.6", "fluctuation+flux-joint-refit-x1.6: 'flux' is not a head criterion; choose "
                                          "one of ["),
    ("fluctuation-jiont-refit-x1.6", "'fluctuation-jiont-refit-x1.6' is not a prune target of minilm"),
])
def test_a_bad_speed_name_is_a_target_error_that_names_the_valid_form(name, message):
    t = offline_pipeline().targets
    with pytest.raises(TargetError) as err:
        t.check_name("minilm", name)
    assert str(err.value).startswith(message), str(err.value)
    if "not a prune target" in message:  # the list of valid names spells the speed grammar too
        assert "any speed target <criterion>-<ffn|heads|joint>-<compensation>-x<speedup>" in str(err.value)


def _hand_table(ck, reviews: int, batch_size: int) -> LatencyTable:
    """A latency table of the model's shapes and reference reviews, not timed: a layer costs 1 ms per kept query
    head, 0.1 ms per key/value head and 0.05 ms per neuron (its readout a quarter of that), the rest 1 ms."""
    a = ck.model.adapter
    sig = signature(ck.model, [len(e) for e in reviews], ck.precision, batch_size)
    heads = head_configurations(a.attention(0).heads, a.attention(0).kv_heads)
    widths = width_grid(a.ffn_width(0))
    body = np.array([[1e-3 * q + 1e-4 * k + 5e-5 * w for w in widths] for q, k in heads])
    table = LatencyTable(sig, heads, widths, body, body / 4, base=1e-3, dense=0.0, info=dict(hand_made=True))
    table.dense = table.dense_predicted
    return table


@pytest.mark.parametrize("arch", ARCHS)
def test_the_speed_rules_plan_as_plan_speed_on_the_same_inputs(arch, tokenizer, tmp_path):
    model = make_tiny(arch, tokenizer)
    files = ModelFiles(tmp_path / "model")
    save_classifier(model, tokenizer, files.finetuned, dict(max_length=24, truncation_side="right",
                                                            padding_side="right", precision="fp32"))
    layer, neuron = quick_scores(model, tokenizer, REVIEWS)
    layer.to_parquet(files.layer_scores)
    neuron.to_parquet(files.neuron_scores)
    train, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
    pd.DataFrame({"text": REVIEWS * 2, "label": [1, 0] * len(REVIEWS)}).to_parquet(train)
    pd.DataFrame({"text": REVIEWS, "label": [0, 1] * (len(REVIEWS) // 2)}).to_parquet(val)
    run = dict(threads=1, device="cpu")
    ffn_stats(files.finetuned, train, files.ffn_stats, reviews=8, batch_size=4, **run)
    head_stats(files.finetuned, train, files.head_stats, files.head_means, reviews=8, **run)
    # rule latency_table: this machine's cached table (here a hand-made one, so nothing is timed) copied to the model
    ck = open_checkpoint(files.finetuned)
    table = _hand_table(ck, ck.encode(REVIEWS[:6]), 4)
    write_json(table_path(tmp_path / "cache", table.signature), table.to_dict())
    latency_table(files.finetuned, val, files.latency_table, str(tmp_path / "cache"), "measured", reviews=6,
                  repeats=3, batch_size=4, **run)
    assert read_json(files.latency_table) == read_json(table_path(tmp_path / "cache", table.signature))
    costs_file = files.speed_sensitivity("fluctuation", "fluctuation")
    speed_sensitivity(files.finetuned, val, files.head_stats, files.head_means, costs_file, files.ffn_stats,
                      "fluctuation", "fluctuation", "margin", 8, reviews=6, neuron_scores=files.neuron_scores, **run)

    # the same inputs, computed here: importances, choices, the first-order effects on the search reviews
    stats = NeuronStats.from_files(files.ffn_stats, cosine=mean_neuron_scores(files.neuron_scores))
    ffn_imp = importance("fluctuation", stats)
    head_imp = head_importance("fluctuation", pd.read_parquet(files.head_stats))
    kv = model.adapter.kv_head_counts()
    effects = review_effects(ck.model, ck.encode(REVIEWS[:6]), np.array([0, 1] * 3), ck.pad_id, ck.padding_side, 8)
    means = read_head_means(files.head_means)
    heads_attr, neurons_attr = effects.head_attribution(means), effects.neuron_attribution(stats["mean"])
    assert [m.shape for m in means] == [(a.shape[1], model.adapter.attention(0).head_dim) for a in heads_attr]
    for structures in ("joint", "heads", "ffn"):
        method = SpeedMethod("fluctuation", structures, "refit", 1.3, ridge=0.01, readout_ridge=10.0)
        choices = [layer_choices(structures, f, h, k, 8) for f, h, k in zip(ffn_imp, head_imp, kv)]
        costs = [estimated_margin_change(c, h, n) for c, h, n in zip(choices, heads_attr, neurons_attr)]
        direct = plan_speed(method, choices, costs, table, stats, "estimated", "margin")
        folder = tmp_path / structures
        prune_plan(files.layer_scores, files.neuron_scores, folder / "plan.parquet", folder / "random.parquet",
                   method.to_dict(), [0, 1], 0.35, "probe", ffn_stats=files.ffn_stats, latency_table=files.latency_table,
                   head_stats=files.head_stats, speed_sensitivity=costs_file,
                   speed=dict(ffn_criterion="fluctuation", head_criterion="fluctuation", objective="margin",
                              width_steps=8))
        plan = read_plan(folder / "plan.parquet")
        assert plan.spec == method and plan.info.search["objective"] == "margin"
        assert [p.tolist() for p in plan.pruned] == [p.tolist() for p in direct.pruned]
        assert [h.tolist() for h in plan.pruned_heads] == [h.tolist() for h in direct.pruned_heads]
        np.testing.assert_allclose(plan.table["cost"], direct.table["cost"], rtol=1e-6, atol=1e-9)
        # what the plan keeps meets the target on the table, and prunes only its structure
        t = plan.table
        shapes, widths = list(zip(t["heads_kept"], t["kv_kept"])), (t["width"] - t["masked"]).tolist()
        assert table.dense_predicted / table.seconds(shapes, widths) >= 1.3 - 1e-9
        assert plan.info.search["predicted_speedup"] == pytest.approx(table.speedup(shapes, widths), rel=1e-12)
        neurons, heads = sum(plan.counts), sum(map(len, plan.pruned_heads))
        assert {"ffn": neurons > 0 and heads == 0, "heads": heads > 0 and neurons == 0, "joint": neurons + heads > 0}[
            structures]
        # the random baselines: the plan's per-layer neuron counts and head configurations, drawn at random
        for r in read_random_plans(folder / "random.parquet"):
            assert r.counts == plan.counts and [len(h) for h in r.pruned_heads] == [len(h) for h in plan.pruned_heads]
        # the materialised folder has the plan's heads and widths (none left: the layer keeps one, zeroed)
        materialise(files.finetuned, folder / "plan.parquet", folder / "pruned", method.name,
                    dict(reviews=8, batch_size=4), train)
        info = read_json(folder / "pruned" / "pruning.json")
        assert info["attention_heads"] == t["heads_kept"].clip(lower=1).tolist()
        assert info["kv_heads"] == t["kv_kept"].clip(lower=1).tolist()
        assert info["ffn_widths"] == (t["width"] - t["masked"]).clip(lower=1).tolist()


def test_a_target_beyond_the_tables_reach_fails_at_plan_time_saying_so(tokenizer):
    model = make_tiny("bert", tokenizer)
    a = model.adapter
    sig = dict(shapes=dict(arch=a.arch, layers=a.num_layers, hidden=a.hidden_size, head_dim=a.attention(0).head_dim,
                           heads=4, kv_heads=4, ffn_width=64))
    heads = head_configurations(4, 4)
    body = np.array([[1e-3 * q + 5e-5 * w for w in (1, 32, 64)] for q, _k in heads])
    table = LatencyTable(sig, heads, [1, 32, 64], body, body, base=0.05, dense=0.0)  # the layers: a small share
    rng = np.random.default_rng(0)
    choices = [layer_choices("ffn", rng.random(64), rng.random(4), 4, 8) for _ in range(a.num_layers)]
    costs = [np.linspace(1, 0, len(c.widths))[None, :] for c in choices]
    with pytest.raises(ValueError, match="fluctuation-ffn-refit-x1.4: even the fastest choices take .* the target "
                                         "speedup is out of reach of these choices"):
        plan_speed(SpeedMethod("fluctuation", "ffn", "refit", 1.4), choices, costs, table)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_multiply_add_table_predicts_the_models_multiply_adds(arch, tokenizer, tmp_path):
    """The tiny profile's table (`speed.latency: macs`, no timing): for any per-layer heads and widths, its
    predicted seconds are 1e-9 x the multiply-adds `costs.forward_macs` counts on the model pruned to them."""
    model = make_tiny(arch, tokenizer)
    save_classifier(model, tokenizer, tmp_path / "dense", dict(max_length=24, truncation_side="right",
                                                              padding_side="right", precision="fp32"))
    pd.DataFrame({"text": REVIEWS, "label": [0, 1] * 4}).to_parquet(tmp_path / "val.parquet")
    latency_table(tmp_path / "dense", tmp_path / "val.parquet", tmp_path / "table.json", str(tmp_path / "cache"),
                  "macs", reviews=6, repeats=3, batch_size=4, threads=1, device="cpu")
    table = LatencyTable.from_dict(read_json(tmp_path / "table.json"))
    assert not (tmp_path / "cache").exists() and table.base == 0 and table.signature["machine"] == "multiply-adds"
    ck = open_checkpoint(tmp_path / "dense")
    lengths = [len(e) for e in ck.encode(REVIEWS[:6])]
    rng = np.random.default_rng(0)
    configs = head_configurations(model.adapter.attention(0).heads, model.adapter.attention(0).kv_heads)
    for _ in range(5):
        heads = [configs[i] for i in rng.integers(len(configs), size=model.adapter.num_layers)]
        widths = rng.integers(1, model.adapter.ffn_width(0) + 1, size=model.adapter.num_layers).tolist()
        macs = forward_macs(pruned_to(ck.model, heads, widths).adapter, lengths)
        assert table.seconds(heads, widths) == pytest.approx(macs * 1e-9, rel=1e-12)
    assert table.dense == pytest.approx(forward_macs(ck.model.adapter, lengths) * 1e-9, rel=1e-12)
