"""The Snakemake workflow: dry runs of every profile, and a real run of the tiny profile."""
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT
from llm_anatomy.config import load_params, validate
from llm_anatomy.layout import SCHEMA, Layout, folder_file
from llm_anatomy.pipeline import Pipeline
from llm_anatomy.pruning.latency import LatencyTable
from llm_anatomy.pruning.plan import read_plan
from llm_anatomy.pruning.spec import THRESHOLD, curve_of

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", str(ROOT / "params.yaml")]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *args],
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.parametrize("profile", ["offline", "tiny"])  # paper: on the cluster profile, below
def test_dry_run(tmp_path, profile):
    out = snakemake(tmp_path, "-n", "--config", f"profile={profile}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "finetune" in out.stdout


def test_bad_params_stop_before_any_job(tmp_path):
    """...as one message: Snakemake follows an exception raised while the workflow loads with traceback
    lines, which buried the one line that matters (config.exit_on_params_error)."""
    out = snakemake(tmp_path, "-n", "--config", "profile=nonexistent")
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == ("ParamsError: profile: 'nonexistent' is not defined; choose one of "
                                                   "['offline', 'paper', 'tiny'] (e.g. --config profile=tiny)")
    assert "Traceback" not in out.stderr and 'File "' not in out.stderr and "Job stats" not in out.stdout


def test_a_yaml_syntax_error_in_params_yaml_names_its_line_before_snakemake_loads_it(tmp_path):
    """The workflow's own params.yaml (not --configfile, whose errors Snakemake reports before the Snakefile)."""
    (tmp_path / "params.yaml").write_text("profile: tiny\ndata:\n  source: [mirror\n  mirror_dir: x\n")
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                          str(tmp_path), "-n"], capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith(
        "ParamsError: params.yaml, line 4, column 13: expected ',' or ']', but got ':' (while parsing a flow "
        "sequence at line 3)")
    assert "not valid JSON or YAML" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("target, message", [
    (Layout("tiny").target("tiny-bert", "flap-150").metrics, "flap-150: 150% is outside the valid range 1..99"),
    (Layout("tiny").target("tiny-bert", "flapp-50").metrics,
     "'flapp-50' is not a prune target of tiny-bert (did you mean 'flap-50'?). Its targets in profile tiny: "
     "enc-a0.01-b0.001, enc-a0.025-b0.001, enc-a0.05-b0.001, enc-a0.05-b0.005, enc-a0.05-b0.01, sweep-25, "
     "sweep-50, sweep-75, flap-50, fisher-searched-refit-50, fluctuation-joint-refit-x1.3, fluctuation-heads-refit-x1.3."),
    (Layout("tiny").target("tiny-bert", "fluctuation-joint-refit-x0.9").metrics,
     "fluctuation-joint-refit-x0.9: a speedup of 0.9 is no speedup; give one above 1, e.g. fluctuation-joint-refit-x1.6"),
    (Layout("tiny").pruned("tiny-llama", "flapp-50"), "'flapp-50' is not a prune target of tiny-llama"),
    (Layout("tiny").config_metrics("enc-z"), "'enc-z' is not a configuration under pruning.configs; the DVC metrics "
     "files are results/metrics/<profile>/prune/<name>.json for ['enc-a0.01-b0.001', "),
    ("results/tiny/tiny-bert/lens.cvs", "no rule produces results/tiny/tiny-bert/lens.cvs (did you mean "
     "results/tiny/tiny-bert/anatomy/lens.csv"),  # no rule's pattern: Snakemake 9.15's own message fails
])
def test_a_bad_target_stops_the_plan_with_the_valid_names(tmp_path, target, message):
    """A percentage outside (0, 100) used to plan seven jobs and fail at the plan; a misspelt name gave
    "No rule to produce" (and in Snakemake 9 an AttributeError) with no list of names. The message is the
    last line, not followed by the traceback Snakemake adds to an input function's error."""
    out = snakemake(tmp_path, "-n", "--config", "profile=tiny", "--", target)
    assert out.returncode != 0
    said = out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("TargetError: " + message)
    assert "Traceback" not in said and 'File "' not in said and "Job stats" not in said  # no job planned



def test_a_good_target_spelt_with_a_leading_dot_is_planned(tmp_path):
    """Snakemake matches ./results/... to its rule (os.path.relpath); the check for targets no rule produces
    reads it the same way, not as an unknown file."""
    out = snakemake(tmp_path, "-n", "--config", "profile=tiny", "--", "./" + Layout("tiny").finetune_summary)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TargetError" not in out.stderr and "finetune_summary" in out.stdout

def job_counts(output: str) -> dict[str, int]:
    """{rule: jobs} from Snakemake's "Job stats" table."""
    lines = output.split("Job stats:", 1)[1].splitlines()
    counts = {}
    for line in lines[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def tiny_pipeline() -> Pipeline:
    """The tiny profile of the shipped params.yaml, as the workflow reads it: what the runs below should build."""
    params = load_params(ROOT / "params.yaml")
    params["profile"] = "tiny"
    validate(params, ROOT / SCHEMA, ROOT)
    return Pipeline(params)


def calibration_jobs(pipe: Pipeline) -> dict[str, int]:
    """How many per-model calibration jobs the targets' plans read (once per model, whatever the points)."""
    inputs = {(m, job) for m, t in pipe.targets.pairs() for job in pipe.benchmark_inputs(m, t)}
    return {job: len({m for m, j in inputs if j == f"benchmark_{job}"})
            for job in ("ffn_stats", "mask_gradients", "obs_scores", "layer_sensitivity")}


def test_dense_model_is_evaluated_once_per_model_and_split(tmp_path):
    out = snakemake(tmp_path, "-n", "--config", "profile=tiny")
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = job_counts(out.stdout + out.stderr)
    pipe = tiny_pipeline()
    models = len(pipe.targets.models)
    assert jobs["evaluate_dense"] == models  # the test split only
    assert jobs["ablate"] == models and jobs["flap_allocation_choice"] == len(pipe.choice_files())
    for job, count in calibration_jobs(pipe).items():
        assert jobs.get(job, 0) == (models if job == "ffn_stats" else count), job  # ablate reads every ffn_stats
    for step in ("prune_plan", "materialise", "evaluate_pruned", "time_pruned", "prune_metrics"):
        assert jobs[step] == len(pipe.targets.pairs()), step
    assert jobs["prune_collect"] == len(pipe.targets.named_with_models())


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def repo_copy(repo: Path) -> Path:
    """A git repository holding this checkout's files, its params.yaml set to the tiny profile (the
    mirror's path made absolute): a user's clone. Runs happen inside it, as a user's do, so a copy of
    the whole folder is the same run (input paths inside the checkout are recorded relative to it)."""
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    for rel in tracked:
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    params = (repo / "params.yaml").read_text()
    params = params.replace("\nprofile: offline", "\nprofile: tiny", 1).replace(
        "mirror_dir: ../shared/data/imdb", f"mirror_dir: {(ROOT / '../shared/data/imdb').resolve()}", 1)
    (repo / "params.yaml").write_text(params)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "tiny"], cwd=repo, check=True)
    return repo


def run_in(repo: Path, *cmd: str) -> subprocess.CompletedProcess:
    """`python -m <cmd>` (dvc, snakemake) in `repo`, with this interpreter's tools on PATH."""
    return subprocess.run([sys.executable, "-m", *cmd], cwd=repo, env=ENV, capture_output=True, text=True,
                          timeout=1800)


def run_copy(tiny_run: Path, dest: Path) -> Path:
    """A copy of the finished run's whole folder: checkout, outputs, Snakemake records, git."""
    shutil.copytree(tiny_run, dest, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run of the tiny profile inside a copy of the checkout, shared by the end-to-end,
    kill, code-change and DVC tests."""
    repo = repo_copy(tmp_path_factory.mktemp("tiny-run"))
    first = run_in(repo, "snakemake", "--cores", "2")
    assert first.returncode == 0, (first.stdout + first.stderr)[-5000:]
    return repo


@pytest.mark.slow
def test_tiny_profile_end_to_end(tiny_run):
    tmp_path = tiny_run
    pipe, layout = tiny_pipeline(), Layout("tiny")

    def read(path):
        path = tmp_path / path
        return json.loads(path.read_text()) if path.suffix == ".json" else pd.read_csv(path)

    # every output of the tiny profile lies in its own folders
    metrics, results, data = (Path(p) for p in (layout.metrics.root, layout.results, layout.data))
    assert sorted(p.name for p in (tmp_path / results.parent).iterdir() if not p.name.startswith(".")) == [
        metrics.parent.name, "tiny"]
    assert [p.name for p in (tmp_path / metrics.parent).iterdir()] == [p.name for p in (tmp_path / data.parent).iterdir()]
    assert [p.name for p in (tmp_path / data.parent).iterdir()] == ["tiny"]
    summary = read(layout.finetune_summary)
    assert set(summary) == set(pipe.targets.models)
    for name, metrics in summary.items():
        files = layout.model(name)
        assert metrics["n_val"] == 16 and 0 <= metrics["val_accuracy"] <= 1
        assert (tmp_path / files.finetuned / "model.safetensors").exists()
        assert not (tmp_path / files.checkpoint).parent.exists()
        flap = read(layout.target(name, "flap-50").metrics)
        assert flap["rule"] == "flap" and flap["neurons_pruned"] == flap["neurons_total"] // 2
        assert folder_file(tmp_path / layout.pruned(name, "flap-50"), "pruning").exists()
        assert flap["accuracy_dense_lo"] <= flap["accuracy_dense"] <= flap["accuracy_dense_hi"]
        assert flap["gap_random_lo"] <= flap["gap_random"] <= flap["gap_random_hi"]
        assert (tmp_path / files.ablation).exists() and (tmp_path / files.flap_allocation).exists()
    report = layout.report()
    table = read(report["summary"])
    assert table.groupby("curve")["target"].count().to_dict() == dict(
        collections.Counter(curve_of(t)[0] for _m, t in pipe.targets.pairs()))
    # the registry's methods: searched on validation, fitted on calibration reviews, with their cost
    refit = read(layout.target("tiny-bert", "fisher-searched-refit-50").metrics)
    assert (refit["criterion"], refit["allocation"], refit["compensation"]) == ("fisher", "searched", "refit")
    assert refit["neurons_pruned"] == refit["neurons_total"] // 2 and refit["seconds_point"] > 0
    assert refit["seconds_point"] == refit["seconds_plan"] + refit["seconds_materialise_job"]
    assert refit["accuracy_uncompensated"] is not None and refit["random_seeds"] == [0, 1, 2, 3, 4]
    assert (tmp_path / layout.model("tiny-bert").sensitivity("fisher")).exists()
    assert (tmp_path / layout.model("tiny-llama").obs_scores).exists() and (tmp_path / report["pareto"]).exists()
    frontier = read(report["frontier"])
    assert set(frontier.model) == set(summary) and frontier[["frontier_sparsity", "frontier_speedup"]].any(axis=1).all()
    # speed targets: planned on the run's own latency table, materialised with the plan's heads and widths, reported
    # with their structure and predicted speedup beside the measured one
    speed = [(m, t) for m, t in pipe.targets.pairs() if t in pipe.targets.speed_names(m)]
    assert {t for _m, t in speed} == {"fluctuation-joint-refit-x1.3", "fluctuation-heads-refit-x1.3"}
    for model, target in speed:
        point = read(layout.target(model, target).metrics)
        plan = read_plan(tmp_path / layout.target(model, target).plan)
        latency = LatencyTable.from_dict(read(layout.model(model).latency_table))
        kept = list(zip(plan.table["heads_kept"], plan.table["kv_kept"]))
        widths = (plan.table["width"] - plan.table["masked"]).tolist()
        assert latency.speedup(kept, widths) >= 1.3 - 1e-9 and plan.info.search["latency"]["signature"] == latency.signature
        assert (point["structures"], point["target_speedup"], point["rule"]) == (target.split("-")[1], 1.3, "speed")
        assert point["predicted_speedup"] == plan.info.search["predicted_speedup"] and point["speedup_removed"] > 0
        assert point["heads_pruned"] == sum(map(len, plan.pruned_heads)) and point["objective"] == "margin"
        assert point["test_reviews"] == pipe.targets.sizing(model, target).test_limit  # the headline reviews
        folder = read(Path(layout.pruned(model, target)) / "pruning.json")
        assert folder["attention_heads"] == plan.table["heads_kept"].clip(lower=1).tolist()
        assert folder["ffn_widths"] == [max(w, 1) for w in widths]
        row = table_of(table, model, target)
        assert row["structures"] == point["structures"] and row["predicted_speedup"] == pytest.approx(
            point["predicted_speedup"])
    assert set(frontier.columns) >= {"structures", "target_speedup", "predicted_speedup"}
    # what DVC compares: the headline holds the summary's numbers for every named configuration
    headline = read(report["headline"])
    assert set(headline["dense"]) == set(summary) and set(headline["methods"]) == set(summary)
    named = table[table.curve == "named"]
    assert {t for t in headline if t not in ("dense", "methods")} == set(named.target)
    for row in named.itertuples():
        point = headline[row.target][row.model]
        assert abs(point["accuracy"] - 100 * row.accuracy) < 0.01 and abs(point["pruned_pct"] - row.pruned_pct) < 0.01
    plotted = read(report["plot_accuracy"])
    flaps = sum(1 for _m, t in pipe.targets.pairs() if curve_of(t)[0] == "flap")  # + FLAP's random baseline
    assert list(plotted.columns) == ["series", "pruned_pct", "accuracy"] and len(plotted) == len(table) + flaps
    comparisons = read(report["comparisons"])
    assert {"flap-50", "flap-50 uncompensated", "sweep-gain-50"} <= set(comparisons["a"])
    # every verdict follows its family-adjusted p-value (stats.FAMILIES), which sits beside the raw one
    words = {"higher", "lower", "no detectable difference"}
    for df, gap, said in ((table, "gap_dense", "gap_dense_verdict"), (table, "gap_random", "gap_random_verdict"),
                          (comparisons, "gap", "verdict")):
        cols = list(df.columns)
        assert cols[cols.index(f"{gap}_p") + 1] == f"{gap}_p_adj" and (df[f"{gap}_p_adj"] >= df[f"{gap}_p"] - 1e-12).all()
        assert set(df[said]) <= words
        assert ((df[f"{gap}_p_adj"] < 0.05) == (df[said] != "no detectable difference")).all()
    second = run_in(tmp_path, "snakemake", "--cores", "2")
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout + second.stderr
    # a parameter reruns only what reads it: the anatomy threshold leaves the scores and every prune
    # job alone; FLAP's plans do not read k (focus_multiplier), the threshold rules' 28 plans do
    out = run_in(tmp_path, "snakemake", "-n", "--cores", "2", "--config", "anatomy={threshold: 0.3}")
    jobs = job_counts(out.stdout + out.stderr)
    assert jobs["neuron_sets"] == len(pipe.targets.models)
    assert not {"score", "prune_plan", "evaluate_pruned", "time_pruned"} & set(jobs)
    out = run_in(tmp_path, "snakemake", "-n", "--cores", "2", "--config", "pruning={focus_multiplier: 2}")
    jobs = job_counts(out.stdout + out.stderr)
    threshold_rules = [t for m, t in pipe.targets.pairs() if pipe.targets.spec(m, t).allocation == THRESHOLD]
    assert jobs["prune_plan"] == len(threshold_rules) and "flap_allocation_choice" not in jobs


def table_of(df: pd.DataFrame, model: str, target: str) -> pd.Series:
    """The one row of a report table for (model, target)."""
    rows = df[(df.model == model) & (df.target == target)]
    assert len(rows) == 1, (model, target, len(rows))
    return rows.iloc[0]


def test_the_conda_environment_lists_the_package_dependencies():
    """`--sdm conda` builds workflow/envs/llm-anatomy.yaml: the same requirements as pyproject.toml."""
    import tomllib

    import yaml

    env = yaml.safe_load((ROOT / "workflow/envs/llm-anatomy.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # all of them but DVC, which drives the workflow from outside and never runs inside a job
    assert [r for r in pip if not r.startswith("--")] == [r for r in declared if not r.startswith("dvc")]


def test_nested_config_overrides_are_read_as_yaml(tmp_path):
    """--config values nested in a mapping reach the params as numbers, so the schema judges the value."""
    good = snakemake(tmp_path, "-n", "--config", "profile=tiny", "anatomy={threshold: 0.5}")
    assert good.returncode == 0, good.stderr[-3000:]
    bad = snakemake(tmp_path, "-n", "--config", "profile=tiny", "anatomy={threshold: 1.5}")
    assert bad.returncode != 0 and "anatomy.threshold: 1.5 is greater than the maximum of 1" in bad.stderr + bad.stdout


def test_dvc_stages_chain_data_finetune_anatomy_prune_results():
    """`dvc dag`: each stage depends on the one before it (through the Snakemake target it outputs under
    results/metrics/<profile>/, llm_anatomy.layout), not every stage on `data` alone."""
    dag = subprocess.run([sys.executable, "-m", "dvc", "dag", "--dot"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert dag.returncode == 0, dag.stderr[-3000:]
    edges = {tuple(n.strip().strip('";') for n in line.split("->")) for line in dag.stdout.splitlines() if "->" in line}
    upstream = {}
    for a, b in edges:
        upstream.setdefault(b, set()).add(a)
    prune = {s for s in upstream if s.startswith("prune@")}
    assert len(prune) == 12
    assert upstream["finetune"] == {"data"} and upstream["anatomy"] == {"data", "finetune"}
    assert all(upstream[s] == {"data", "anatomy"} for s in prune)
    assert upstream["results"] == {"data"} | prune


def test_dvc_stages_find_the_venvs_snakemake_without_activation():
    """The README runs `.venv/bin/dvc exp run`, which leaves .venv/bin off PATH; each stage's command puts it
    first, so its `snakemake` resolves with nothing on PATH but the system's."""
    import yaml
    if not (ROOT / ".venv/bin/snakemake").exists():
        pytest.skip("no .venv here (make run / make test create it)")
    prefix = yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"][0]["snakemake"]
    assert prefix.endswith(" snakemake --cores all")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert all(stage["cmd"].startswith("${snakemake}") for stage in stages.values())
    run = subprocess.run(["sh", "-c", prefix.replace(" --cores all", " --version")], cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip()[:1].isdigit(), run.stderr[-2000:]


# (target to rebuild, outputs removed first, a file that exists only once the job is under way)
_T = Layout("tiny")
_SPEED = _T.target("tiny-bert", "fluctuation-joint-refit-x1.3")
KILL_POINTS = {
    "finetune": (_T.model("tiny-bert").finetune_metrics, [_T.model("tiny-bert").finetuned,
                                                          _T.model("tiny-bert").finetune_metrics],
                 _T.model("tiny-bert").checkpoint),
    "extract": (_T.model("tiny-gpt2").hidden, list(_T.model("tiny-gpt2").files("hidden", "ffn", "inputs").values()),
                _T.log("tiny-gpt2", "extract")),
    "statistics": (_T.model("tiny-llama").ffn_stats, [_T.model("tiny-llama").ffn_stats], _T.log("tiny-llama", "ffn_stats")),
    "evaluate": (_T.target("tiny-llama", "flap-50").eval("test"),
                 [_T.target("tiny-llama", "flap-50").eval("test"), _T.target("tiny-llama", "flap-50").baselines("test")],
                 _T.log("tiny-llama", "prune", "flap-50", "evaluate_test")),
    # a speed target's plan follows the latency table, a timing: the copy keeps the run's table file, so the plan,
    # the folder and the evaluation after the kill are the same as the uninterrupted run's, exactly
    "speed": (_SPEED.eval("test"), [_SPEED.plan, _T.pruned("tiny-bert", "fluctuation-joint-refit-x1.3"), _SPEED.eval("test")],
              _T.log("tiny-bert", "prune", "fluctuation-joint-refit-x1.3", "materialise")),
}
TIMING_KEYS = ("seconds", "per_second", "resumed_from_step")


# Two processes need not agree to the last bit: on one CI machine the tiny GPT-2's calibration statistics, and so
# flap-50's thresholds, differed at 3e-6 relative between the pipeline and the command line (same inputs, sizes and
# threads). Floats are compared to this relative tolerance; everything discrete (names, counts, masks) exactly.
RTOL, ATOL = 1e-4, 1e-9


def _same_output(a: Path, b: Path, skip_keys: tuple[str, ...] = TIMING_KEYS) -> None:
    """Equal content up to float noise (RTOL), timings and run metadata aside (JSON keys containing any of
    `skip_keys`)."""
    if a.is_dir():
        # Snakemake marks a directory output with .snakemake_timestamp; it is not part of the folder's content
        names = [sorted(p.name for p in d.iterdir() if not p.name.startswith(".snakemake")) for d in (a, b)]
        assert names[0] == names[1], a
        for child in (p for p in a.iterdir() if not p.name.startswith(".snakemake")):
            _same_output(child, b / child.name, skip_keys)
    elif a.suffix == ".parquet":
        x, y = pd.read_parquet(a), pd.read_parquet(b)
        pd.testing.assert_index_equal(x.columns, y.columns)
        for col in x.columns:  # floats to RTOL; integers, masks and names exactly
            tolerance = dict(rtol=RTOL, atol=ATOL) if pd.api.types.is_float_dtype(x[col]) else {}
            pd.testing.assert_series_equal(x[col], y[col], check_exact=not tolerance, **tolerance)
    elif a.suffix == ".safetensors":
        import torch
        from safetensors.torch import load_file
        x, y = load_file(a), load_file(b)
        assert x.keys() == y.keys(), a
        for k in x:
            exact = not (x[k].is_floating_point() and y[k].is_floating_point())
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, (a, k)
            assert bool((x[k] == y[k]).all()) if exact else torch.allclose(x[k], y[k], rtol=RTOL, atol=ATOL), (a, k)
    elif a.suffix == ".json":
        _same_json(json.loads(a.read_text()), json.loads(b.read_text()), skip_keys, str(a))


def _same_json(x, y, skip_keys: tuple[str, ...], where: str) -> None:
    if isinstance(x, dict):
        keep = [k for k in x if not any(t in k for t in skip_keys)]
        assert isinstance(y, dict) and sorted(keep) == sorted(k for k in y if not any(t in k for t in skip_keys)), where
        for k in keep:
            _same_json(x[k], y[k], skip_keys, f"{where}: {k}")
    elif isinstance(x, list):
        assert isinstance(y, list) and len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _same_json(u, v, skip_keys, f"{where}[{i}]")
    elif isinstance(x, float) or isinstance(y, float):
        assert isinstance(y, (int, float)) and y == pytest.approx(x, rel=RTOL, abs=ATOL, nan_ok=True), (where, x, y)
    else:
        assert x == y, (where, x, y)


@pytest.mark.slow
@pytest.mark.parametrize("model,target", [("tiny-gpt2", "flap-50"), ("tiny-bert", "fisher-searched-refit-50"),
                                          ("tiny-llama", "obs-uniform-rescale-50")])
def test_the_command_line_prunes_as_the_pipeline_does(tiny_run, tmp_path, model, target):
    """`llm-anatomy prune` calls the rules' stage functions: given the tiny run's fine-tuned model, scores, splits
    and the profile's sizes, it writes the folder the pipeline's target wrote (and the same plan)."""
    pipe, layout = tiny_pipeline(), Layout("tiny")
    spec, sizing, files = pipe.targets.spec(model, target), pipe.targets.sizing(model, target), layout.model(model)
    methods = pipe.targets.pruning["methods"]
    out = tmp_path / "cli"
    args = ["prune", files.finetuned, "--scores", files.root, "--calibration", layout.split("train"),
            "--validation", layout.split("val"), "--sparsity", str(spec.target),
            "--criterion", "flap" if spec.alias == "flap" else spec.criterion, "--allocation", spec.allocation,
            "--compensation", spec.compensation, "--ridge", str(methods["ridge"]),
            "--readout-ridge", str(methods["readout_ridge"]), "--search-fractions", *map(str, methods["search_fractions"]),
            "--calibration-reviews", str(sizing.calibration_reviews), "--search-reviews", str(sizing.search_reviews),
            "--calibration-batch-size", str(sizing.calibration_batch_size), "--batch-size", str(sizing.batch_size),
            "--threads", "2", "--device", "cpu", "--out", str(out)]
    run = run_in(tiny_run, "llm_anatomy.cli", *args)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["target"] == target
    pipeline_folder = tiny_run / layout.pruned(model, target)
    plan = folder_file(out, "plan").rename(tmp_path / folder_file(out, "plan").name)  # the CLI keeps its plan there
    _same_output(out, pipeline_folder)
    _same_output(plan, tiny_run / layout.target(model, target).plan)


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_rerun_gives_the_uninterrupted_outputs(tiny_run, tmp_path, point):
    target, outputs, under_way = KILL_POINTS[point]
    work = run_copy(tiny_run, tmp_path / "work")
    for rel in outputs:
        path = work / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (work / under_way).unlink(missing_ok=True)  # the first run's log: the marker must be this job's
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", target], cwd=work, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (work / under_way).exists():  # a job's log file is created when its script starts
        assert proc.poll() is None, f"{point}: the job ended before it could be killed"
        assert time.monotonic() < deadline, f"{point}: {under_way} never appeared"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and the job, as a lost node would
    proc.wait()
    # the documented recovery (docs/WORKFLOW.md, "After a hard kill"), then the same command
    assert run_in(work, "snakemake", "--unlock", "--cores", "1").returncode == 0
    rerun = run_in(work, "snakemake", "--cores", "2", target)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    for rel in outputs:
        _same_output(work / rel, tiny_run / rel)


@pytest.mark.slow
def test_kill_9_inside_a_dvc_stage_then_rerun_gives_the_uninterrupted_outputs(tiny_run, tmp_path):
    """`dvc repro finetune` killed while its Snakemake fine-tunes, then the documented recovery."""
    repo = run_copy(tiny_run, tmp_path / "repo")
    first = run_in(repo, "dvc", "repro", "data")  # recorded; its Snakemake target is up to date
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    _, outputs, under_way = KILL_POINTS["finetune"]
    outputs = [*outputs, Layout("tiny").finetune_summary]  # the stage's target, so the job is needed
    for rel in outputs:
        path = repo / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "finetune"], cwd=repo, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (repo / under_way).exists():
        assert proc.poll() is None, "dvc repro ended before its Snakemake job could be killed"
        assert time.monotonic() < deadline, f"{under_way} never appeared"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # DVC, its Snakemake and the job
    proc.wait()
    unlock = run_in(repo, "snakemake", "--unlock", "--cores", "1")
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    rerun = run_in(repo, "dvc", "repro", "finetune")
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert "resumed" in (repo / _T.log("tiny-bert", "finetune")).read_text()  # from the killed run's checkpoint
    for rel in outputs:
        _same_output(repo / rel, tiny_run / rel)
    status = run_in(repo, "dvc", "status", "finetune")
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout


@pytest.mark.slow
def test_editing_a_module_reruns_the_rules_that_import_it(tiny_run, tmp_path):
    repo = run_copy(tiny_run, tmp_path / "repo")
    assert "Nothing to be done" in run_in(repo, "snakemake", "-n", "--cores", "1").stdout
    rules = repo / "src/llm_anatomy/pruning/rules.py"
    original = rules.read_text()
    rules.write_text(original.replace("def ", "def _edited():\n    pass\n\n\ndef ", 1))
    out = run_in(repo, "snakemake", "-n", "--cores", "1")
    jobs = job_counts(out.stdout + out.stderr)
    # the scripts importing llm_anatomy.pruning.rules (llm_anatomy.provenance): plans, materialised
    # folders, their evaluation and timing, metrics and the report; not the fine-tune or the anatomy
    targets = len(tiny_pipeline().targets.pairs())
    assert jobs["prune_plan"] == jobs["materialise"] == jobs["evaluate_pruned"] == targets, jobs
    assert jobs["prune_report"] == 1
    assert not {"split_data", "finetune", "extract", "score", "neuron_sets", "ablate", "evaluate_dense",
                "ffn_stats"} & set(jobs), jobs
    rules.write_text(original)  # the same code again: nothing to rerun
    assert "Nothing to be done" in run_in(repo, "snakemake", "-n", "--cores", "1").stdout


@pytest.mark.slow
def test_dvc_pull_in_a_fresh_clone_leaves_nothing_to_do(tiny_run, tmp_path):
    repo = run_copy(tiny_run, tmp_path / "repo")
    remote = tmp_path / "remote"
    # the documented setting: where the shared remote lives (docs/WORKFLOW.md, "Sharing results")
    assert run_in(repo, "dvc", "remote", "modify", "--local", "local", "url", str(remote)).returncode == 0
    repro = run_in(repo, "dvc", "repro")  # records every stage; Snakemake has nothing to compute
    assert repro.returncode == 0, (repro.stdout + repro.stderr)[-4000:]
    assert "Nothing to be done" in repro.stdout + repro.stderr
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "tiny results"], cwd=repo, check=True)
    push = run_in(repo, "dvc", "push")
    assert push.returncode == 0, (push.stdout + push.stderr)[-4000:]

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    missing = run_in(clone, "llm_anatomy.cli", "pull")  # the committed default remote is not there from here
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "dvc remote modify" in missing.stderr
    assert run_in(clone, "dvc", "remote", "modify", "--local", "local", "url", str(remote)).returncode == 0
    pull = run_in(clone, "llm_anatomy.cli", "pull")  # the documented command: dvc pull, then snakemake --touch
    assert pull.returncode == 0, (pull.stdout + pull.stderr)[-4000:]
    _same_output(clone / Layout("tiny").metrics.root, tiny_run / Layout("tiny").metrics.root)
    dry = run_in(clone, "snakemake", "-n", "--cores", "1")
    assert "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]


# The cluster path (docs/WORKFLOW.md, "SLURM"): a tiny-profile subset on a real one-node SLURM cluster that
# reaches every kind of rule (split, fine-tune, extract, score, statistics, gradients, sensitivity, plan,
# materialise with a fitted compensation, evaluate, time, metrics, collect). Four named configurations read
# only the scores, so their chains are ready together; packed two per submission, two submissions hold
# only those, whatever the packing order: the per-job timing lock must let both run at once.
SLURM_TARGETS = [_T.config_metrics(c)
                 for c in ("enc-a0.01-b0.001", "enc-a0.025-b0.001", "enc-a0.05-b0.001", "enc-a0.05-b0.005")]
SLURM_TARGETS.append(_T.target("tiny-bert", "fisher-searched-refit-50").metrics)
SLURM_RUN = ["snakemake", "--profile", "profiles/slurm-local", "--jobs", "6",
             "--group-components", "prune_target=2", "--slurm-init-seconds-before-status-checks", "1",
             "--seconds-between-status-checks", "2", *SLURM_TARGETS]
CHAIN = ("prune_plan", "materialise", "evaluate_pruned", "time_pruned", "prune_metrics")
# Measurements of this run rather than results: wall-clock times and what is computed from them (speedups
# and their spreads, roofline rates and fractions), and whether a fine-tune resumed. Benchmark TSVs are
# Snakemake's time and memory records and are not compared at all.
MEASURED_KEYS = (*TIMING_KEYS, "times_s", "time_dense_s", "time_zeroed_s", "time_removed_s", "speedup_zeroed",
                 "speedup_removed", "roofline")


def slurm_env(state: Path) -> dict:
    return {**ENV, "SLURM_CONF": str(state / "slurm.conf"), "PATH": f"{state / 'bin'}{os.pathsep}{ENV['PATH']}"}


def own_lines(log: str) -> list[str]:
    """The lines of a Snakemake log without the logs of failed jobs it shows (`show-failed-logs`): a failed
    SLURM job's log is another Snakemake's output, with its own job and group lines."""
    lines, own, rule = log.splitlines(), [], "=" * 80
    i = 0
    while i < len(lines):
        if lines[i].startswith("Logfile ") and lines[i + 1:i + 2] == [rule]:
            i = next((j for j in range(i + 2, len(lines)) if lines[j] == rule), len(lines)) + 1
            continue
        own.append(lines[i])
        i += 1
    return own


def slurm_jobs(log: str) -> dict:
    """What a Snakemake `--executor slurm` log says ran where: SLURM job ids per submission, top-level rules
    by job id, group jobs, the jobs run locally, and line numbers for ordering."""
    lines = own_lines(log)
    submitted = {m[1]: (m[2], i) for i, line in enumerate(lines)
                 if (m := re.match(r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", line))}
    rules, local, groups = {}, {}, 0
    for i, line in enumerate(lines):
        if m := re.match(r"(local)?rule (\w+):$", line):  # top level: not a member of a group job
            jobid = next(re.match(r"\s+jobid: (\d+)", x)[1] for x in lines[i:] if re.match(r"\s+jobid: ", x))
            (local if m[1] else rules)[jobid] = m[2]
        groups += bool(re.search(r"\] Group job prune_target ", line))
    finished = [(i, m[1]) for i, line in enumerate(lines) if (m := re.match(r"Finished jobid: \S+ \(Rule: (\w+)\)", line))]
    group_slurm = [(slurm, i) for job, (slurm, i) in submitted.items() if job not in rules]
    return dict(submitted=submitted, rules=rules, local=local, groups=groups, group_slurm=group_slurm,
                finished=finished)


def cancel_a_group_job_mid_run(repo: Path, env: dict, proc: subprocess.Popen, run_log: Path) -> Path:
    """scancel a running prune_target job once one of its steps has finished inside it; its SLURM log (named
    by its SLURM id)."""
    deadline = time.monotonic() + 1500
    while True:
        assert proc.poll() is None, f"the run ended before a group job could be cancelled:\n{run_log.read_text()[:3000]}"
        assert time.monotonic() < deadline, "no group job ran a step within 25 minutes"
        for slurm_log in (repo / ".snakemake/slurm_logs").glob("group_prune_target*/**/*.log"):
            if "Finished jobid" in slurm_log.read_text(errors="replace"):
                state = subprocess.run(["squeue", "-h", "-j", slurm_log.stem, "-o", "%T"], env=env,
                                       capture_output=True, text=True).stdout.strip()
                if state == "RUNNING":
                    subprocess.run(["scancel", slurm_log.stem], env=env, check=True)
                    return slurm_log
        time.sleep(0.5)


@pytest.mark.slow
def test_slurm_run_with_a_cancelled_job_equals_the_local_run(tiny_run, local_slurm, tmp_path):
    env = slurm_env(local_slurm)
    repo = repo_copy(tmp_path / "repo")
    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", *SLURM_RUN], cwd=repo, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        slurm_log = cancel_a_group_job_mid_run(repo, env, proc, tmp_path / "first.log")
        assert proc.wait(timeout=1800) != 0  # the cancelled job failed the run; the jobs running then finished
    cancelled, first = slurm_log.stem, (tmp_path / "first.log").read_text()
    # a group job failed, and the cancelled job's SLURM log says SLURM cancelled it (read from the file: how
    # much of it the run's own log repeats depends on Snakemake's version)
    assert "Error in group prune_target" in first, first[-4000:]
    assert re.search(rf"JOB {cancelled} ON \S+ CANCELLED AT", slurm_log.read_text(errors="replace")), first[-4000:]
    rerun = subprocess.run([sys.executable, "-m", *SLURM_RUN], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=1800)
    second = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, second[-5000:]

    runs = [slurm_jobs(first), slurm_jobs(second)]
    ran = set()
    for run in runs:
        # every job outside a group is a SLURM job of its own, every group job one SLURM job, the rest local
        assert all(job in run["submitted"] for job in run["rules"]), (run["rules"], run["submitted"])
        assert len(run["group_slurm"]) == run["groups"]
        assert set(run["local"].values()) <= {"prune_collect"}
        ran |= set(run["rules"].values()) | {rule for _, rule in run["finished"]}
    assert ran >= {"split_data", "finetune", "extract", "score", "evaluate_dense", "ffn_stats", "mask_gradients",
                   "layer_sensitivity", *CHAIN, "prune_collect"}, ran
    # the rerun redid what the cancelled job left, not its finished inputs
    assert not {"split_data", "finetune", "extract", "score", "evaluate_dense"} & set(runs[1]["rules"].values())
    # the SLURM ids are the cluster's: each job finished there (the cancelled one cancelled)
    ids = [slurm for run in runs for slurm, _ in run["submitted"].values()]
    assert len(ids) == len(set(ids))
    states = dict(line.split() for line in subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i %T", "-j", ",".join(ids)], env=env, capture_output=True, text=True,
        check=True).stdout.splitlines())
    assert states == {i: "CANCELLED" if i == cancelled else "COMPLETED" for i in ids}, states
    # two group jobs were submitted before any group finished: the timing lock is per job, not per cluster
    first_chain_done = min(i for i, rule in runs[0]["finished"] if rule in CHAIN)
    assert sorted(i for _, i in runs[0]["group_slurm"])[1] < first_chain_done

    compared = 0
    for path in [p for folder in (_T.results, _T.metrics.root, _T.data) for p in sorted((repo / folder).rglob("*"))]:
        rel = path.relative_to(repo)
        if path.is_file() and "benchmarks" not in rel.parts:
            _same_output(path, tiny_run / rel, MEASURED_KEYS)
            compared += 1
        elif path.is_dir() and (path.name == "finetuned" or rel.parent.parent.name == "pruned"):  # folder outputs
            assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in (tiny_run / rel).iterdir())
    assert compared > 60, compared


def test_paper_profile_on_slurm_is_a_few_hundred_cluster_jobs(tmp_path):
    """The documented cluster command plans: the executor plugin is installed and the profiles parse; each
    target's chain is one group job, ten chains per submission; the trivial rules run locally."""
    out = snakemake(tmp_path, "-n", "--profile", str(ROOT / "profiles/slurm"), "--config", "profile=paper")
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    jobs = job_counts(text)
    chains = jobs["prune_plan"]
    assert chains > 1000 and all(jobs[step] == chains for step in CHAIN), jobs
    groups = text.count("] Group job prune_target ")
    assert groups == -(-chains // 10)
    local = sum(jobs.get(rule, 0) for rule in ("all", "finetune_summary", "prune_collect"))
    submissions = groups + jobs["total"] - len(CHAIN) * chains - local
    assert submissions <= 300, submissions
