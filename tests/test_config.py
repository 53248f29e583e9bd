"""params.yaml validation: the shipped file passes, bad values stop the run with the key and the fix."""
import copy

import pytest

from llm_anatomy.config import ParamsError, load_params, schema_properties, validate

from conftest import ROOT

SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"


@pytest.fixture
def params():
    return load_params(ROOT / "params.yaml")


@pytest.mark.parametrize("profile", ["offline", "paper", "tiny"])
def test_shipped_profiles_are_valid(params, profile):
    params["profile"] = profile
    prof = validate(params, SCHEMA, ROOT)
    assert prof is params["profiles"][profile]


def _bad(params, edit):
    p = copy.deepcopy(params)
    edit(p)
    with pytest.raises(ParamsError) as err:
        validate(p, SCHEMA, ROOT)
    return str(err.value)


def test_unknown_profile(params):
    msg = _bad(params, lambda p: p.update(profile="fast"))
    assert "profile: 'fast' is not defined" in msg and "tiny" in msg


def test_unknown_model_source(params):
    def edit(p):
        p["profiles"]["offline"]["models"]["minilm"]["source"] = "embedded:bert-large"
    msg = _bad(params, edit)
    assert "profiles.offline.models.minilm.source" in msg and "embedded:minilm|smollm2" in msg


def test_missing_data_path(params, tmp_path):
    msg = _bad(params, lambda p: p["data"].update(mirror_dir=str(tmp_path / "nowhere")))
    assert "data.mirror_dir" in msg and "nowhere/train.parquet does not exist" in msg


def test_negative_learning_rate(params):
    def edit(p):
        p["profiles"]["offline"]["models"]["smollm2"]["finetune"]["lr"] = -1e-4
    msg = _bad(params, edit)
    assert "profiles.offline.models.smollm2.finetune.lr" in msg


def test_freezing_more_layers_than_the_model_has(params):
    def edit(p):
        p["profiles"]["offline"]["models"]["minilm"]["finetune"]["freeze_bottom_layers"] = 7
    assert "exceeds the model's 6 layers" in _bad(params, edit)


def test_train_limit_beyond_split(params):
    def edit(p):
        p["profiles"]["offline"]["models"]["minilm"]["finetune"]["train_limit"] = 10**5
    assert "train_limit" in _bad(params, edit)


def test_negative_alpha(params):
    def edit(p):
        p["pruning"]["configs"]["enc-a0.01-b0.001"]["alpha"] = -0.01
    assert "pruning.configs.enc-a0.01-b0.001.alpha" in _bad(params, edit)


def test_focusing_layer_beyond_depth(params):
    def edit(p):
        p["pruning"]["configs"]["enc-a0.01-b0.001"]["focusing"] = [4, 6]
    msg = _bad(params, edit)  # the offline encoder (MiniLM) has 6 layers: 0..5
    assert "pruning.configs.enc-a0.01-b0.001.focusing" in msg and "[6] do not exist" in msg


def test_flap_calibration_beyond_train_split(params):
    def edit(p):
        p["profiles"]["offline"]["pruning"]["encoder"]["calibration_reviews"] = 10**5
    assert "calibration_reviews" in _bad(params, edit)


def test_unknown_flap_allocation(params):
    def edit(p):
        p["pruning"]["flap"]["allocation"] = "per-head"
    assert "allocation" in _bad(params, edit)


def test_evaluation_limits_beyond_the_split_are_errors(params):
    def sized(p, **decoder):
        p["profiles"]["offline"]["split"]["test"] = 1000
        for kind in ("encoder", "decoder"):
            p["profiles"]["offline"]["pruning"][kind].update(test_limit=400, headline_limit=800, time_limit=64)
        p["profiles"]["offline"]["pruning"]["decoder"].update(decoder)

    msg = _bad(params, lambda p: sized(p, test_limit=5000))
    assert "profiles.offline.pruning.decoder.test_limit = 5000 exceeds split.test = 1000" in msg
    msg = _bad(params, lambda p: sized(p, headline_limit=1500))
    assert "profiles.offline.pruning.decoder.headline_limit = 1500 exceeds split.test = 1000" in msg
    msg = _bad(params, lambda p: sized(p, headline_limit=300))
    assert "profiles.offline.pruning.decoder.headline_limit = 300 is below test_limit = 400" in msg
    msg = _bad(params, lambda p: sized(p, time_limit=500))
    assert "profiles.offline.pruning.decoder.time_limit = 500 exceeds test_limit = 400" in msg


def test_device_setting(params):
    params["profiles"]["offline"]["device"] = "tpu"
    with pytest.raises(ParamsError, match="device"):
        validate(params, SCHEMA, ROOT)


def test_misspelled_keys_are_rejected_with_a_suggestion(params):
    def edit(p):
        p["profiles"]["offline"]["treads"] = 2
        p["profiles"]["offline"]["models"]["minilm"]["knid"] = "encoder"
    msg = _bad(params, edit)
    assert "profiles.offline.treads: unknown key 'treads'; did you mean 'threads'?" in msg
    assert "profiles.offline.models.minilm.knid: unknown key 'knid'; did you mean 'kind'?" in msg
    msg = _bad(params, lambda p: p["data"].update(zzz=1))  # nothing close: the allowed keys are listed
    assert "data.zzz: unknown key 'zzz'; allowed here: hub_name, mirror_dir, source" in msg


def test_a_missing_section_is_named(params):
    msg = _bad(params, lambda p: p.pop("anatomy"))
    assert "anatomy: missing; add it" in msg


@pytest.mark.parametrize("key, value", [("high_threshold", 5), ("beta", -1)])
def test_out_of_range_values(params, key, value):
    def edit(p):
        if key == "beta":
            p["pruning"]["configs"]["enc-a0.01-b0.001"]["beta"] = value
        else:
            p["pruning"][key] = value
    assert key in _bad(params, edit)


def test_nested_command_line_overrides_get_their_yaml_types(params):
    from llm_anatomy.config import retype_overrides
    # what Snakemake hands over for --config 'anatomy={threshold: 0.5, ablation: {reviews: 16}}' after merging
    overrides = {"anatomy": {"threshold": "0.5", "ablation": {"reviews": "16"}}, "profile": "offline",
                 "pruning": {"configs": {"enc-a0.01-b0.001": {"alpha": "1e-3", "focusing": "none"}},
                             "sweep": {"decoder_scorings": ["gain"]}}}
    params["anatomy"].update(threshold="0.5")
    params["anatomy"]["ablation"].update(reviews="16")
    params["pruning"]["configs"]["enc-a0.01-b0.001"].update(alpha="1e-3", focusing="none")
    params["pruning"]["sweep"]["decoder_scorings"] = ["gain"]
    retype_overrides(params, overrides)
    assert params["anatomy"]["threshold"] == 0.5 and params["anatomy"]["ablation"]["reviews"] == 16
    assert params["pruning"]["configs"]["enc-a0.01-b0.001"]["alpha"] == 0.001
    assert params["pruning"]["configs"]["enc-a0.01-b0.001"]["focusing"] == "none"
    assert params["pruning"]["sweep"]["decoder_scorings"] == ["gain"]
    validate(params, SCHEMA, ROOT)


def test_a_bad_probe_file_stops_validation(params, tmp_path):
    """Probes are read when the params are checked (Snakefile load), not after the fine-tunes."""
    empty = tmp_path / "probes.tsv"
    empty.write_text("")
    msg = _bad(params, lambda p: p["anatomy"].update(probes=str(empty)))
    assert f"anatomy.probes: probe file {empty} is empty" in msg


@pytest.mark.parametrize("key, value, message", [
    ("calibration_size", 6000, "anatomy.calibration_size = 6000 exceeds profiles.offline.split.train = 5000"),
    ("validation_size", 501, "anatomy.validation_size = 501 exceeds profiles.offline.split.val = 500"),
    ("probe", {"train_reviews": 5001}, "anatomy.probe.train_reviews = 5001 exceeds profiles.offline.split.train = 5000")])
def test_anatomy_samples_beyond_the_split_are_errors_not_clamps(params, key, value, message):
    assert message in _bad(params, lambda p: p["anatomy"].update({key: value}))


def test_params_yaml_has_no_anchors_or_merge_keys():
    """`dvc exp run -S` rewrites params.yaml and expands anchors and `<<:` merges into copies; written
    out in full, the file stays what a reader sees, and a -S diff shows only the changed key."""
    import yaml

    text = (ROOT / "params.yaml").read_text()
    anchored = [e for e in yaml.parse(text) if getattr(e, "anchor", None)]
    assert not anchored and "<<:" not in text


def test_average_over_must_be_an_input_set_of_the_layer_scores(params):
    """`pruning.average_over` is read only when the plans are made, after fine-tune, extract and score;
    a value no layer_scores.parquet holds stops validation instead (the schema's enum, which also gives
    `llm-anatomy prune --average-over` its choices)."""
    import pandas as pd

    from llm_anatomy.probes import INPUT_SETS, anatomy_inputs
    reviews = pd.DataFrame({"text": ["a", "b"], "label": [0, 1]})
    probes = pd.DataFrame({"input_id": [0], "subtask": ["s"], "variant": ["v"], "text": ["p"]})
    # the valid values are exactly the input sets the extraction writes (and scores.py carries over)
    assert sorted(set(anatomy_inputs(probes, reviews, reviews)["input_set"])) == sorted(INPUT_SETS)
    assert schema_properties("$defs", "pruning")["average_over"]["enum"] == list(INPUT_SETS)
    msg = _bad(params, lambda p: p["pruning"].update(average_over="probes"))
    assert ("  pruning.average_over: 'probes' is not one of ['probe', 'calibration', 'validation'] (did you mean "
            "'probe'?) (expected: input_set of layer_scores.parquet to average c_l over") in msg
    for good in INPUT_SETS:
        p = copy.deepcopy(params)
        p["pruning"]["average_over"] = good
        validate(p, SCHEMA, ROOT)


def test_a_misspelled_curve_is_named_with_the_part_that_is_wrong(params):
    """The schema used to reject it first with a generic "not valid under any of the given schemas"."""
    def edit(p):
        p["profiles"]["offline"]["pruning"]["encoder"]["methods"]["curves"] = ["fluctuation-searchd-refit"]
    msg = _bad(params, edit)
    assert msg.startswith("profiles.offline.pruning.encoder.methods.curves: 'fluctuation-searchd-refit' is not "
                          "<criterion>-<allocation>-<compensation>: allocation 'searchd' is unknown (did you mean "
                          "'searched'?)")
    assert "allocations ['uniform', 'global', 'searched']" in msg and "'fluctuation'" in msg and "'refit'" in msg
    assert "not valid under any of the given schemas" not in msg

    def two_parts(p):
        p["profiles"]["offline"]["pruning"]["encoder"]["methods"]["curves"] = ["wanda-sp-unifrm-refitt"]
    msg = _bad(params, two_parts)
    assert "allocation 'unifrm' is unknown (did you mean 'uniform'?); compensation 'refitt' is unknown" in msg


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    """Snakemake's loader says only "not valid JSON or YAML"; the Snakefile reads params.yaml first."""
    text = (ROOT / "params.yaml").read_text()
    lines = text.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("  threshold: 0.35"))
    lines[row] = lines[row].replace("threshold: 0.35", "threshold: [0.35", 1)  # an unclosed bracket
    bad = tmp_path / "params.yaml"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ParamsError) as err:
        load_params(bad)
    # the flow sequence opened on `row` (1-based row + 1) meets the next key on the line after
    assert str(err.value).startswith(f"{bad}, line {row + 2}, column 3: expected ',' or ']'")
    assert f"while parsing a flow sequence at line {row + 1}" in str(err.value)
