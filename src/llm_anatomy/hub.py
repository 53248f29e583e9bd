"""Before any compute: can this run get what it needs from the Hugging Face hub?

A profile whose models are `hub:<id>` (the `paper` profile: bert-base-uncased, gpt2) or whose data
source is `hub` would otherwise fine-tune nothing for minutes and then fail deep inside a download.
The Snakefile's `onstart` calls `check_hub`, so a real run (not a dry run) stops before its first
job when a needed repository is neither in the local hub cache nor reachable.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request

from .config import ParamsError, active_profile

TIMEOUT_S = 10


def hub_needs(config: dict) -> list[tuple[str, str]]:
    """(repo type, repo id) of every hub repository the active profile reads."""
    needs = [("model", spec["source"][4:]) for spec in active_profile(config)["models"].values()
             if spec["source"].startswith("hub:")]
    if config["data"]["source"] == "hub":
        needs.append(("dataset", config["data"]["hub_name"]))
    return needs


def cached(repo_type: str, repo_id: str) -> bool:
    """Whether the local hub cache holds the repository (its config.json, or a dataset's README)."""
    from huggingface_hub import try_to_load_from_cache

    filename = "config.json" if repo_type == "model" else "README.md"
    return isinstance(try_to_load_from_cache(repo_id, filename, repo_type=repo_type), str)


def unreachable(repo_type: str, repo_id: str, timeout: float = TIMEOUT_S) -> str | None:
    """None when the hub answers for the repository, else why not."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = f"{constants.ENDPOINT}/api/{repo_type}s/{repo_id}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError as err:
        return f"{url} answered HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return f"{url} is unreachable ({getattr(err, 'reason', err)})"


def check_hub(config: dict) -> None:
    """Raise ParamsError naming every needed hub repository that is neither cached nor reachable."""
    missing = [f"{repo_type} {repo_id}: not in the local hub cache and {why}" for repo_type, repo_id in hub_needs(config)
               if not cached(repo_type, repo_id) and (why := unreachable(repo_type, repo_id))]
    if missing:
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise ParamsError(
            f"profile {config['profile']!r} reads from the Hugging Face hub, and nothing was run:\n  "
            + "\n  ".join(missing)
            + f"\nFix: run where the hub is reachable; or download the repositories once (`hf download <id>`, "
            f"huggingface_hub's CLI) into the cache ({cache}) this machine reads; or run a profile that needs no network "
            "(`offline`: the embedded models and the IMDB mirror)."
        )
