"""A hub profile stops before any compute when a repository it needs is neither cached nor reachable."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from llm_anatomy import hub
from llm_anatomy.config import ParamsError

def config(profile="paper", data_source="mirror"):
    return {"profile": profile, "data": {"source": data_source, "hub_name": "stanfordnlp/imdb"},
            "profiles": {"paper": {"models": {"bert": {"source": "hub:bert-base-uncased"},
                                              "gpt2": {"source": "hub:gpt2"}}},
                         "offline": {"models": {"minilm": {"source": "embedded:minilm"}}}}}


def test_needs_follow_the_active_profile():
    assert hub.hub_needs(config()) == [("model", "bert-base-uncased"), ("model", "gpt2")]
    assert hub.hub_needs(config(data_source="hub"))[-1] == ("dataset", "stanfordnlp/imdb")
    assert hub.hub_needs(config("offline")) == []


def test_cached_or_reachable_passes_and_the_rest_is_named(monkeypatch):
    monkeypatch.setattr(hub, "cached", lambda t, r: r == "gpt2")
    monkeypatch.setattr(hub, "unreachable", lambda t, r: "https://hub/api/models/x is unreachable (refused)")
    with pytest.raises(ParamsError) as err:
        hub.check_hub(config())
    text = str(err.value)
    assert "model bert-base-uncased: not in the local hub cache" in text and "gpt2" not in text.split("Fix:")[0]
    assert "offline" in text
    monkeypatch.setattr(hub, "unreachable", lambda t, r: None)
    hub.check_hub(config())  # reachable: no error


def test_an_unreachable_endpoint_is_reported(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert "http://127.0.0.1:9/api/models/gpt2 is unreachable" in hub.unreachable("model", "gpt2", timeout=5)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.unreachable("model", "gpt2") == "HF_HUB_OFFLINE is set"


def test_a_paper_run_stops_before_its_first_job(tmp_path):
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "empty-cache"),
               HF_HUB_OFFLINE="0")
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile",
                          str(ROOT / "params.yaml"), "--directory",
                          str(tmp_path), "--cores", "1", "--config", "profile=paper"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode != 0
    assert "model bert-base-uncased: not in the local hub cache" in out.stdout + out.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()  # no job ran
