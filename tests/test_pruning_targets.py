"""Target names and the method spec they resolve to (llm_anatomy.pruning.spec, .targets), the sizes, and the
files each rule reads (llm_anatomy.pipeline), on the fixed test params (tests/data/params.yaml)."""
import copy
from dataclasses import replace

import pytest
import yaml

from llm_anatomy.config import load_params, validate
from llm_anatomy.layout import SCHEMA
from llm_anatomy.pipeline import Pipeline
from llm_anatomy.pruning.spec import ALL_METHODS, MethodSpec, curve_of, method_of

from conftest import ROOT

PARAMS = load_params(ROOT / "tests/data/params.yaml")


def pipeline_for(edit=None) -> Pipeline:
    params = copy.deepcopy(PARAMS)
    if edit:
        edit(params)
    validate(params, ROOT / SCHEMA, ROOT)
    return Pipeline(params)


def test_curve_names():
    assert curve_of("sweep-50") == ("sweep", 50) and curve_of("flap-7") == ("flap", 7)
    assert curve_of("enc-a") == ("named", None) and curve_of("sweep-5x") == ("named", None)
    assert curve_of("wanda-sp-global-refit-70") == ("wanda-sp-global-refit", 70)
    assert method_of("wanda-sp-global-refit") == ("wanda-sp", "global", "refit")
    assert method_of("flap") is None and curve_of("wanda-sp-sideways-refit-70") == ("named", None)
    assert len(ALL_METHODS) == 9 * 3 * 4 - 4 and len(set(ALL_METHODS)) == len(ALL_METHODS)


def test_the_targets_of_each_model():
    t = pipeline_for().targets
    assert t.kinds == {"enc": "encoder", "dec": "decoder"}
    assert t.names("enc") == ["enc-a", "enc-b", "sweep-30", "sweep-60", "flap-30", "flap-60",
                              "fluctuation-searched-refit-50", "fluctuation-searched-refit-70"]
    assert t.names("dec") == ["dec-a", "dec-b", "dec-c", "sweep-50", "sweep-prenorm-50", "sweep-gain-50", "flap-50",
                              "flap-75", "wanda-sp-uniform-refit-50"]
    assert len(t.pairs()) == 17 and t.models_for("enc-b") == ["enc"] and t.models_for("dec-c") == ["dec"]
    assert t.named_with_models() == ["enc-a", "enc-b", "dec-a", "dec-b", "dec-c"]


def test_every_name_resolves_to_a_spec_that_formats_it_back():
    t = pipeline_for().targets
    for model, name in t.pairs():
        spec = t.spec(model, name)
        assert spec.name == name and curve_of(name)[0] == spec.curve
        assert MethodSpec.from_dict(spec.to_dict()) == spec  # what the rule passes to the plan


def test_aliases_resolve_into_the_method_spec():
    t = pipeline_for().targets
    # FLAP is the fluctuation criterion with its mean-output fold, allocated as pruning.flap says
    assert t.spec("enc", "flap-60") == MethodSpec("fluctuation", "uniform", "bias", 0.6, alias="flap")
    assert t.spec("enc", "flap-60").family == "flap"
    # a named configuration: the threshold rule at its own alpha, with the global k unless it sets its own
    assert t.spec("enc", "enc-a") == MethodSpec("cosine", "threshold", rule="encoder", alpha=0.01, beta=0.001,
                                                focusing="even-from-third+last", focus_multiplier=3, alias="enc-a")
    assert t.spec("enc", "enc-b").focus_multiplier == 2 and t.spec("enc", "enc-b").named
    sweep = t.spec("dec", "sweep-50")  # the decoder sweep keeps dec-a's focusing, alpha bisected
    assert (sweep.rule, sweep.target, sweep.focusing, sweep.scoring, sweep.negative_alpha) == (
        "decoder", 0.5, "last-1/12", "paper", False)
    assert t.spec("dec", "sweep-gain-50").scoring == "gain"
    with pytest.raises(ValueError, match="decoder scorings apply to decoders only"):
        t.spec("enc", "sweep-gain-50")
    refit = t.spec("enc", "fluctuation-searched-refit-70")
    assert (refit.criterion, refit.allocation, refit.compensation, refit.target) == ("fluctuation", "searched",
                                                                                     "refit", 0.7)
    assert (refit.ridge, refit.readout_ridge, refit.family) == (0.01, 10.0, "criterion")


def test_each_method_reads_only_the_parameters_that_apply_to_it():
    """So changing one reruns exactly the plans that read it: k only the threshold rules', the ridges only
    the fitted compensations'."""
    t = pipeline_for().targets
    assert t.spec("enc", "flap-60").focus_multiplier is None and t.spec("enc", "flap-60").ridge is None
    assert t.spec("enc", "sweep-30").ridge is None and t.spec("enc", "sweep-30").focus_multiplier == 3
    assert t.spec("enc", "enc-a").negative_alpha is None  # a named configuration does not bisect
    bias = MethodSpec("contribution", "uniform", "bias", 0.4).with_params(PARAMS_FILLED)
    assert not {"ridge", "readout_ridge"} & set(bias.to_dict())
    changed = t.spec("enc", "fluctuation-searched-refit-70").with_values({"ridge": 5.0})
    assert changed.ridge == 0.01  # a value the record holds wins
    # the global allocation's cap: read by global plans only (FLAP's global too), offered by the command line
    assert t.spec("enc", "flap-60").max_layer_fraction is None
    assert MethodSpec.flap(0.6, "global", True).with_params(PARAMS_FILLED).max_layer_fraction == 1.0


PARAMS_FILLED = pipeline_for().targets.pruning


def test_a_configuration_that_does_not_apply():
    t = pipeline_for().targets
    with pytest.raises(ValueError, match="is for encoder models; dec is a decoder"):
        t.spec("dec", "enc-a")
    with pytest.raises(KeyError, match="neither a configuration"):
        t.spec("enc", "enc-z")
    with pytest.raises(ValueError, match="target 1.5"):
        MethodSpec("fisher", "uniform", "none", 1.5)
    only_encoders = pipeline_for(lambda p: p["profiles"]["test"]["models"].pop("dec")).targets
    assert only_encoders.models_for("dec-a") == [] and only_encoders.named_with_models() == ["enc-a", "enc-b"]


def test_sizing_named_and_curve_points():
    t = pipeline_for().targets
    named, point = t.sizing("enc", "enc-a"), t.sizing("enc", "sweep-30")
    assert (named.test_limit, named.time_limit, point.time_limit) == (100, 40, 40)
    assert t.sizing("dec", "flap-50").time_limit == 20 and t.sizing("dec", "dec-a").time_limit == 80
    assert (named.batch_size, named.calibration_batch_size, named.repeats, named.equality_check_reviews) == (32, 16, 3, 8)
    assert named.calibration_reviews == 64 and t.sizing("dec").calibration_reviews == 32
    # the zeroed model is timed for the named configurations only, unless time_zeroed: all
    assert named.time_zeroed and not point.time_zeroed
    every = pipeline_for(lambda p: p["profiles"]["test"]["pruning"].update(time_zeroed="all")).targets
    assert every.sizing("enc", "sweep-30").time_zeroed
    # method points: methods.random_seeds (default 5: an interval over seeds needs at least 2)
    assert t.random_seeds("dec") == [0, 1] and t.random_seeds("enc", "fluctuation-searched-refit-50") == [0, 1, 2, 3, 4]
    # FLAP and method points (and the dense model) read headline_limit reviews, their baselines test_limit
    h = pipeline_for(lambda p: p["profiles"]["test"]["pruning"]["decoder"].update(headline_limit=160)).targets
    sizes = {n: (h.sizing("dec", n).test_limit, h.sizing("dec", n).baseline_limit)
             for n in ("dec-a", "sweep-50", "flap-50", "wanda-sp-uniform-refit-50")}
    assert sizes == {"dec-a": (80, 80), "sweep-50": (80, 80), "flap-50": (160, 80),
                     "wanda-sp-uniform-refit-50": (160, 80)}
    assert h.sizing("dec").test_limit == 160 and t.sizing("dec").test_limit == 80


def test_schema_defaults_fill_absent_keys():
    def strip(p):
        p["pruning"].pop("high_threshold", None), p["pruning"].pop("flap", None)
        del p["profiles"]["test"]["pruning"]["encoder"]["calibration_reviews"]
    t = pipeline_for(strip).targets
    assert t.pruning["high_threshold"] == 0.35
    assert t.pruning["flap"] == {"allocation": "uniform", "bias_compensation": True}
    assert t.sizing("enc").calibration_reviews == 128 and t.profile["device"] == "auto"


def test_the_files_each_rule_reads():
    pipe = pipeline_for()
    r = "results/test"
    assert pipe.plan_inputs("enc", "sweep-30") == {"layer_scores": f"{r}/enc/layer_scores.parquet",
                                                    "neuron_scores": f"{r}/enc/neuron_scores.parquet"}
    assert pipe.plan_inputs("dec", "flap-50")["ffn_stats"] == f"{r}/dec/ffn_stats.parquet"
    assert pipe.plan_inputs("enc", "fluctuation-searched-refit-50")["sensitivity"] == \
        f"{r}/enc/choices/sensitivity_fluctuation.parquet"
    m = pipe.metrics_inputs("dec", "flap-50")
    assert m["pruned"] == f"{r}/pruned/dec/flap-50" and m["dense_eval"] == f"{r}/dec/eval_test.parquet"
    assert m["eval"] == f"{r}/dec/prune/flap-50/eval_test.parquet"
    assert pipe.config_metrics_inputs("dec-b") == [f"{r}/dec/prune/dec-b/metrics.json"]
    report = pipe.report_inputs()
    assert len(report["metrics"]) == len(report["evals"]) == len(report["baselines"]) == 17
    outs = pipe.prune_outputs()
    assert len([o for o in outs if "/metrics/test/prune/" in o]) == 5 and len(pipe.pruned_dirs()) == 17
    assert f"{r}/summary.csv" in outs and "results/metrics/test/headline.json" in outs
    assert pipe.choice_files() == [f"{r}/enc/choices/flap_allocation.csv", f"{r}/dec/choices/flap_allocation.csv"]
    assert set(pipe.benchmark_inputs("enc", "fluctuation-searched-refit-50")) == {
        "benchmark_plan", "benchmark_materialise", "benchmark_ffn_stats", "benchmark_layer_sensitivity"}


def test_method_targets_read_what_their_criterion_measures():
    def edit(p):
        p["profiles"]["test"]["pruning"]["encoder"]["methods"] = dict(
            curves=["fisher-global-refit", "contribution-uniform-bias", "obs-uniform-none"], percents=[40])
    pipe = pipeline_for(edit)
    r = "results/test/enc"
    assert pipe.plan_inputs("enc", "fisher-global-refit-40") == dict(
        layer_scores=f"{r}/layer_scores.parquet", neuron_scores=f"{r}/neuron_scores.parquet",
        ffn_stats=f"{r}/ffn_stats.parquet", mask_gradients=f"{r}/mask_gradients.parquet")
    assert pipe.plan_inputs("enc", "contribution-uniform-bias-40")["contributions"] == f"{r}/anatomy/contributions.parquet"
    assert pipe.plan_inputs("enc", "obs-uniform-none-40")["obs_scores"] == f"{r}/obs_scores.parquet"
    assert pipe.targets.spec("enc", "fisher-global-refit-40").fitted
    assert not pipe.targets.spec("enc", "contribution-uniform-bias-40").fitted


def test_the_full_grid_and_a_misspelled_method():
    def full(p):
        p["profiles"]["test"]["pruning"]["decoder"]["methods"] = dict(curves="all", percents=[50])
    names = pipeline_for(full).targets.names("dec")
    assert len([n for n in names if method_of(curve_of(n)[0])]) == len(ALL_METHODS) == 104

    def typo(p):
        p["profiles"]["test"]["pruning"]["decoder"]["methods"] = dict(curves=["fischer-uniform-refit"], percents=[50])
    with pytest.raises(Exception, match="'fischer-uniform-refit' is not <criterion>-<allocation>-<compensation>"):
        pipeline_for(typo)


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


def test_dvc_stages_name_the_configurations_of_params_yaml():
    """dvc.yaml's prune stage runs one Snakemake target per Figure-5a configuration: the same names as the shipped
    params.yaml's pruning.configs, in the same order."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["prune"]["matrix"]["config"] == list(load_params(ROOT / "params.yaml")["pruning"]["configs"])


def test_a_spec_is_frozen():
    spec = MethodSpec("fisher", "uniform", "none", 0.5)
    with pytest.raises(Exception):
        spec.target = 0.6
    assert replace(spec, target=0.6).name == "fisher-uniform-none-60"


def test_a_requested_target_name_is_checked_with_the_valid_names():
    """What `snakemake results/<p>/<model>/prune/<target>/...` checks before any job (Targets.check_name, called
    by the input functions): a percentage in 1..99 and a name the model can have."""
    from llm_anatomy.pruning.targets import TargetError
    pipe = pipeline_for()
    t = pipe.targets
    for ok in ["flap-50", "flap-1", "flap-99", "sweep-42", "enc-b", "wanda-sp-global-rescale-35"]:
        t.check_name("enc", ok)  # any point of a curve, not only the profile's
    t.check_name("dec", "sweep-gain-50")
    with pytest.raises(TargetError, match=r"flap-150: 150% is outside the valid range 1\.\.99"):
        t.check_name("enc", "flap-150")
    with pytest.raises(TargetError, match=r"flap-0: 0% is outside the valid range 1\.\.99"):
        t.check_name("enc", "flap-0")
    with pytest.raises(TargetError) as err:
        t.check_name("dec", "flapp-50")
    msg = str(err.value)
    assert msg.startswith("'flapp-50' is not a prune target of dec (did you mean 'flap-50'?). Its targets in "
                          "profile test: dec-a, ")
    assert ", ".join(t.names("dec")) in msg
    with pytest.raises(TargetError, match="is for encoder models; dec is a decoder"):
        t.check_name("dec", "enc-a")
    with pytest.raises(TargetError, match="decoder scorings apply to decoders only"):
        t.check_name("enc", "sweep-gain-50")
    with pytest.raises(TargetError, match="is not a prune target of enc"):  # the plan's input function checks it
        pipe.plan_inputs("enc", "flapp-50")
    with pytest.raises(TargetError, match=r"'enc-z' is not a configuration under pruning\.configs"):
        pipe.config_metrics_inputs("enc-z")
