"""params.yaml validation: the shipped file passes, bad values stop the run with the key and the fix."""
import copy

import pytest

from llm_anatomy.config import ParamsError, load_params, validate

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
    def test_limit(p):
        p["profiles"]["offline"]["pruning"]["encoder"]["test_limit"] = 5000
    msg = _bad(params, test_limit)
    assert "profiles.offline.pruning.encoder.test_limit = 5000 exceeds split.test = 1000" in msg

    def time_limit(p):
        p["profiles"]["offline"]["pruning"]["decoder"]["time_limit"] = 500
    msg = _bad(params, time_limit)
    assert "profiles.offline.pruning.decoder.time_limit = 500 exceeds test_limit = 400" in msg


def test_device_setting(params):
    params["profiles"]["offline"]["device"] = "tpu"
    with pytest.raises(ParamsError, match="device"):
        validate(params, SCHEMA, ROOT)
