"""The comparison `l2o reproduce` makes, pure (no MLflow, git or files): metrics within tolerance, the
``dvc.lock`` output hashes, the dependencies that changed, the verdict; and the pipeline run id in `l2o run`'s
output."""

import math
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "DEFAULT_IGNORE",
    "DATA_STAGES",
    "compare_metrics",
    "compare_lock_hashes",
    "changed_deps",
    "verdict",
    "names",
    "pipeline_run_id_from_output",
]

# Wall-clock metrics: "seconds", "evaluate/digits_mlp/seconds", "meta_train/inner_steps_per_second", "*_time"; the
# step costs (flows.timings): "evaluate/digits_mlp/adam/step_us", the pipeline run's "stage_seconds/evaluate" and
# "step_us/learned".
DEFAULT_IGNORE = (r"(seconds|per_second|_time|step_us)$", r"(^|/)(stage_seconds|step_us)/")
# Stages whose outputs are the data: a different hash there means the inputs of the experiment differ.
DATA_STAGES = ("prepare_data",)
_RUN_LINE = re.compile(r"MLflow run ([0-9a-f]{32})")


def _matches(key: str, regexes: list[re.Pattern]) -> bool:
    return any(r.search(key) for r in regexes)


def compare_metrics(
    original: dict[str, float],
    reproduced: dict[str, float],
    rtol: float = 1e-5,
    atol: float = 1e-8,
    ignore: Iterable[str] = DEFAULT_IGNORE,
) -> list[dict[str, Any]]:
    """One row per metric key of either run, sorted by key.

    Args:
        original: ``{key: value}`` of the original run (as `flows.compare.collect_metrics` returns).
        reproduced: the same for the reproduced run.
        rtol: relative tolerance, a fraction of ``|original|``.
        atol: absolute tolerance.
        ignore: regular expressions (``re.search``); a key matching any is not compared.

    Returns:
        Rows ``{"key", "original", "reproduced", "abs_diff", "tolerance", "status"}``; ``status`` is ``ok``
        (``|reproduced - original| <= atol + rtol * |original|``, or both NaN, or both the same infinity),
        ``MISMATCH``, ``missing`` (the reproduction lacks a metric of the original), ``new`` (only the
        reproduction has it: a stage the original pipeline run skipped as up to date; informational) or
        ``ignored``. The value a run lacks is ``None``, as are ``abs_diff`` and ``tolerance`` where nothing was
        compared.

    Raises:
        re.error: a pattern of ``ignore`` is not a regular expression.
    """
    regexes = [re.compile(p) for p in ignore]
    rows = []
    for key in sorted(set(original) | set(reproduced)):
        a, b = original.get(key), reproduced.get(key)
        row = {"key": key, "original": a, "reproduced": b, "abs_diff": None, "tolerance": None}
        if _matches(key, regexes):
            row["status"] = "ignored"
        elif b is None:
            row["status"] = "missing"
        elif a is None:
            row["status"] = "new"
        else:
            a, b = float(a), float(b)
            tol = atol + rtol * abs(a) if math.isfinite(a) else atol
            if a == b or (math.isnan(a) and math.isnan(b)):
                diff = 0.0  # also inf == inf, whose difference would be nan
            else:
                diff = abs(b - a)
            row.update(abs_diff=diff, tolerance=tol, status="ok" if diff <= tol else "MISMATCH")  # nan <= tol: False
        rows.append(row)
    return rows


def _lock_outs(lock: dict) -> dict[tuple[str, str], str | None]:
    """``{(stage, out path): hash}`` of a parsed ``dvc.lock`` (schema 2.0)."""
    outs = {}
    for stage, entry in ((lock or {}).get("stages") or {}).items():
        for out in (entry or {}).get("outs") or []:
            outs[(stage, out["path"])] = out.get("md5") or out.get("etag") or out.get("checksum")
    return outs


def compare_lock_hashes(
    original_lock: dict, reproduced_lock: dict, data_stages: Iterable[str] = DATA_STAGES
) -> list[dict[str, Any]]:
    """One row per stage output of either ``dvc.lock``, in the original's stage order.

    Args:
        original_lock: the original run's ``dvc.lock``, parsed (``yaml.safe_load``).
        reproduced_lock: the reproduction's ``dvc.lock``, parsed.
        data_stages: stages whose outputs must be identical (the data); other outputs are informational.

    Returns:
        Rows ``{"stage", "path", "original", "reproduced", "required", "status"}``: the hashes (md5, ``None`` where
        a lock lacks the output), ``required`` (the stage is a data stage) and ``status``: ``equal``, ``DIFFERENT``
        (a required output differs or is missing) or ``differs`` / ``missing`` (informational).
    """
    data_stages = set(data_stages)
    a, b = _lock_outs(original_lock), _lock_outs(reproduced_lock)
    rows = []
    for stage, path in [*a, *(k for k in b if k not in a)]:
        ha, hb = a.get((stage, path)), b.get((stage, path))
        required = stage in data_stages
        if ha is not None and ha == hb:
            status = "equal"
        elif required:
            status = "DIFFERENT"
        else:
            status = "missing" if ha is None or hb is None else "differs"
        rows.append(
            {"stage": stage, "path": path, "original": ha, "reproduced": hb, "required": required, "status": status}
        )
    return rows


def changed_deps(original_lock: dict, reproduced_lock: dict) -> list[str]:
    """Dependency paths (code, data) whose hash differs between the two locks, e.g. a dirty run's edited code.

    Outputs of a stage that are deps of later stages are left out (`compare_lock_hashes` reports those).
    """

    def deps(lock: dict) -> dict[str, str | None]:
        found = {}
        for entry in ((lock or {}).get("stages") or {}).values():
            for dep in (entry or {}).get("deps") or []:
                found[dep["path"]] = dep.get("md5") or dep.get("etag") or dep.get("checksum")
        return found

    outs = {path for _, path in _lock_outs(original_lock)} | {path for _, path in _lock_outs(reproduced_lock)}
    a, b = deps(original_lock), deps(reproduced_lock)
    return sorted(p for p in set(a) & set(b) if a[p] != b[p] and not any(_under(p, o) for o in outs))


def _under(path: str, out: str) -> bool:
    return path == out or path.startswith(out.rstrip("/") + "/")


def verdict(metric_rows: list[dict], hash_rows: list[dict], failure: str | None = None) -> tuple[bool, str]:
    """Whether the run was reproduced, and the one-line verdict.

    Args:
        metric_rows: `compare_metrics` rows.
        hash_rows: `compare_lock_hashes` rows.
        failure: why the re-run did not finish (then nothing was compared).

    Returns:
        ``(True, "reproduced: N metrics within tolerance, data hashes equal...")`` or ``(False, "NOT reproduced:
        ...")``. A metric beyond tolerance or missing on one side, or a required (data) output that differs,
        fails; other outputs that differ are named but do not fail.
    """
    if failure:
        return False, f"NOT reproduced: {failure}"
    ok = [r for r in metric_rows if r["status"] == "ok"]
    bad = [r for r in metric_rows if r["status"] == "MISMATCH"]
    missing = [r for r in metric_rows if r["status"] == "missing"]
    ignored = sum(r["status"] == "ignored" for r in metric_rows)
    new = sum(r["status"] == "new" for r in metric_rows)
    data_bad = [r for r in hash_rows if r["status"] == "DIFFERENT"]
    other = [r for r in hash_rows if r["status"] in ("differs", "missing")]
    problems = []
    if bad:
        problems.append(f"{len(bad)} metric(s) beyond tolerance ({names([r['key'] for r in bad])})")
    if missing:
        problems.append(f"{len(missing)} metric(s) missing in the reproduction ({names([r['key'] for r in missing])})")
    if data_bad:
        problems.append(f"data hashes differ ({names([r['path'] for r in data_bad])})")
    if not metric_rows and not hash_rows:
        problems.append("nothing to compare (no metrics, no dvc.lock outputs)")
    if problems:
        return False, "NOT reproduced: " + "; ".join(problems) + f" ({len(ok)} metric(s) within tolerance)"
    line = f"reproduced: {len(ok)} metrics within tolerance, data hashes equal"
    extra = []
    if ignored:
        extra.append(f"{ignored} ignored")
    if new:
        extra.append(f"{new} only in the reproduction")
    if other:
        extra.append(f"{len(other)} other output(s) differ, informational: {names([r['path'] for r in other])}")
    return True, line + (f" ({'; '.join(extra)})" if extra else "")


def names(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def pipeline_run_id_from_output(text: str) -> str | None:
    """The pipeline's MLflow run id from `l2o run`'s output (its last line: "...; MLflow run <id>; ...")."""
    found = _RUN_LINE.findall(text)
    return found[-1] if found else None
