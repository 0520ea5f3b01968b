"""Strict JSON in every stage output (issue 20): no bare NaN/Infinity tokens, which strict parsers reject;
non-finite numbers are null plus a ``<key>_nonfinite`` flag, and ``read_json`` gives the numbers back."""

import json
import math

import pytest

from components.stages.common import atomic_write_json, read_json, strict_json


def _strict_load(text: str):
    def refuse(token):
        raise ValueError(f"bare {token} in the file")

    return json.loads(text, parse_constant=refuse)  # what a strict parser (e.g. JavaScript's JSON.parse) accepts


def test_non_finite_numbers_are_null_with_a_flag_and_read_back(tmp_path):
    doc = {
        "speedup": float("nan"),
        "ratio": float("-inf"),
        "fine": 1.5,
        "missing": None,
        "curve": [[0, 2.3], [10, float("inf")], [20, float("nan")]],
        "optimizers": {"learned": {"final_loss": float("inf"), "per_seed": [0.5, float("nan")]}},
        "rows": [{"loss": float("nan")}, {"loss": 0.1}],
    }
    path = tmp_path / "metrics.json"
    atomic_write_json(path, doc)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    raw = _strict_load(text)
    assert raw["speedup"] is None and raw["speedup_nonfinite"] == "nan" and raw["ratio_nonfinite"] == "-inf"
    assert raw["curve"][1] == [10, None] and raw["curve_nonfinite"] == {"1.1": "inf", "2.1": "nan"}
    assert raw["optimizers"]["learned"]["final_loss_nonfinite"] == "inf"
    assert raw["optimizers"]["learned"]["per_seed_nonfinite"] == {"1": "nan"}
    assert raw["rows"][0] == {"loss": None, "loss_nonfinite": "nan"} and "fine_nonfinite" not in raw
    back = read_json(path)
    assert set(back) == set(doc) and back["missing"] is None and back["fine"] == 1.5
    assert math.isnan(back["speedup"]) and back["ratio"] == -math.inf and back["curve"][1] == [10, math.inf]
    assert math.isnan(back["curve"][2][1]) and back["optimizers"]["learned"]["final_loss"] == math.inf
    assert math.isnan(back["rows"][0]["loss"]) and back["rows"][0].keys() == {"loss"}


def test_a_top_level_non_finite_value_is_refused_rather_than_written_loosely():
    with pytest.raises(ValueError, match="top-level"):
        strict_json([1.0, float("nan")])
    assert strict_json([{"a": float("nan")}]) == [{"a": None, "a_nonfinite": "nan"}]
