"""The import graph and source digest that make code edits rerun the rules that run the code."""
from pathlib import Path

from llm_anatomy.provenance import code_digest, module_files


def make_package(root: Path) -> tuple[Path, Path]:
    src = root / "src"
    pkg = src / "llm_anatomy"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from .b import f\nimport numpy\n",
        "b.py": "def f():\n    from .sub import deep\n    return deep\n",
        "c.py": "X = 1\n",  # imported by nobody
        "d.py": "from . import a\n",
        "sub/__init__.py": "from ..c import X\n",
        "sub/deep.py": "Y = 2\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    script = root / "script.py"
    script.write_text("from llm_anatomy.a import f\nimport llm_anatomy.sub.deep as deep\n")
    return script, src


def test_module_files_follow_every_import_of_the_package(tmp_path):
    script, src = make_package(tmp_path)
    got = {str(p.relative_to(src.resolve())) for p in module_files(script, src)}
    # by hand: a (direct), b (from a), sub/__init__ and sub/deep (function-level import in b, and the
    # script's dotted import), c (sub/__init__'s relative import), the package's __init__; not d
    assert got == {"llm_anatomy/__init__.py", "llm_anatomy/a.py", "llm_anatomy/b.py", "llm_anatomy/c.py",
                   "llm_anatomy/sub/__init__.py", "llm_anatomy/sub/deep.py"}


def test_the_digest_changes_with_imported_code_only(tmp_path):
    script, src = make_package(tmp_path)
    before = code_digest.__wrapped__(script, src)
    (src / "llm_anatomy/d.py").write_text("from . import a\nZ = 3\n")  # not imported by the script
    assert code_digest.__wrapped__(script, src) == before
    (src / "llm_anatomy/sub/deep.py").write_text("Y = 3\n")
    edited = code_digest.__wrapped__(script, src)
    assert edited != before
    script.write_text(script.read_text() + "# a comment\n")
    assert code_digest.__wrapped__(script, src) != edited


def test_every_workflow_script_imports_resolve(tmp_path):
    from conftest import ROOT

    for script in sorted((ROOT / "workflow/scripts").glob("*.py")):
        files = module_files(script, ROOT / "src")
        assert files and all(f.is_file() for f in files), script.name
