"""The package's shape: no import cycle, inference apart from pruning, the workflow's load path free of torch,
and one name through the stack (rule `x` -> workflow/scripts/x.py -> the package's `x()`)."""
import ast
import re
import subprocess
import sys

from conftest import ROOT
from llm_anatomy.provenance import import_graph

GRAPH = import_graph(ROOT / "src")


def reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_module_imports_itself_through_others():
    """Imports inside functions count too: a cycle hidden in a function is a cycle of knowledge all the same."""
    cycles = sorted(m for m in GRAPH if m in reachable(m))
    assert not cycles, {m: sorted(GRAPH[m]) for m in cycles}


def test_inference_does_not_import_pruning():
    for module in ("inference", "roofline", "readout", "fused", "models", "adapters", "costs"):
        leaks = sorted(m for m in reachable(f"llm_anatomy.{module}") if m.startswith("llm_anatomy.pruning"))
        assert not leaks, (module, leaks)


def test_every_module_imports_in_a_fresh_interpreter_and_the_workflow_load_path_without_torch():
    """What the Snakefile reads when it loads (params, targets, spec, layout) must not pull in torch (seconds per
    DAG build); every module of the package must import on its own."""
    light = ["llm_anatomy.pipeline", "llm_anatomy.config", "llm_anatomy.layout", "llm_anatomy.provenance"]
    code = (f"import importlib, sys\nfor m in {light}: importlib.import_module(m)\n"
            "assert 'torch' not in sys.modules, sorted(k for k in sys.modules if k.startswith('llm_anatomy'))\n"
            f"for m in {sorted(GRAPH)}: importlib.import_module(m)\nprint('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def rule_scripts() -> dict[str, str]:
    """{rule: its script's name} from workflow/rules/*.smk."""
    out = {}
    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            m = re.match(r"rule (\w+):", block)
            script = re.search(r'script:\s*\n\s*"\.\./scripts/(\w+)\.py"', block)
            if m and script:
                out[m.group(1)] = script.group(1)
    return out


def test_every_rule_runs_the_script_and_the_function_of_its_name():
    scripts = rule_scripts()
    assert len(scripts) >= 20 and all(rule == script for rule, script in scripts.items()), scripts
    assert sorted(p.stem for p in (ROOT / "workflow/scripts").glob("*.py")) == sorted(scripts)  # no orphan script
    for rule in scripts:
        tree = ast.parse((ROOT / f"workflow/scripts/{rule}.py").read_text())
        imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
        assert rule in imported, rule
        assert [ast.unparse(c) for c in calls] == [f"run_rule(snakemake, {rule})"], rule
