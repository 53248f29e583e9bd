"""Which package modules a workflow script runs, and a digest of their source: the workflow passes the
digest to each rule as a parameter, so editing a module reruns exactly the rules whose scripts import
it (Snakemake's params rerun trigger). DVC's stages depend on the whole package instead and leave the
choice to Snakemake.

The import graph is read statically (every `import` statement of a file, also those inside functions,
so the set errs on the side of more modules), following only modules of this package.
"""
from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "llm_anatomy"


def _dotted(src: Path, file: Path) -> str:
    parts = file.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(src: Path, file: Path) -> set[str]:
    """Dotted names of this package's modules (and of names that may be modules) that `file` imports."""
    tree = ast.parse(file.read_text(), filename=str(file))
    is_package = file.name == "__init__.py"
    here = _dotted(src, file) if file.is_relative_to(src) else ""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".") if here else []
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] == PACKAGE:
                names.add(base)
                names.update(f"{base}.{a.name}" for a in node.names)  # `from . import fused`
    return names


def import_graph(src: Path) -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports (module-level or inside functions). A module's
    own parent packages are left out: Python runs them before the module whatever it imports, so `from . import x`
    is an edge to `x` alone, not to the package's `__init__`."""
    src = Path(src).resolve()
    files = {_dotted(src, f): f for f in sorted((src / PACKAGE).rglob("*.py"))}
    return {name: {m for m in _imports(src, file) if m in files and m != name and not name.startswith(f"{m}.")}
            for name, file in files.items()}


def module_files(script: Path, src: Path) -> list[Path]:
    """Every file of the package that running `script` imports, parents' `__init__.py` included, sorted."""
    src, seen, todo = Path(src).resolve(), set(), [Path(script).resolve()]
    while todo:
        file = todo.pop()
        for name in _imports(src, file):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                base = src.joinpath(*parts[:depth])
                found = next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return sorted(seen)


@cache
def code_digest(script: Path, src: Path) -> str:
    """sha256 over the script and every package module it imports (paths relative to `src`, and contents)."""
    script, src = Path(script).resolve(), Path(src).resolve()
    digest = hashlib.sha256(script.read_bytes())
    for file in module_files(script, src):
        digest.update(str(file.relative_to(src)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]
