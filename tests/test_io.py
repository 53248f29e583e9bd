"""Strict JSON: what every writer of the package produces parses with a strict parser."""
import json
import math

import numpy as np
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
