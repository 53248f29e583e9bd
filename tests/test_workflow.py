"""The Snakemake workflow: dry runs of every profile, and a real run of the tiny profile."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", str(ROOT / "params.yaml")]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *args],
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.parametrize("profile", ["offline", "paper", "tiny"])
def test_dry_run(tmp_path, profile):
    out = snakemake(tmp_path, "-n", "--config", f"profile={profile}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "finetune" in out.stdout


def test_bad_params_stop_before_any_job(tmp_path):
    out = snakemake(tmp_path, "-n", "--config", "profile=nonexistent")
    assert out.returncode != 0
    assert "profile: 'nonexistent' is not defined" in out.stderr + out.stdout


@pytest.mark.slow
def test_tiny_profile_end_to_end(tmp_path):
    first = snakemake(tmp_path, "--config", "profile=tiny")
    assert first.returncode == 0, (first.stdout + first.stderr)[-5000:]
    summary = json.loads((tmp_path / "results/metrics/finetune.json").read_text())
    assert set(summary) == {"tiny-bert", "tiny-gpt2", "tiny-llama"}
    for name, metrics in summary.items():
        assert metrics["n_test"] == 32 and 0 <= metrics["test_accuracy"] <= 1
        assert (tmp_path / f"results/{name}/finetuned/model.safetensors").exists()
        assert not (tmp_path / f"results/{name}/checkpoints").exists()
        flap = json.loads((tmp_path / f"results/{name}/prune/flap-50/metrics.json").read_text())
        assert flap["rule"] == "flap" and flap["neurons_pruned"] == flap["neurons_total"] // 2
    curves = pd.read_csv(tmp_path / "results/summary.csv").groupby("curve")["config"].count().to_dict()
    assert curves == {"named": 5 + 7 + 7, "sweep": 3 + 1 + 1, "flap": 3}  # tiny-bert, tiny-gpt2, tiny-llama
    second = snakemake(tmp_path, "--config", "profile=tiny")
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout + second.stderr
