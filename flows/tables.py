"""Plain-text tables and strict JSON for the reports of `l2o compare` and `l2o reproduce`."""

import json
import math
from typing import Any

__all__ = ["MISSING", "grid", "number", "to_json"]

MISSING = "—"  # a value one side lacks


def grid(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """The rows under the header as aligned lines (two-space indent); columns in ``right`` right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in [header, *rows]
    ]


def number(v: float | None, spec: str) -> str:
    """``format(v, spec)``; :data:`MISSING` for None, ``nan`` for NaN."""
    if v is None:
        return MISSING
    if math.isnan(v):
        return "nan"
    return format(v, spec)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """``obj`` as strict, indented JSON: non-finite numbers become the strings "NaN", "Infinity", "-Infinity"."""
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False)
