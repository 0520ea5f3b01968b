"""`l2o reproduce RUN_ID`: re-run a tracked pipeline run from its commit and params, then check the results.

Everything needed comes from the MLflow tracking store (``tracking_uri(root)``) and this git repository:

1. The pipeline run (a stage run id stands for its parent pipeline run) gives the commit (tag ``git_commit``; a
   ``+dirty`` suffix is dropped with a warning: the run's uncommitted code changes cannot be recovered, its params
   can), the resolved params (artifact ``params/params.yaml``) and the DVC lock file (artifact ``dvc/dvc.lock``).
2. ``git worktree add --detach`` checks the commit out in a clean folder *outside* the repository (DVC would
   otherwise find the worktree's ``dvc.yaml`` inside the project); the recovered ``params.yaml`` is written into
   it. The worktree has no DVC cache, so every stage runs again (``l2o run --params params.yaml --force``).
3. If the commit's ``uv.lock`` has the same bytes as the project's, the current interpreter runs the worktree's
   code (``python -m flows.cli`` with the worktree as cwd and first on ``PYTHONPATH``); otherwise
   ``uv sync --frozen`` installs the commit's locked environment into ``<worktree>/.venv`` first. The child gets
   ``MLFLOW_TRACKING_URI`` of the original store, so the reproduced runs land beside the original, and the
   project's dataset mirror, raw-download cache, Prefect home and XLA compilation cache. The reproduced pipeline
   run is tagged ``l2o.reproduces=<original id>``; the original ``l2o.reproduced_by=<id>[,<id>...]``.
4. The metrics of both pipeline runs (each with its stage runs, keyed ``<stage>/<metric>`` by
   `flows.compare.collect_metrics`) are compared one by one: equal when ``|reproduced - original| <= atol +
   rtol * |original|`` (NaN equals NaN; wall-clock metrics are ignored by default, see `DEFAULT_IGNORE`). The
   ``outs`` hashes of the two ``dvc.lock`` files are compared too: the outputs of `DATA_STAGES` (the prepared
   data) must be identical, other outputs (model weights, reports naming run ids) are reported for information.

Exit codes: 0 reproduced; 1 not reproduced (a metric beyond tolerance or missing, different data, or the re-run
failed); 2 bad input (unknown run, commit not in this repository, artifacts missing, bad options).

The helpers `compare_metrics`, `compare_lock_hashes`, `verdict`, `format_report` and `to_json` are pure (no MLflow,
git or files), for tests and other callers.
"""

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_IGNORE",
    "DATA_STAGES",
    "ReproduceError",
    "add_arguments",
    "cmd_reproduce",
    "compare_metrics",
    "compare_lock_hashes",
    "changed_deps",
    "verdict",
    "format_report",
    "to_json",
    "pipeline_run_id_from_output",
]

# Wall-clock metrics: "seconds", "evaluate/digits_mlp/seconds", "meta_train/inner_steps_per_second", "*_time".
DEFAULT_IGNORE = (r"(seconds|per_second|_time)$",)
# Stages whose outputs are the data: a different hash there means the inputs of the experiment differ.
DATA_STAGES = ("prepare_data",)
REPRODUCES_TAG = "l2o.reproduces"
REPRODUCED_BY_TAG = "l2o.reproduced_by"
VERDICT_TAG = "l2o.reproduce.verdict"
PARAMS_ARTIFACT = "params/params.yaml"
LOCK_ARTIFACT = "dvc/dvc.lock"
WORKSPACES_ENV = "L2O_WORKSPACES"
_RUN_LINE = re.compile(r"MLflow run ([0-9a-f]{32})")
_PREFIX = "  | "  # the child's output lines, on stderr
_TAIL = 60  # lines of the child's output repeated when it fails


class ReproduceError(Exception):
    """Bad input for a reproduction (the message names the problem and the fix); the CLI exits with 2."""


# ---------------------------------------------------------------------------------------------- pure helpers


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
        problems.append(f"{len(bad)} metric(s) beyond tolerance ({_names([r['key'] for r in bad])})")
    if missing:
        problems.append(f"{len(missing)} metric(s) missing in the reproduction ({_names([r['key'] for r in missing])})")
    if data_bad:
        problems.append(f"data hashes differ ({_names([r['path'] for r in data_bad])})")
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
        extra.append(f"{len(other)} other output(s) differ, informational: {_names([r['path'] for r in other])}")
    return True, line + (f" ({'; '.join(extra)})" if extra else "")


def _names(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _num(v: float | None, spec: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return format(v, spec)


def _hash(h: str | None) -> str:
    if h is None:
        return "—"
    return h[:12] + (".dir" if h.endswith(".dir") else "")


def _grid(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in [header, *rows]
    ]


def format_report(report: dict[str, Any]) -> str:
    """The reproduction as text: the two runs, warnings, the metric table, the data-hash table and the verdict.

    Args:
        report: ``{"original": {...}, "reproduced": {...}, "warnings": [...], "rtol", "atol", "ignore", "metrics":
            compare_metrics rows, "hashes": compare_lock_hashes rows, "changed_deps": [...], "reproduced_ok",
            "verdict"}`` (what `cmd_reproduce` builds; only ``metrics``, ``hashes`` and ``verdict`` are required).

    Returns:
        The text, no trailing newline.
    """
    lines = []
    orig, rep = report.get("original") or {}, report.get("reproduced") or {}
    if orig:
        lines.append(
            f"original    {orig.get('run_id')}  git_commit {orig.get('git_commit')}"
            f"  l2o.params_hash {orig.get('params_hash')}"
        )
    if rep:
        lines.append(
            f"reproduced  {rep.get('run_id') or '(no run)'}  in {rep.get('worktree')}"
            + (" (kept)" if rep.get("kept") else " (removed)" if "kept" in rep else "")
            + (f"  ({rep['seconds']:.0f}s, {rep.get('environment')})" if rep.get("seconds") is not None else "")
        )
    lines += [f"warning: {w}" for w in report.get("warnings") or []]
    rows = report["metrics"]
    compared = [r for r in rows if r["status"] != "ignored"]
    ignored = [r["key"] for r in rows if r["status"] == "ignored"]
    counts = {s: sum(r["status"] == s for r in compared) for s in ("ok", "MISMATCH", "missing", "new")}
    if lines:
        lines.append("")
    tol = ""
    if "atol" in report:
        tol = f"; tolerance atol {report['atol']:g} + rtol {report['rtol']:g} * |original|"
    lines.append(
        f"metrics ({len(compared)} compared, {len(ignored)} ignored{tol}): {counts['ok']} ok,"
        f" {counts['MISMATCH']} MISMATCH, {counts['missing']} missing"
        + (f", {counts['new']} only in the reproduction" if counts["new"] else "")
    )
    if compared:
        table = [
            [
                r["key"],
                _num(r["original"], ".10g"),
                _num(r["reproduced"], ".10g"),
                _num(r["abs_diff"], ".3g"),
                _num(r["tolerance"], ".3g"),
                r["status"],
            ]
            for r in compared
        ]
        lines += _grid(["key", "original", "reproduced", "|diff|", "tolerance", "status"], table, {1, 2, 3, 4})
    if ignored:
        patterns = " | ".join(report.get("ignore") or [])
        lines.append(f"ignored ({len(ignored)}{', matching ' + patterns if patterns else ''}): {', '.join(ignored)}")
    hashes = report["hashes"]
    lines.append("")
    n_eq = sum(r["status"] == "equal" for r in hashes)
    n_info = sum(r["status"] in ("differs", "missing") for r in hashes)
    n_bad = sum(r["status"] == "DIFFERENT" for r in hashes)
    lines.append(
        f"data hashes (dvc.lock outs; required equal: {', '.join(DATA_STAGES)}): {n_eq} equal,"
        f" {n_bad} DIFFERENT, {n_info} differ (informational)"
    )
    if hashes:
        table = [
            [
                r["stage"],
                r["path"],
                _hash(r["original"]),
                _hash(r["reproduced"]),
                r["status"] + ("" if r["required"] or r["status"] == "equal" else " (informational)"),
            ]
            for r in hashes
        ]
        lines += _grid(["stage", "out", "original", "reproduced", "status"], table, set())
    else:
        lines.append("  (no outputs compared)")
    if report.get("changed_deps"):
        lines.append(
            "dependencies whose hash differs from the original run's (its uncommitted changes?): "
            + _names(report["changed_deps"], 10)
        )
    lines += ["", report["verdict"]]
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    """The report as strict JSON (non-finite numbers as "NaN", "Infinity", "-Infinity")."""
    from flows.compare import to_json as _to_json  # noqa: PLC0415

    return _to_json(report)


def pipeline_run_id_from_output(text: str) -> str | None:
    """The pipeline's MLflow run id from `l2o run`'s output (its last line: "...; MLflow run <id>; ...")."""
    found = _RUN_LINE.findall(text)
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------------- the command


def add_arguments(sub) -> argparse.ArgumentParser:
    """Add the ``reproduce`` subcommand to l2o's argparse subparsers; returns its parser."""
    r = sub.add_parser(
        "reproduce",
        help="re-run a pipeline run from its git commit and params in a clean worktree and compare the metrics",
        description=(
            "Recover the git commit (tag git_commit), the resolved params (artifact params/params.yaml) and dvc.lock"
            " (artifact dvc/dvc.lock) of a pipeline run from the MLflow tracking store (MLFLOW_TRACKING_URI, else"
            " .mlflow/mlflow.db of the project); check the commit out with `git worktree add` in a folder outside the"
            " repository; run every stage again there (`l2o run --params params.yaml --force`, logged to the same"
            " store and tagged l2o.reproduces); print the original vs reproduced metrics with tolerances and the"
            " dvc.lock output hashes. The prepared data (prepare_data outputs) must hash equal; other outputs are"
            " informational. Exit 0 reproduced, 1 not reproduced (or the re-run failed), 2 bad input."
        ),
    )
    r.add_argument(
        "run_id",
        metavar="RUN_ID",
        help="MLflow run id of a pipeline run (or a unique prefix of at least 8 characters); a stage run's id"
        " stands for its pipeline run",
    )
    r.add_argument(
        "--rtol",
        type=float,
        default=1e-5,
        help="relative tolerance: equal when |reproduced - original| <= atol + rtol * |original|"
        " (default: %(default)g)",
    )
    r.add_argument("--atol", type=float, default=1e-8, help="absolute tolerance (default: %(default)g)")
    r.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="REGEX",
        help="do not compare metric keys matching REGEX (re.search), in addition to the wall-clock metrics"
        f" {' | '.join(DEFAULT_IGNORE)!r}; repeatable",
    )
    r.add_argument(
        "--no-default-ignore",
        action="store_true",
        help="compare the wall-clock metrics (seconds, steps per second) too",
    )
    r.add_argument(
        "--workdir",
        default=None,
        metavar="DIR",
        help="where the worktree goes: DIR itself if it does not exist or is empty, else a new folder in DIR; it"
        f" must be outside the repository (default: a new folder under ${WORKSPACES_ENV}, else the system temp"
        " folder)",
    )
    r.add_argument("--keep", action="store_true", help="keep the worktree afterwards (it is removed by default)")
    r.add_argument(
        "--json",
        action="store_true",
        help='print the report as JSON instead (non-finite numbers as "NaN", "Infinity", "-Infinity")',
    )
    return r


def _say(msg: str) -> None:
    print(f"l2o: reproduce: {msg}", file=sys.stderr, flush=True)


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=check)


def _client(root: Path):
    from flows.tracking import tracking_uri  # noqa: PLC0415

    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ReproduceError(
            f"no MLflow tracking store at {uri}: nothing tracked yet (`l2o run` creates it),"
            " or set MLFLOW_TRACKING_URI to the store holding the run"
        )
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    return uri, MlflowClient(uri, uri)


def _pipeline_run(client, uri: str, given: str):
    """The pipeline run ``given`` names (a stage run's parent), with a note if it was a stage run."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    from flows.compare import PARENT_TAG, CompareError, describe_store, resolve_run_id  # noqa: PLC0415

    try:
        run = client.get_run(resolve_run_id(client, given))
    except CompareError as exc:
        experiments = describe_store(client)
        raise ReproduceError(
            f"{exc} in the MLflow tracking store {uri}"
            + (f" (experiments: {experiments})" if experiments else "")
            + "; `l2o run` prints the pipeline run id on its last line, or list the runs with `l2o ui`"
        ) from None
    except MlflowException as exc:
        raise ReproduceError(f"cannot read the run from the MLflow tracking store {uri}: {exc.message}") from None
    parent = run.data.tags.get(PARENT_TAG)
    if parent:
        _say(f"run {run.info.run_id} is the stage run {run.info.run_name!r}: reproducing its pipeline run {parent}")
        run = client.get_run(parent)
    elif run.info.run_name != "pipeline" and run.data.tags.get("l2o.stage"):
        raise ReproduceError(
            f"run {run.info.run_id} is a stage run of `l2o stage {run.data.tags['l2o.stage']}` (no pipeline run"
            " recorded its params and dvc.lock): reproduce a pipeline run of `l2o run` instead"
        )
    return run


def _download(client, run_id: str, path: str, dest: Path) -> Path:
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        local = Path(client.download_artifacts(run_id, path, str(dest)))
    except (MlflowException, OSError) as exc:
        local = None
        why = getattr(exc, "message", None) or str(exc)
    else:
        why = "not found"
    if local is None or not local.is_file():
        raise ReproduceError(
            f"run {run_id} has no artifact {path} ({why}): only a finished pipeline run of `l2o run` records its"
            " resolved params and dvc.lock; reproduce such a run (a failed or interrupted run cannot be reproduced)"
        )
    return local


def _commit(root: Path, run) -> tuple[str, list[str]]:
    tag = (run.data.tags.get("git_commit") or "").strip()
    sha = tag.removesuffix("+dirty")
    if not sha or sha == "unknown" or not re.fullmatch(r"[0-9a-fA-F]{7,64}", sha):
        raise ReproduceError(
            f"run {run.info.run_id} records no git commit (tag git_commit={tag!r}): it was not run inside a git"
            " repository, so its code cannot be recovered"
        )
    warnings = []
    if tag.endswith("+dirty"):
        warnings.append(
            f"the original run had uncommitted changes (git_commit {tag}): they are not reproducible, commit"
            f" {sha[:12]} is re-run as committed (the params are exact: they come from the run's artifact)"
        )
    try:
        inside = _git(root, "rev-parse", "--is-inside-work-tree", check=False)
    except OSError as exc:
        raise ReproduceError(f"cannot run git ({exc}): install git and put it on PATH") from None
    if inside.returncode != 0:
        raise ReproduceError(f"{root} is not a git repository: reproduce from the repository the run was made in")
    if _git(root, "cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode != 0:
        raise ReproduceError(
            f"commit {sha} of run {run.info.run_id} is not in the git repository at {root}: `git fetch` the branch"
            " or remote that has it (e.g. `git fetch --all`), then run `l2o reproduce` again"
        )
    return _git(root, "rev-parse", f"{sha}^{{commit}}").stdout.strip(), warnings


def _workdir(root: Path, given: str | None, run_id: str) -> tuple[Path, Path | None]:
    """(the worktree folder, a folder to delete with it, if this command created it)."""
    root = root.resolve()
    prefix = f"l2o-reproduce-{run_id[:8]}-"
    if given:
        base = Path(given).expanduser().resolve()
        what = "--workdir"
    else:
        env = os.environ.get(WORKSPACES_ENV)
        base = Path(env).expanduser().resolve() if env else Path(tempfile.gettempdir()).resolve()
        what = f"${WORKSPACES_ENV}" if env else "the temp folder (TMPDIR)"
    if base == root or base.is_relative_to(root):
        raise ReproduceError(
            f"{what} {base} is inside the repository {root}: DVC would find the worktree's dvc.yaml there; choose a"
            f" folder outside it (--workdir DIR or ${WORKSPACES_ENV})"
        )
    if given and not base.exists():
        base.parent.mkdir(parents=True, exist_ok=True)
        return base, None
    if given and base.is_dir() and not any(base.iterdir()):
        return base, None
    if base.exists() and not base.is_dir():
        raise ReproduceError(f"{what} {base} is a file, not a folder: give a folder for the worktree")
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    return path, path


def _link_tree(src: Path, dest: Path) -> None:
    """Hard-link (else copy) the files of ``src`` into ``dest`` (a download cache: verified, never edited)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dest, copy_function=link, dirs_exist_ok=True)


def _uv(root: Path) -> str | None:
    found = shutil.which("uv")
    local = root / ".tools" / "bin" / "uv"
    return found or (str(local) if local.is_file() else None)


def _child_env(root: Path, worktree: Path, uri: str) -> dict[str, str]:
    from components.stages.fetch import MIRROR_ENV, resolve_mirror  # noqa: PLC0415

    env = dict(os.environ)
    for var in ("L2O_MLFLOW_RUN_ID", "L2O_MLFLOW_PARENT_RUN_ID", "L2O_RESUME", "MLFLOW_RUN_ID", "DVC_STAGE"):
        env.pop(var, None)
    env["MLFLOW_TRACKING_URI"] = uri
    env["PYTHONPATH"] = os.pathsep.join([str(worktree), *filter(None, [env.get("PYTHONPATH")])])
    # the project's state and caches, not fresh ones in the worktree (the worktree's ../shared is not the mirror)
    env.setdefault("PREFECT_HOME", str(root / ".prefect"))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / ".jax_cache"))
    try:
        mirror = resolve_mirror(root)
    except FileNotFoundError:
        mirror = None  # the child reports the bad L2O_DATA_MIRROR itself
    if mirror is not None and MIRROR_ENV not in env:
        env[MIRROR_ENV] = str(mirror)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _command(root: Path, worktree: Path, env: dict[str, str]) -> tuple[list[str], str]:
    """The `l2o run` command for the worktree and the environment it runs in (words for the report)."""
    run_args = ["run", "--params", "params.yaml", "--force"]
    mine, theirs = root / "uv.lock", worktree / "uv.lock"
    same = (mine.read_bytes() if mine.is_file() else None) == (theirs.read_bytes() if theirs.is_file() else None)
    if same or not theirs.is_file():
        if not same:
            _say("warning: the commit has no uv.lock: running it with the current environment")
        return [sys.executable, "-m", "flows.cli", *run_args], f"current interpreter {sys.executable}"
    uv = _uv(root)
    if uv is None:
        raise ReproduceError(
            "the commit's uv.lock differs from the project's, and uv is not installed to build its environment:"
            " put uv on PATH (https://docs.astral.sh/uv/) or in .tools/bin/uv"
        )
    venv = worktree / ".venv"
    _say(f"the commit's uv.lock differs from the project's: installing it into {venv} (uv sync --frozen)")
    env.update(UV_PROJECT_ENVIRONMENT=str(venv))
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run([uv, "sync", "--frozen"], cwd=worktree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise _RerunFailed(f"`uv sync --frozen` failed in {worktree} (exit {proc.returncode})", proc.stderr)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return [str(venv / "bin" / "l2o"), *run_args], f"uv.lock of the commit in {venv}"


class _RerunFailed(Exception):
    def __init__(self, message: str, tail: str = ""):
        super().__init__(message)
        self.tail = tail


def _stream(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run ``cmd``, echoing its output on stderr with a prefix; (exit code, its last lines)."""
    tail: deque[str] = deque(maxlen=_TAIL)
    with subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            print(_PREFIX + line.rstrip("\n"), file=sys.stderr, flush=True)
        code = proc.wait()
    return code, "\n".join(tail)


def _ensure_experiment(client, uri: str, root: Path, params_file: Path) -> None:
    """Create the params' experiment with the project's artifact folder if it is gone (else the child would put
    artifacts into the worktree, which is deleted)."""
    import yaml  # noqa: PLC0415

    name = (yaml.safe_load(params_file.read_text()) or {}).get("experiment_name")
    if name and client.get_experiment_by_name(name) is None:
        artifacts = (root / ".mlflow" / "artifacts").resolve().as_uri() if uri.startswith("sqlite:///") else None
        client.create_experiment(name, artifact_location=artifacts)


def _remove_worktree(root: Path, worktree: Path, created: Path | None) -> None:
    _git(root, "worktree", "remove", "--force", str(worktree), check=False)
    if worktree.exists():
        shutil.rmtree(worktree, ignore_errors=True)
    if created is not None and created.exists():
        shutil.rmtree(created, ignore_errors=True)
    _git(root, "worktree", "prune", check=False)


def _run_info(run) -> dict[str, Any]:
    tags = run.data.tags
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "git_commit": tags.get("git_commit"),
        "params_hash": tags.get("l2o.params_hash"),
        "params_file": tags.get("l2o.params_file"),
    }


def cmd_reproduce(args, root: Path) -> int:
    """`l2o reproduce`: see the module docstring. Returns the exit code (0, 1 or 2); prints the report on stdout,
    progress and the child's output on stderr."""
    root = Path(root).resolve()
    try:
        return _reproduce(args, root)
    except ReproduceError as exc:
        print(f"l2o: error: {exc}", file=sys.stderr)
        return 2


def _reproduce(args, root: Path) -> int:
    import yaml  # noqa: PLC0415

    for name in ("rtol", "atol"):
        value = getattr(args, name)
        if not value >= 0:  # also nan
            raise ReproduceError(f"--{name} must be >= 0, not {value}")
    ignore = [*(() if getattr(args, "no_default_ignore", False) else DEFAULT_IGNORE), *(args.ignore or [])]
    for pattern in ignore:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ReproduceError(f"--ignore {pattern!r} is not a regular expression: {exc}") from None

    uri, client = _client(root)
    run = _pipeline_run(client, uri, args.run_id)
    run_id = run.info.run_id
    sha, warnings = _commit(root, run)
    for w in warnings:
        _say(f"warning: {w}")
    skipped = [s for s in (run.data.tags.get("l2o.stages_skipped") or "").split(",") if s]
    if skipped:
        warnings.append(
            f"the original run skipped {', '.join(skipped)} (up to date then): their metrics are in earlier runs, so"
            " only their output hashes are compared; the reproduction runs every stage"
        )
        _say(f"warning: {warnings[-1]}")
    worktree, created = _workdir(root, args.workdir, run_id)
    report: dict[str, Any] = {
        "tracking_uri": uri,
        "original": _run_info(run),
        "reproduced": {"run_id": None, "worktree": str(worktree), "kept": bool(args.keep), "commit": sha},
        "warnings": warnings,
        "rtol": args.rtol,
        "atol": args.atol,
        "ignore": ignore,
    }
    added = False
    try:
        with tempfile.TemporaryDirectory(prefix="l2o-reproduce-artifacts-") as tmp:
            params = _download(client, run_id, PARAMS_ARTIFACT, Path(tmp))
            lock = _download(client, run_id, LOCK_ARTIFACT, Path(tmp))
            original_lock = yaml.safe_load(lock.read_text()) or {}
            _say(f"run {run_id}: commit {sha[:12]}, worktree {worktree}")
            proc = _git(root, "worktree", "add", "--detach", str(worktree), sha, check=False)
            if proc.returncode != 0:
                raise ReproduceError(f"`git worktree add --detach {worktree} {sha}` failed: {proc.stderr.strip()}")
            added = True
            from components.stages.common import atomic_write_bytes  # noqa: PLC0415

            atomic_write_bytes(worktree / "params.yaml", params.read_bytes())
            _ensure_experiment(client, uri, root, params)
        raw = root / "data" / "raw"
        if raw.is_dir():
            _link_tree(raw, worktree / "data" / "raw")
        env = _child_env(root, worktree, uri)
        t0 = time.perf_counter()
        failure, tail, new_id = None, "", None
        try:
            cmd, environment = _command(root, worktree, env)
            report["reproduced"]["environment"] = environment
            _say(f"running `{' '.join(cmd[-5:])}` in {worktree} ({environment})")
            code, tail = _stream(cmd, worktree, env)
            new_id = pipeline_run_id_from_output(tail)
            if code != 0:
                failure = f"the re-run failed (exit {code})"
            elif new_id is None:
                failure = "the re-run printed no MLflow run id (did it run any stage?)"
        except _RerunFailed as exc:
            failure, tail = str(exc), exc.tail
        report["reproduced"].update(run_id=new_id, seconds=time.perf_counter() - t0)
        if new_id:
            from mlflow.exceptions import MlflowException  # noqa: PLC0415

            try:
                client.set_tag(new_id, REPRODUCES_TAG, run_id)
                previous = client.get_run(run_id).data.tags.get(REPRODUCED_BY_TAG)
                client.set_tag(run_id, REPRODUCED_BY_TAG, ",".join(filter(None, [previous, new_id])))
            except MlflowException as exc:
                _say(f"warning: could not tag the runs: {exc.message}")
        if failure:
            if tail:
                print(f"l2o: reproduce: last lines of the re-run:\n{tail}", file=sys.stderr)
            report.update(metrics=[], hashes=[], changed_deps=[])
        else:
            from flows.compare import collect_metrics  # noqa: PLC0415

            new_lock_path = worktree / "dvc.lock"
            new_lock = yaml.safe_load(new_lock_path.read_text()) if new_lock_path.is_file() else {}
            report["reproduced"].update(_run_info(client.get_run(new_id)), worktree=str(worktree))
            report["metrics"] = compare_metrics(
                collect_metrics(client, run_id), collect_metrics(client, new_id), args.rtol, args.atol, ignore
            )
            report["hashes"] = compare_lock_hashes(original_lock, new_lock or {})
            report["changed_deps"] = changed_deps(original_lock, new_lock or {})
        ok, line = verdict(report["metrics"], report["hashes"], failure)
        report.update(reproduced_ok=ok, verdict=line)
        if new_id:
            from mlflow.exceptions import MlflowException  # noqa: PLC0415

            try:
                client.set_tag(new_id, VERDICT_TAG, line)
            except MlflowException:
                pass
    finally:
        if added and args.keep:
            _say(f"kept the worktree {worktree} (remove it with `git worktree remove --force {worktree}`)")
        elif added or created is not None:
            _remove_worktree(root, worktree, created)
    print(to_json(report) if args.json else format_report(report))
    return 0 if report["reproduced_ok"] else 1
