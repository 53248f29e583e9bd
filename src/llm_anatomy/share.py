"""Results shared through DVC's remote: `llm-anatomy pull` in a clone restores every output of a
pushed run, then marks them up to date for Snakemake, so `snakemake -n` has nothing to do.

Where the remote lives is DVC's setting: the committed default (`.dvc/config`, a folder beside the
clone) or one's own, `dvc remote modify --local local url <path or s3://...>` (docs/WORKFLOW.md,
"Sharing results"). A local-folder remote that does not exist is named before DVC runs; DVC's own
message for it ("Checkout failed for following targets") points at the workspace instead.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")


def _run(repo: Path, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *cmd], cwd=repo, capture_output=True, text=True, check=False)


def check_remote(repo: Path) -> str:
    """The url of the repository's default DVC remote (local folders' absolute), after checking that a
    local-folder remote exists."""
    answer = _run(repo, "dvc", "remote", "default")
    name = answer.stdout.strip() if answer.returncode == 0 else ""
    if not name:
        raise ValueError(f"{repo}: no default DVC remote. Add one: `dvc remote add -d shared <path or url>`")
    # `dvc remote list` wraps long urls at the terminal width; `dvc config` prints one tab-separated line
    answer = _run(repo, "dvc", "config", "--show-origin", f"remote.{name}.url")
    if answer.returncode != 0 or not answer.stdout.strip():
        raise ValueError(f"{repo}: the default DVC remote {name!r} has no url; set one: "
                         f"`dvc remote modify --local {name} url <path or url>`")
    url = answer.stdout.strip().split("\t")[-1]
    local = url[len("file://"):] if url.startswith("file://") else None if SCHEME.match(url) else url
    if local is not None and not Path(local).is_dir():
        raise FileNotFoundError(
            f"DVC remote {name!r} is {local}, which does not exist. Point it at the shared folder (or a cloud "
            f"url): `dvc remote modify --local {name} url <path>` (docs/WORKFLOW.md, \"Sharing results\")")
    return url


def pull(repo: Path = Path("."), jobs: int | None = None) -> dict:
    """`dvc pull`, then `snakemake --touch`: the pulled files get times in the workflow's order, so
    Snakemake (which has no record of runs made elsewhere) sees every output as up to date."""
    repo = Path(repo)
    if not (repo / ".dvc").is_dir():
        raise ValueError(f"--repo {repo}: not a clone of this project (no .dvc folder); run `llm-anatomy pull` "
                         "inside the clone, or pass --repo <clone>")
    url = check_remote(repo)
    pulled = _run(repo, "dvc", "pull", *([f"--jobs={jobs}"] if jobs else []))
    if pulled.returncode != 0:
        raise RuntimeError(f"dvc pull from {url} failed:\n{(pulled.stdout + pulled.stderr)[-3000:]}")
    touched = _run(repo, "snakemake", "--touch", "--cores", "1")
    if touched.returncode != 0:
        raise RuntimeError(f"snakemake --touch after the pull failed:\n{touched.stderr[-3000:]}")
    return dict(remote=url, pulled=pulled.stdout.strip().splitlines()[-1:] or [""])
