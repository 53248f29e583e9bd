"""The command-line tool: help, clear errors, and the whole chain on a tiny model, whose pruned folder
loads with the documented call and computes what the plan it carries says."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, forward_tolerance
from llm_anatomy.cli import main
from llm_anatomy.layout import folder_file


@pytest.mark.parametrize("command", ["finetune", "score", "prune", "evaluate", "bench", "export", "pull"])
def test_every_subcommand_has_help(command):
    run = subprocess.run([sys.executable, "-m", "llm_anatomy.cli", command, "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0 and f"llm-anatomy {command}" in run.stdout


def test_the_prune_options_are_the_method_parameters_with_the_schemas_defaults():
    from llm_anatomy.cli import parser
    prune = parser()._subparsers._group_actions[0].choices["prune"]
    defaults = {a.dest: a.default for a in prune._actions}
    assert (defaults["ridge"], defaults["readout_ridge"], defaults["max_layer_fraction"]) == (0.01, 10.0, 1.0)
    assert "focus_multiplier" not in defaults  # the threshold rules' parameter: the command line has no such rule


def test_a_bad_model_folder_and_a_bad_file_are_named(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--data", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: not a classifier folder (no classifier.json)" in err and "llm-anatomy finetune" in err
    assert main(["finetune", "tiny:bert", "--tokenizer", "embedded:minilm", "--train", str(tmp_path / "none.parquet"),
                 "--val", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "m")]) == 2
    assert "none.parquet: no such file" in capsys.readouterr().err


def test_prune_refuses_an_average_over_no_layer_scores_hold_before_reading_anything(tmp_path, capsys):
    """The choices come from the schema's enum (they used to be unchecked: the calibration passes ran, then
    the layer scores had no such input_set). The folders named do not exist: nothing is read."""
    with pytest.raises(SystemExit) as stop:
        main(["prune", str(tmp_path / "model"), "--scores", str(tmp_path / "scores"), "--calibration",
              str(tmp_path / "train.parquet"), "--sparsity", "0.5", "--out", str(tmp_path / "out"), "--average-over", "probes"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "argument --average-over: invalid choice: 'probes' (choose from " in err
    assert all(choice in err for choice in ("probe", "calibration", "validation"))
    assert list(tmp_path.iterdir()) == []


def test_prune_refuses_a_speedup_with_the_pipeline_command_before_reading_anything(tmp_path, capsys):
    """Speed targets need the latency table, head statistics and estimated costs the pipeline's rules build: the
    command line names the pipeline command rather than build a second path to them."""
    code = main(["prune", str(tmp_path / "model"), "--scores", str(tmp_path / "scores"), "--calibration",
                 str(tmp_path / "train.parquet"), "--speedup", "1.6", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--speedup 1.6: a speed target reads this machine's latency table" in err
    assert "results/<profile>/<model>/prune/fluctuation-joint-refit-x1.6/metrics.json" in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as stop:  # one size: a sparsity or a speedup
        main(["prune", str(tmp_path / "model"), "--scores", str(tmp_path / "scores"), "--calibration",
              str(tmp_path / "train.parquet"), "--speedup", "1.6", "--sparsity", "0.5", "--out", str(tmp_path / "o")])
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_an_unreadable_data_file_is_named_and_left_untouched(tmp_path, capsys, monkeypatch):
    """A file the user names is never moved aside (the pipeline's own intermediates are: their rule rebuilds
    them); the command stops before loading the model, naming the file and what it must be, and before it
    makes the default --out's temporary folder (which a refused call used to leave behind, empty)."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where mkdtemp() makes the default --out
    (tmp_path / "tmp").mkdir()
    model = tmp_path / "model"
    model.mkdir()
    (model / "classifier.json").write_text("{}")  # enough to pass the folder check: the data is read first
    data = tmp_path / "reviews.parquet"
    data.write_bytes(b"not a parquet file")
    os.utime(data, (1_700_000_000, 1_700_000_000))
    before = (data.read_bytes(), data.stat().st_mtime_ns)
    assert main(["evaluate", str(model), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{data} cannot be read (ArrowInvalid" in err and "the file is left as it is" in err
    assert "`text` and `label` columns" in err and "Rerun Snakemake" not in err and "moved" not in err
    assert (data.read_bytes(), data.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "reviews.parquet", "tmp"]
    assert list((tmp_path / "tmp").iterdir()) == []  # no default --out folder left behind


def test_pull_outside_a_clone_names_the_folder_and_the_fix(tmp_path, capsys):
    assert main(["pull", "--repo", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"--repo {tmp_path / 'nowhere'}: not a clone of this project (no .dvc folder)" in err and "--repo <clone>" in err


def test_finetune_score_prune_evaluate_bench_on_a_tiny_model(tmp_path, splits, tokenizer, capsys):
    from llm_anatomy.batching import encode_reviews, pad
    from llm_anatomy.models import load_classifier
    from llm_anatomy.pruning.materialise import pruned_copy
    from llm_anatomy.pruning.plan import read_plan

    files = {}
    for name, df in splits.items():
        files[name] = str(tmp_path / f"{name}.parquet")
        df.to_parquet(files[name])
    model = tmp_path / "model"
    assert main(["finetune", "tiny:bert", "--tokenizer", "embedded:minilm", "--train", files["train"],
                 "--val", files["val"], "--out", str(model), "--max-length", "32", "--precision", "fp32",
                 "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["n_train"] == len(splits["train"])
    assert main(["score", str(model), "--train", files["train"], "--val", files["val"], "--out",
                 str(tmp_path / "scores"), "--calibration-size", "8", "--validation-size", "8", "--threads", "1"]) == 0
    capsys.readouterr()
    out = tmp_path / "pruned"
    assert main(["prune", str(model), "--scores", str(tmp_path / "scores"), "--calibration", files["train"],
                 "--calibration-reviews", "16", "--sparsity", "0.5", "--out", str(out), "--threads", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    dense, tok, meta = load_classifier(model)
    pruned, _, _ = load_classifier(out)  # the documented call
    assert pruned.adapter.ffn_widths() == info["ffn_widths"] == [w // 2 for w in dense.adapter.ffn_widths()]
    # it computes what its own plan applied to the dense model computes
    enc = encode_reviews(tok, meta, splits["test"]["text"])
    ids, mask = pad(enc, tok.pad_token_id, "right")
    with torch.no_grad():
        expect = pruned_copy(dense, read_plan(folder_file(out, "plan")))(ids, mask)
        torch.testing.assert_close(pruned(ids, mask), expect, atol=forward_tolerance(dense, expect), rtol=0)
    assert main(["evaluate", str(out), "--data", files["test"], "--out", str(tmp_path / "eval.parquet")]) == 0
    ev = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        direct = float(((pruned(ids, mask) > 0).numpy() == splits["test"]["label"].to_numpy()).mean())
    assert ev["reviews"] == len(splits["test"]) and ev["accuracy"] == pytest.approx(direct)
    assert ev["accuracy_lo"] <= ev["accuracy"] <= ev["accuracy_hi"]
    assert main(["bench", str(model), str(out), "--data", files["test"], "--reviews", "8", "--repeats", "2"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert bench["reviews"] == 8 and np.isfinite(bench["speedup"]["median"])
    assert bench["loop"]["read_token_only"] and bench["machine"]["cpu"]
    # a criterion of the registry with a fitted compensation: the folder holds the plan's neurons removed and
    # the fitted output weights, which are not the dense model's value vectors
    refit = tmp_path / "refit"
    assert main(["prune", str(model), "--scores", str(tmp_path / "scores"), "--calibration", files["train"],
                 "--calibration-reviews", "16", "--sparsity", "0.5", "--criterion", "fisher", "--compensation",
                 "refit", "--out", str(refit), "--threads", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    plan = read_plan(folder_file(refit, "plan"))
    assert (plan.spec.criterion, plan.compensation, info["calibration_reviews"]) == ("fisher", "refit", 16)
    fitted, _, _ = load_classifier(refit)
    kept = np.setdiff1d(np.arange(dense.adapter.ffn_width(0)), plan.pruned[0])
    assert fitted.adapter.ffn_widths() == [w // 2 for w in dense.adapter.ffn_widths()]
    assert not torch.allclose(fitted.adapter.value_vectors(0), dense.adapter.value_vectors(0)[torch.as_tensor(kept)])
    assert main(["prune", str(model), "--scores", str(tmp_path / "scores"), "--calibration", files["train"],
                 "--sparsity", "0.5", "--criterion", "flap", "--compensation", "refit", "--out", str(tmp_path / "x")]) == 2
    assert "for a fitted compensation use --criterion fluctuation" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse refuses it, naming the flag and the schema's minimum
        main(["prune", str(model), "--scores", str(tmp_path / "scores"), "--calibration", files["train"],
              "--sparsity", "0.5", "--criterion", "fisher", "--compensation", "refit", "--readout-ridge", "-1",
              "--out", str(tmp_path / "x")])
    assert "--readout-ridge -1.0: must be >= 0" in capsys.readouterr().err
    assert main(["prune", str(model), "--scores", str(tmp_path / "scores"), "--calibration", files["train"],
                 "--sparsity", "0.5", "--criterion", "obs", "--allocation", "searched", "--out", str(tmp_path / "x")]) == 2
    assert "--allocation searched" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # every criterion and allocation the pipeline has: the OBS order computed, the sensitivity measured
    searched = tmp_path / "searched"
    assert main(["prune", str(model), "--scores", str(tmp_path / "scores"), "--calibration", files["train"],
                 "--validation", files["val"], "--calibration-reviews", "16", "--search-reviews", "8",
                 "--search-fractions", "0.25", "0.5", "0.75", "--sparsity", "0.5", "--criterion", "obs",
                 "--allocation", "searched", "--compensation", "refit", "--out", str(searched), "--threads", "1"]) == 0
    plan = read_plan(folder_file(searched, "plan"))
    assert (plan.spec.criterion, plan.spec.allocation, plan.spec.compensation) == ("obs", "searched", "refit")
    assert json.loads(capsys.readouterr().out)["target"] == "obs-searched-refit-50"
    assert sum(plan.counts) == sum(dense.adapter.ffn_widths()) // 2
