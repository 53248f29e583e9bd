"""Strict JSON: what every writer of the package produces parses with a strict parser; unreadable
intermediates are moved aside and named."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from llm_anatomy.io import NULL_REASONS, write_json


def _strict_load(text: str):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


def test_non_finite_numbers_become_null_with_a_reason(tmp_path):
    obj = {"spearman": {"cosine": float("nan"), "activation": 0.3}, "ratio": np.float32("inf"),
           "curve": [1.0, -math.inf, np.float64(2.5)], "n": np.int64(3)}
    write_json(tmp_path / "x.json", obj)
    out = _strict_load((tmp_path / "x.json").read_text())
    assert out["spearman"] == {"cosine": None, "activation": 0.3}
    assert out["ratio"] is None and out["curve"] == [1.0, None, 2.5] and out["n"] == 3
    assert set(out[NULL_REASONS]) == {"spearman.cosine", "ratio", "curve[1]"}
    assert out[NULL_REASONS]["spearman.cosine"].startswith("NaN") and out[NULL_REASONS]["ratio"] == "inf"
    assert obj["spearman"]["cosine"] != obj["spearman"]["cosine"]  # the caller's object is left as it was


def test_finite_objects_are_written_unchanged(tmp_path):
    obj = {"a": [1, 2.5, None], "b": {"c": "text"}}
    write_json(tmp_path / "y.json", obj)
    assert _strict_load((tmp_path / "y.json").read_text()) == obj


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_the_strict_parser_rejects_what_python_writes_by_default(bad):
    with pytest.raises(ValueError):  # the fault this guards against
        _strict_load(json.dumps({"x": bad}))


def _truncate(path, keep: int = 20):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize("reader", ["parquet", "plan", "logits", "split", "json"])
def test_an_unreadable_intermediate_is_moved_aside_and_named(tmp_path, reader):
    from llm_anatomy.data import read_split
    from llm_anatomy.io import UnreadableFile, read_json, read_parquet, write_json, write_parquet
    from llm_anatomy.logits import logits_frame, read_logits, write_logits
    from llm_anatomy.pruning.plan import read_plan

    path = tmp_path / ("x.json" if reader == "json" else "x.parquet")
    if reader == "json":
        write_json(path, {"a": 1})
    elif reader == "logits":
        write_logits(logits_frame(np.array([0.5, -1.0]), pd.Series([1, 0])), path, {"model": "m"})
    else:
        write_parquet(pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}), path)
    read = {"parquet": read_parquet, "plan": read_plan, "logits": read_logits, "split": read_split,
            "json": read_json}[reader]
    keep = 5 if reader == "json" else 20
    _truncate(path, keep)
    with pytest.raises(UnreadableFile, match=rf"{path} cannot be read .*moved it to {path}\.unreadable-.*Rerun Snakemake"):
        read(path)
    assert not path.exists()  # gone, so Snakemake reruns the rule that writes it
    aside = list(tmp_path.glob("x.*.unreadable-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == keep  # kept as it was, for inspection


def test_a_missing_column_is_not_corruption(tmp_path):
    from llm_anatomy.io import read_parquet, write_parquet

    path = tmp_path / "scores.parquet"
    write_parquet(pd.DataFrame({"layer": [0], "neuron": [1]}), path)
    with pytest.raises(ValueError, match=r"has no column\(s\) \['score'\]"):
        read_parquet(path, columns=["layer", "score"])
    assert path.exists()
    with pytest.raises(FileNotFoundError):
        read_parquet(tmp_path / "absent.parquet")
