"""Target resolution (llm_anatomy.pruning.targets) on the shipped params: which targets each model has,
their configurations and sizes, and the errors for names that do not apply."""
import copy

import pytest

from llm_anatomy.config import load_params, validate
from llm_anatomy.pruning.targets import PruneTargets, curve_of

from conftest import ROOT


def targets_for(profile: str, edit=None) -> PruneTargets:
    params = load_params(ROOT / "params.yaml")
    params["profile"] = profile
    if edit:
        edit(params)
    validate(params, ROOT / "workflow/schemas/params.schema.yaml", ROOT)
    return PruneTargets(params)


def test_curve_names():
    assert curve_of("sweep-50") == ("sweep", 50)
    assert curve_of("flap-7") == ("flap", 7)
    assert curve_of("enc-a0.01-b0.001") == ("named", None)
    assert curve_of("sweep-5x") == ("named", None)


def trimmed(p):
    """Offline sizing set here, so the counts below do not follow the shipped params.yaml."""
    sizing = p["profiles"]["offline"]["pruning"]
    sizing["encoder"].update(sweep=[30, 50, 60, 70, 80], flap=[30, 50, 60, 70, 80],
                             methods=dict(curves=["fluctuation-searched-refit"], percents=[30, 50, 60, 70, 80]))
    sizing["decoder"].update(sweep=[50, 75], scoring_sweep=[50], flap=[50, 75],
                             methods=dict(curves=["wanda-sp-uniform-refit"], percents=[50, 70]))


def test_offline_targets():
    t = targets_for("offline", trimmed)
    assert t.kinds == {"minilm": "encoder", "smollm2": "decoder"}
    enc = t.names("minilm")
    assert enc[:5] == ["enc-a0.01-b0.001", "enc-a0.025-b0.001", "enc-a0.05-b0.001", "enc-a0.05-b0.005",
                       "enc-a0.05-b0.01"]
    pcts = (30, 50, 60, 70, 80)
    assert enc[5:] == ([f"sweep-{p}" for p in pcts] + [f"flap-{p}" for p in pcts]
                       + [f"fluctuation-searched-refit-{p}" for p in pcts])
    dec = t.names("smollm2")
    assert len(dec) == 7 + 2 + 2 + 2 + 2 and dec[0] == "dec-a0.05-f1" and dec[-1] == "wanda-sp-uniform-refit-70"
    assert dec[9:11] == ["sweep-prenorm-50", "sweep-gain-50"]  # decoder scorings, decoders only
    assert len(t.pairs()) == 20 + 15
    assert t.models_for("enc-a0.05-b0.01") == ["minilm"] and t.models_for("dec-a0.15-f4") == ["smollm2"]
    assert len(t.named_with_models()) == 12


def test_configurations_and_defaults():
    t = targets_for("offline")
    assert t.rule_config("minilm", "enc-a0.025-b0.001") == dict(rule="encoder", alpha=0.025, beta=0.001,
                                                                focusing="even-from-third+last", focus_multiplier=3)
    sweep = t.rule_config("smollm2", "sweep-25")  # the decoder sweep keeps dec-a0.05-f1's focusing
    assert sweep["rule"] == "decoder" and sweep["target"] == 0.25 and sweep["focusing"] == "last-1/12"
    assert sweep["negative_alpha"] is False and sweep["scoring"] == "paper"
    assert t.rule_config("smollm2", "sweep-gain-50")["scoring"] == "gain"
    with pytest.raises(ValueError, match="decoder scorings apply to decoders only"):
        t.rule_config("minilm", "sweep-gain-50")
    flap = t.rule_config("minilm", "flap-60")
    # FLAP's configuration holds only what FLAP reads, so changing k (focus_multiplier) leaves its plans alone
    assert flap == dict(rule="flap", target=0.6, allocation="uniform", bias_compensation=True)
    assert t.needs_ffn_stats("flap-60") and not t.needs_ffn_stats("sweep-60")
    assert t.compensated("minilm", "flap-60") and not t.compensated("minilm", "sweep-60")


def test_sizing_named_and_curve_points():
    t = targets_for("offline")
    named, point = t.sizing("minilm", "enc-a0.01-b0.001"), t.sizing("minilm", "sweep-50")
    assert (named.test_limit, named.time_limit, point.time_limit) == (1000, 128, 128)
    assert named.calibration_reviews == 128 and t.sizing("smollm2").calibration_reviews == 64
    assert (named.batch_size, named.repeats, named.random_seeds, named.equality_check_reviews) == (32, 3, 5, 8)
    # the zeroed model is timed for the paper's named configurations only (offline), for every target in paper
    assert named.time_zeroed and not point.time_zeroed
    assert targets_for("paper").sizing("bert", "sweep-50").time_zeroed
    assert t.random_seeds("smollm2") == [0, 1, 2]
    # FLAP and method points (and the dense model) read headline_limit reviews, their baselines test_limit
    def headline(p):
        p["profiles"]["offline"]["split"]["test"] = 5000
        p["profiles"]["offline"]["pruning"]["decoder"].update(test_limit=400, headline_limit=2000)
    h = targets_for("offline", headline)
    sizes = {n: (h.sizing("smollm2", n).test_limit, h.sizing("smollm2", n).baseline_limit)
             for n in ("dec-a0.05-f1", "sweep-50", "flap-50", "wanda-sp-uniform-refit-50")}
    assert sizes == {"dec-a0.05-f1": (400, 400), "sweep-50": (400, 400), "flap-50": (2000, 400),
                     "wanda-sp-uniform-refit-50": (2000, 400)}
    assert h.sizing("smollm2").test_limit == 2000
    # a sizing without time limits times every evaluated review
    tiny = targets_for("tiny")
    assert tiny.sizing("tiny-bert", "enc-a0.01-b0.001").time_limit == 32


def test_a_configuration_that_does_not_apply():
    t = targets_for("offline")
    with pytest.raises(ValueError, match="is for encoder models; smollm2 is a decoder"):
        t.rule_config("smollm2", "enc-a0.05-b0.01")
    with pytest.raises(KeyError, match="neither a configuration"):
        t.rule_config("minilm", "enc-a9")

    def only_encoders(p):
        p["profiles"]["offline"]["models"] = {"minilm": copy.deepcopy(p["profiles"]["offline"]["models"]["minilm"])}
    t = targets_for("offline", only_encoders)
    assert t.models_for("dec-a0.05-f1") == []
    assert t.named_with_models() == ["enc-a0.01-b0.001", "enc-a0.025-b0.001", "enc-a0.05-b0.001",
                                     "enc-a0.05-b0.005", "enc-a0.05-b0.01"]


def test_schema_defaults_fill_absent_keys():
    def strip(p):
        del p["pruning"]["high_threshold"], p["pruning"]["flap"]
        del p["profiles"]["offline"]["pruning"]["encoder"]["calibration_reviews"]
    t = targets_for("offline", strip)
    assert t.pruning["high_threshold"] == 0.35
    assert t.pruning["flap"] == {"allocation": "uniform", "bias_compensation": True}
    assert t.sizing("minilm").calibration_reviews == 128
    assert t.profile["device"] == "auto"


def test_files_of_a_target():
    t = targets_for("offline", trimmed)
    assert t.results == "results/offline"
    assert t.plan_inputs("minilm", "sweep-50") == {"layer_scores": "results/offline/minilm/layer_scores.parquet",
                                                   "neuron_scores": "results/offline/minilm/neuron_scores.parquet"}
    assert t.plan_inputs("smollm2", "flap-50")["ffn_stats"] == "results/offline/smollm2/ffn_stats.parquet"
    m = t.metrics_inputs("smollm2", "flap-50")
    assert m["pruned"] == "results/offline/pruned/smollm2/flap-50"
    assert m["dense_eval"] == "results/offline/smollm2/eval_test.parquet"  # one dense evaluation per model
    assert m["eval"] == "results/offline/smollm2/prune/flap-50/eval_test.parquet"
    assert t.config_metrics_inputs("dec-a0.15-f4") == ["results/offline/smollm2/prune/dec-a0.15-f4/metrics.json"]
    outs = t.final_outputs()
    assert len([o for o in outs if "/metrics/prune/" in o]) == 12 and len(t.all_pruned_dirs()) == 35
    assert "results/offline/summary.csv" in outs and "results/offline/comparisons.csv" in outs
    assert t.choice_files() == ["results/offline/minilm/choices/flap_allocation.csv",
                                "results/offline/smollm2/choices/flap_allocation.csv"]
    assert set(t.choice_files()) <= set(outs) and t.flap_fractions("smollm2") == [0.5, 0.75]
    assert targets_for("tiny").results == "results/tiny"


def test_a_configuration_chooses_its_decoder_scoring():
    def edit(p):
        p["pruning"]["configs"]["dec-a0.05-f1"]["scoring"] = "gain"
    t = targets_for("offline", edit)
    assert t.rule_config("smollm2", "dec-a0.05-f1")["scoring"] == "gain"
    assert t.rule_config("smollm2", "sweep-50")["scoring"] == "gain"  # the sweep keeps its base's scoring
    assert t.rule_config("smollm2", "sweep-prenorm-50")["scoring"] == "prenorm"
    with pytest.raises(ValueError, match="scoring"):
        targets_for("offline", lambda p: p["pruning"]["configs"]["dec-a0.05-f1"].update(scoring="post"))


def test_method_curves_name_their_criterion_allocation_and_compensation():
    from llm_anatomy.pruning.targets import ALL_METHODS, method_of
    assert curve_of("wanda-sp-global-refit-70") == ("wanda-sp-global-refit", 70)
    assert method_of("wanda-sp-global-refit") == ("wanda-sp", "global", "refit")
    assert method_of("flap") is None and curve_of("wanda-sp-sideways-refit-70") == ("named", None)
    assert len(ALL_METHODS) == 9 * 3 * 4 - 4 and len(set(ALL_METHODS)) == len(ALL_METHODS)


def test_method_targets_configurations_and_inputs():
    def edit(p):
        p["profiles"]["offline"]["pruning"]["encoder"]["methods"] = dict(
            curves=["fisher-global-refit", "contribution-uniform-bias"], percents=[40, 90], random_seeds=2)
    t = targets_for("offline", edit)
    assert t.names("minilm")[-4:] == ["fisher-global-refit-40", "fisher-global-refit-90", "contribution-uniform-bias-40",
                                      "contribution-uniform-bias-90"]
    assert t.rule_config("minilm", "fisher-global-refit-90") == dict(
        rule="criterion", criterion="fisher", allocation="global", compensation="refit", target=0.9, ridge=0.01,
        readout_ridge=10.0)
    # only fitted compensations read the ridges, so changing them leaves the other methods' plans alone
    assert not {"ridge", "readout_ridge"} & set(t.rule_config("minilm", "contribution-uniform-bias-40"))
    assert t.needs_train("fisher-global-refit-40") and not t.needs_train("contribution-uniform-bias-40")
    assert not t.needs_train("flap-50")
    r = "results/offline/minilm"
    assert t.plan_inputs("minilm", "fisher-global-refit-40") == dict(
        layer_scores=f"{r}/layer_scores.parquet", neuron_scores=f"{r}/neuron_scores.parquet",
        ffn_stats=f"{r}/ffn_stats.parquet", mask_gradients=f"{r}/mask_gradients.parquet")
    assert t.plan_inputs("minilm", "contribution-uniform-bias-40")["contributions"] == \
        f"{r}/anatomy/contributions.parquet"
    assert t.sizing("minilm", "fisher-global-refit-40").random_seeds == 2
    assert t.sizing("minilm", "flap-50").random_seeds == 5  # the other curves keep theirs
    assert set(t.benchmark_files("minilm", "fisher-global-refit-40")) == {"plan", "materialise", "ffn_stats",
                                                                         "mask_gradients"}


def test_the_full_grid_and_a_misspelled_method():
    def full(p):
        p["profiles"]["offline"]["pruning"]["decoder"]["methods"] = dict(curves="all", percents=[50])
    from llm_anatomy.pruning.targets import method_of
    names = targets_for("offline", full).names("smollm2")
    assert len([n for n in names if method_of(curve_of(n)[0])]) == 104

    def typo(p):
        p["profiles"]["offline"]["pruning"]["decoder"]["methods"] = dict(curves=["fischer-uniform-refit"], percents=[50])
    with pytest.raises(Exception, match="'fischer-uniform-refit' is not <criterion>-<allocation>-<compensation>"):
        targets_for("offline", typo)


def test_the_cost_of_a_point_comes_from_its_benchmark_files(tmp_path):
    from llm_anatomy.pruning.metrics import cost_fields
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {}
    for job, s in dict(plan=1.25, materialise=17.5, ffn_stats=13.0, mask_gradients=9.0).items():
        files[job] = tmp_path / f"{job}.tsv"
        files[job].write_text(header + f"{s}\t0:00:{int(s):02d}\t1\t1\t1\t1\t0\t0\t0\t{s}\n")
    assert cost_fields(files) == dict(seconds_plan=1.25, seconds_materialise_job=17.5, seconds_point=18.75,
                                      seconds_calibration=22.0)
    (tmp_path / "bad.tsv").write_text("nothing here\n")
    with pytest.raises(ValueError, match="bad.tsv is not a Snakemake benchmark file"):
        cost_fields(dict(plan=tmp_path / "bad.tsv"))


def test_a_requested_target_name_is_checked_with_the_valid_names():
    """What `snakemake results/<p>/<model>/prune/<target>/...` checks before any job (PruneTargets.check_name,
    called by the plan's input function): a percentage in 1..99 and a name the model can have."""
    from llm_anatomy.pruning.targets import TargetError
    t = targets_for("offline")
    for ok in ["flap-50", "flap-1", "flap-99", "sweep-42", "enc-a0.05-b0.01", "wanda-sp-global-rescale-35"]:
        t.check_name("minilm", ok)  # any point of a curve, not only the profile's
    t.check_name("smollm2", "sweep-gain-50")
    with pytest.raises(TargetError, match=r"flap-150: 150% is outside the valid range 1\.\.99"):
        t.check_name("minilm", "flap-150")
    with pytest.raises(TargetError, match=r"flap-0: 0% is outside the valid range 1\.\.99"):
        t.check_name("minilm", "flap-0")
    with pytest.raises(TargetError) as err:
        t.check_name("minilm", "flapp-50")
    msg = str(err.value)
    assert msg.startswith("'flapp-50' is not a prune target of minilm (did you mean 'flap-50'?). Its targets in "
                          "profile offline: enc-a0.01-b0.001, ")
    assert ", ".join(t.names("minilm")) in msg and "sweep-prenorm" not in msg  # an encoder's curves only
    with pytest.raises(TargetError, match="is for encoder models; smollm2 is a decoder"):
        t.check_name("smollm2", "enc-a0.05-b0.01")
    with pytest.raises(TargetError, match="decoder scorings apply to decoders only"):
        t.check_name("minilm", "sweep-gain-50")
    with pytest.raises(TargetError, match=r"'enc-a0\.5' is not a configuration under pruning\.configs"):
        t.config_metrics_inputs("enc-a0.5")
