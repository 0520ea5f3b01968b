"""`l2o compare RUN_A RUN_B`: the metric differences (B - A) between two MLflow runs, with the params that differ.

A pipeline run (the parent run of one ``l2o run``) is compared together with its stage runs (the runs tagged
``mlflow.parentRunId`` = its id): a child's metrics are keyed ``<stage>/<metric>`` (the child's ``l2o.stage`` tag,
else its run name), the run's own metrics keep their plain name. A stage run has no children, so just its own
metrics are compared. A metric's value is MLflow's latest one (highest step, then newest timestamp), i.e. the
scalar a stage logs; whole histories (curves) are not compared.

The comparison is a plain dict (see `compare_runs`), rendered by `format_table` or `flows.tables.to_json`.
"""

import math
import re
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from flows.tables import MISSING, grid, number

__all__ = [
    "CompareError",
    "RunNotFound",
    "resolve_run_id",
    "collect_metrics",
    "compare_runs",
    "format_table",
    "describe_store",
]

STAGE_TAG = "l2o.stage"
PARENT_TAG = "mlflow.parentRunId"
MIN_PREFIX = 8  # shortest run id prefix looked up
_HEX_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},32}}")
_PARAM_WIDTH = 60  # params longer than this are cut in the table (the JSON keeps them whole)


class CompareError(Exception):
    """The comparison cannot be made (the message says why); the CLI reports it with exit code 2."""


class RunNotFound(CompareError, LookupError):
    """No run, or more than one run for a prefix, in the tracking store matches an id given."""


def _view_type(name: str):
    from mlflow.entities import ViewType  # noqa: PLC0415

    return getattr(ViewType, name)


def _experiment_ids(client) -> list[str]:
    ids, token = [], None
    while True:
        page = client.search_experiments(view_type=_view_type("ALL"), max_results=1000, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def _search_runs(client, experiment_ids: list[str], filter_string: str, view: str, limit: int | None = None) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string,
            run_view_type=_view_type(view),
            max_results=min(limit or 1000, 1000),
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token or (limit is not None and len(runs) >= limit):
            return runs


def resolve_run_id(client, run_id: str) -> str:
    """The full id of the run ``run_id`` names: a full MLflow run id, or a unique prefix of >= 8 hex digits.

    Args:
        client: an ``mlflow.tracking.MlflowClient`` of the tracking store.
        run_id: a run id or a prefix of one.

    Returns:
        The run's full id.

    Raises:
        RunNotFound: no run has this id (or prefix), or the prefix matches several runs.
    """
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    run_id = run_id.strip()
    try:
        return client.get_run(run_id).info.run_id
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    prefix = run_id.lower()
    if not _HEX_PREFIX.fullmatch(prefix):
        raise RunNotFound(f"no run with id {run_id!r}") from None
    experiments = _experiment_ids(client)
    matches = [
        r.info.run_id
        for r in _search_runs(client, experiments, f"attributes.run_id LIKE '{prefix}%'", "ALL", limit=5)
        if r.info.run_id.startswith(prefix)
    ]
    if not matches:
        raise RunNotFound(f"no run with id {run_id!r} (nor any run id starting with it)")
    if len(matches) > 1:
        raise RunNotFound(
            f"run id prefix {run_id!r} is ambiguous: it starts {', '.join(matches[:4])}"
            + (", ..." if len(matches) > 4 else "")
            + "; give more characters"
        )
    return matches[0]


def _stage_name(run) -> str:
    return run.data.tags.get(STAGE_TAG) or run.info.run_name or run.info.run_id[:MIN_PREFIX]


def _children(client, run) -> list:
    """The live child runs of ``run`` in start order."""
    runs = _search_runs(
        client, [run.info.experiment_id], f"tags.{PARENT_TAG} = '{run.info.run_id}'", "ACTIVE_ONLY", limit=None
    )
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _collect(client, run) -> tuple[dict[str, float], list[dict[str, str]]]:
    """The metrics of ``run`` and its children (keyed as in `collect_metrics`), and the children's stage labels."""
    metrics = dict(run.data.metrics)
    stages, seen = [], Counter()
    for child in _children(client, run):
        name = _stage_name(child)
        seen[name] += 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"  # a stage run twice under one parent
        stages.append({"stage": label, "run_id": child.info.run_id, "status": child.info.status})
        metrics.update({f"{label}/{k}": v for k, v in child.data.metrics.items()})
    return metrics, stages


def collect_metrics(client, run_id: str) -> dict[str, float]:
    """The latest metric values of a run and of its child (stage) runs.

    Args:
        client: an ``mlflow.tracking.MlflowClient`` of the tracking store.
        run_id: the full id of the run.

    Returns:
        ``{metric: value}`` for the run's own metrics and ``{"<stage>/<metric>": value}`` for each child run's
        (the stage is the child's ``l2o.stage`` tag, else its run name; a stage that occurs again under the same
        parent is labelled ``<stage>#2``, ...).
    """
    return _collect(client, client.get_run(run_id))[0]


def _start_time(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _run_info(run, stages: list[dict[str, str]], n_metrics: int) -> dict[str, Any]:
    tags = run.data.tags
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "start_time": _start_time(run.info.start_time),
        "git_commit": tags.get("git_commit"),
        "params_hash": tags.get("l2o.params_hash"),
        "stage": tags.get(STAGE_TAG),
        "parent_run_id": tags.get(PARENT_TAG),
        "stage_runs": stages,
        "num_metrics": n_metrics,
        "num_params": len(run.data.params),
    }


def _same(a: float, b: float, rtol: float) -> bool:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    return math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


def _row(key: str, a: float | None, b: float | None, rtol: float) -> dict[str, Any]:
    if a is None or b is None:
        return {
            "key": key,
            "a": a,
            "b": b,
            "delta": None,
            "rel_change_pct": None,
            "only_in": "a" if b is None else "b",
            "changed": True,
        }
    if a == b:
        delta, rel = 0.0, 0.0  # also inf == inf, whose difference would be nan
    else:
        delta = b - a
        rel = delta / abs(a) * 100.0 if a != 0 and math.isfinite(a) else None
    return {
        "key": key,
        "a": a,
        "b": b,
        "delta": delta,
        "rel_change_pct": rel,
        "only_in": None,
        "changed": not _same(a, b, rtol),
    }


def compare_runs(
    client,
    run_a: str,
    run_b: str,
    *,
    patterns: Iterable[str] = (),
    changed_only: bool = False,
    rtol: float = 1e-9,
) -> dict[str, Any]:
    """Compare the metrics (each run with its child runs) and the params of two runs.

    Args:
        client: an ``mlflow.tracking.MlflowClient`` of the tracking store.
        run_a: id (or unique prefix of >= 8 characters) of run A.
        run_b: id (or unique prefix) of run B.
        patterns: regular expressions (``re.search``); when any are given, only metric keys matching one are kept.
        changed_only: keep only metrics whose values differ beyond ``rtol`` (or that only one run has).
        rtol: relative tolerance: A and B are equal when ``|B - A| <= rtol * max(|A|, |B|)`` (NaN equals NaN).

    Returns:
        ``{"runs": {"a": info, "b": info}, "params": [...], "metrics": [...], "summary": {...}, "rtol",
        "filters", "changed_only"}``: ``params`` lists the params logged on the two runs themselves that differ
        (``{"key", "a", "b"}``, ``None`` where a run lacks it); ``metrics`` has one row per metric key, sorted:
        ``{"key", "a", "b", "delta" (B - A), "rel_change_pct" ((B - A) / |A| * 100, ``None`` where A is 0 or not
        finite), "only_in" ("a", "b" or ``None``), "changed"}``; ``summary`` counts the rows after the key filter
        and before ``changed_only``.

    Raises:
        RunNotFound: an id names no run, or a prefix several.
        re.error: a pattern is not a regular expression.
    """
    regexes = [re.compile(p) for p in patterns]
    runs, infos, metrics = {}, {}, {}
    for side, given in (("a", run_a), ("b", run_b)):
        run = client.get_run(resolve_run_id(client, given))
        metrics[side], stages = _collect(client, run)
        runs[side] = run
        infos[side] = _run_info(run, stages, len(metrics[side]))
    pa, pb = runs["a"].data.params, runs["b"].data.params
    params = [{"key": k, "a": pa.get(k), "b": pb.get(k)} for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    keys = sorted(set(metrics["a"]) | set(metrics["b"]))
    if regexes:
        keys = [k for k in keys if any(r.search(k) for r in regexes)]
    rows = [_row(k, metrics["a"].get(k), metrics["b"].get(k), rtol) for k in keys]
    summary = {
        "total": len(rows),
        "changed": sum(r["changed"] and r["only_in"] is None for r in rows),
        "equal": sum(not r["changed"] for r in rows),
        "only_in_a": sum(r["only_in"] == "a" for r in rows),
        "only_in_b": sum(r["only_in"] == "b" for r in rows),
    }
    if changed_only:
        rows = [r for r in rows if r["changed"]]
    return {
        "runs": infos,
        "rtol": rtol,
        "filters": list(patterns),
        "changed_only": changed_only,
        "params": params,
        "params_compared": len(set(pa) | set(pb)),
        "metrics": rows,
        "summary": summary,
    }


def _rel(row: dict[str, Any]) -> str:
    if row["only_in"] is not None:
        return MISSING
    rel = row["rel_change_pct"]
    return "n/a" if rel is None else number(rel, "+.4g") + "%"


def _cut(value: str | None) -> str:
    if value is None:
        return MISSING
    return value if len(value) <= _PARAM_WIDTH else value[: _PARAM_WIDTH - 1] + "…"


def _run_lines(side: str, info: dict[str, Any]) -> list[str]:
    first = f"{side}  {info['run_id']}  {info['run_name'] or '(no name)'}  {info['status']}"
    if info["start_time"]:
        first += f"  started {info['start_time']}"
    second = []
    if info["stage"]:
        second.append(f"stage {info['stage']}")
    if info["git_commit"]:
        second.append(f"git_commit {info['git_commit']}")
    if info["params_hash"]:
        second.append(f"l2o.params_hash {info['params_hash']}")
    if info["stage_runs"]:
        second.append(f"stage runs: {', '.join(s['stage'] for s in info['stage_runs'])}")
    if info["parent_run_id"]:
        second.append(f"parent run {info['parent_run_id']}")
    return [first] + (["   " + "  ".join(second)] if second else [])


def _magnitude(row: dict[str, Any]) -> float:
    """How large a change is, for the concise table: a metric only one run has first, then |relative change|."""
    if row["only_in"] is not None:
        return math.inf
    rel = row["rel_change_pct"]
    if rel is None:  # from A = 0 or a non-finite A
        return math.inf if row["changed"] else 0.0
    return abs(rel) if math.isfinite(rel) else math.inf


def format_table(comparison: dict[str, Any], *, limit: int | None = None) -> str:
    """The comparison of `compare_runs` as text: the two runs, the params that differ, then one row per metric.

    Args:
        comparison: what `compare_runs` returned.
        limit: show at most this many metric rows, the largest relative changes first (then by key), and say how
          many more there are; ``None``: every row, in key order.

    Returns:
        The text (no trailing newline). Metric rows: key, A, B, B-A, relative change in % of |A|; ``—`` marks a
        metric only one run has, ``n/a`` a relative change from A = 0.
    """
    runs, s = comparison["runs"], comparison["summary"]
    lines = [*_run_lines("A", runs["a"]), *_run_lines("B", runs["b"]), ""]
    params, n_params = comparison["params"], comparison["params_compared"]
    if not n_params:
        lines.append("params: none logged on either run")
    elif not params:
        lines.append(f"params: all {n_params} identical")
    else:
        lines.append(f"params that differ ({len(params)} of {n_params}):")
        lines += grid(["key", "A", "B"], [[p["key"], _cut(p["a"]), _cut(p["b"])] for p in params], set())
    lines.append("")
    rows = comparison["metrics"]
    scope = []
    if comparison["filters"]:
        scope.append("matching " + " | ".join(comparison["filters"]))
    if comparison["changed_only"]:
        scope.append(f"changed only, {len(rows)} shown")
    counts = (
        f"{s['changed']} changed, {s['equal']} equal, {s['only_in_a']} only in A, {s['only_in_b']} only in B"
        f" (rtol {comparison['rtol']:g})"
    )
    lines.append(f"metrics ({s['total']}{'; ' + '; '.join(scope) if scope else ''}): {counts}")
    hidden = 0
    if limit is not None and len(rows) > limit:
        hidden = len(rows) - limit
        rows = sorted(rows, key=lambda r: (-_magnitude(r), r["key"]))[:limit]
    if rows:
        table = [
            [r["key"], number(r["a"], ".10g"), number(r["b"], ".10g"), number(r["delta"], "+.6g"), _rel(r)]
            for r in rows
        ]
        lines += grid(["key", "A", "B", "B-A", "rel %"], table, {1, 2, 3, 4})
    else:
        lines.append("  (no metrics to show)")
    if hidden:
        lines.append(
            f"  ... {hidden} more (the {limit} largest relative changes are shown): --changed lists every changed"
            " metric, --all every metric, --filter REGEX narrows the keys"
        )
    return "\n".join(lines)


def describe_store(client) -> str:
    """The experiments of the tracking store, as ``name (id N)``, for error messages ("" if unreadable)."""
    try:
        exps = client.search_experiments(view_type=_view_type("ALL"), max_results=20)
    except Exception:  # noqa: BLE001  (only a hint in an error message)
        return ""
    return ", ".join(f"{e.name} (id {e.experiment_id})" for e in exps)
