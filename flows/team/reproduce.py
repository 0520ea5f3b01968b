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

The comparison (`flows.team.reproduce_checks`: `compare_metrics`, `compare_lock_hashes`, `changed_deps`,
`verdict`) and the report's text (`flows.team.reproduce_report.format_report`; `flows.tables.to_json`) are pure
(no MLflow, git or files), for tests and other callers; `flows.team.reproduce_worktree` makes the re-run.
"""

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flows.tables import to_json
from flows.team.common import WORKSPACES_ENV, error, git
from flows.team.reproduce_checks import (
    DEFAULT_IGNORE,
    changed_deps,
    compare_lock_hashes,
    compare_metrics,
    pipeline_run_id_from_output,
    verdict,
)
from flows.team.reproduce_report import format_report
from flows.team.reproduce_worktree import (
    ReproduceError,
    RerunFailed,
    checked_commit,
    child_env,
    link_tree,
    remove_worktree,
    rerun,
    rerun_command,
    say,
    workdir,
)

__all__ = ["ReproduceError", "add_arguments", "cmd_reproduce"]

REPRODUCES_TAG = "l2o.reproduces"
REPRODUCED_BY_TAG = "l2o.reproduced_by"
VERDICT_TAG = "l2o.reproduce.verdict"
PARAMS_ARTIFACT = "params/params.yaml"
LOCK_ARTIFACT = "dvc/dvc.lock"


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
        say(f"run {run.info.run_id} is the stage run {run.info.run_name!r}: reproducing its pipeline run {parent}")
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


def _ensure_experiment(client, uri: str, root: Path, params_file: Path) -> None:
    """Create the params' experiment with the project's artifact folder if it is gone (else the child would put
    artifacts into the worktree, which is deleted)."""
    import yaml  # noqa: PLC0415

    name = (yaml.safe_load(params_file.read_text()) or {}).get("experiment_name")
    if name and client.get_experiment_by_name(name) is None:
        artifacts = (root / ".mlflow" / "artifacts").resolve().as_uri() if uri.startswith("sqlite:///") else None
        client.create_experiment(name, artifact_location=artifacts)


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
        error(str(exc))
        return 2


def _checked_ignore(args) -> list[str]:
    """The ``--ignore`` patterns in force (with the defaults unless ``--no-default-ignore``), after checking the
    tolerances and the patterns (ReproduceError)."""
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
    return ignore


def _rerun(root: Path, worktree: Path, uri: str, report: dict[str, Any]) -> tuple[str | None, str, str | None]:
    """Run the pipeline again in ``worktree``: (why it failed or None, the last lines it printed, its run id)."""
    raw = root / "data" / "raw"
    if raw.is_dir():
        link_tree(raw, worktree / "data" / "raw")
    env = child_env(root, worktree, uri)
    t0 = time.perf_counter()
    failure, tail, new_id = None, "", None
    try:
        cmd, environment = rerun_command(root, worktree, env)
        report["reproduced"]["environment"] = environment
        say(f"running `{' '.join(cmd[-5:])}` in {worktree} ({environment})")
        code, tail = rerun(cmd, worktree, env)
        new_id = pipeline_run_id_from_output(tail)
        if code != 0:
            failure = f"the re-run failed (exit {code})"
        elif new_id is None:
            failure = "the re-run printed no MLflow run id (did it run any stage?)"
    except RerunFailed as exc:
        failure, tail = str(exc), exc.tail
    report["reproduced"].update(run_id=new_id, seconds=time.perf_counter() - t0)
    return failure, tail, new_id


def _link_runs(client, run_id: str, new_id: str) -> None:
    """Tag the reproduction with the original (``l2o.reproduces``) and the original with it (``l2o.reproduced_by``)."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        client.set_tag(new_id, REPRODUCES_TAG, run_id)
        previous = client.get_run(run_id).data.tags.get(REPRODUCED_BY_TAG)
        client.set_tag(run_id, REPRODUCED_BY_TAG, ",".join(filter(None, [previous, new_id])))
    except MlflowException as exc:
        say(f"warning: could not tag the runs: {exc.message}")


def _compare(client, report: dict[str, Any], run_id: str, new_id: str, original_lock: dict, args, ignore) -> None:
    """Put the metric and ``dvc.lock`` comparisons of the finished re-run into ``report``."""
    import yaml  # noqa: PLC0415

    from flows.compare import collect_metrics  # noqa: PLC0415

    worktree = report["reproduced"]["worktree"]
    new_lock_path = Path(worktree) / "dvc.lock"
    new_lock = yaml.safe_load(new_lock_path.read_text()) if new_lock_path.is_file() else {}
    report["reproduced"].update(_run_info(client.get_run(new_id)), worktree=worktree)
    report["metrics"] = compare_metrics(
        collect_metrics(client, run_id), collect_metrics(client, new_id), args.rtol, args.atol, ignore
    )
    report["hashes"] = compare_lock_hashes(original_lock, new_lock or {})
    report["changed_deps"] = changed_deps(original_lock, new_lock or {})


def _reproduce(args, root: Path) -> int:
    import yaml  # noqa: PLC0415

    ignore = _checked_ignore(args)
    uri, client = _client(root)
    run = _pipeline_run(client, uri, args.run_id)
    run_id = run.info.run_id
    sha, warnings = checked_commit(root, run)
    for w in warnings:
        say(f"warning: {w}")
    skipped = [s for s in (run.data.tags.get("l2o.stages_skipped") or "").split(",") if s]
    if skipped:
        warnings.append(
            f"the original run skipped {', '.join(skipped)} (up to date then): their metrics are in earlier runs, so"
            " only their output hashes are compared; the reproduction runs every stage"
        )
        say(f"warning: {warnings[-1]}")
    worktree, created = workdir(root, args.workdir, run_id)
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
            say(f"run {run_id}: commit {sha[:12]}, worktree {worktree}")
            proc = git(root, "worktree", "add", "--detach", str(worktree), sha, check=False)
            if proc.returncode != 0:
                raise ReproduceError(f"`git worktree add --detach {worktree} {sha}` failed: {proc.stderr.strip()}")
            added = True
            from components.stages.common import atomic_write_bytes  # noqa: PLC0415

            atomic_write_bytes(worktree / "params.yaml", params.read_bytes())
            _ensure_experiment(client, uri, root, params)
        failure, tail, new_id = _rerun(root, worktree, uri, report)
        if new_id:
            _link_runs(client, run_id, new_id)
        if failure:
            if tail:
                print(f"l2o: reproduce: last lines of the re-run:\n{tail}", file=sys.stderr)
            report.update(metrics=[], hashes=[], changed_deps=[])
        else:
            _compare(client, report, run_id, new_id, original_lock, args, ignore)
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
            say(f"kept the worktree {worktree} (remove it with `git worktree remove --force {worktree}`)")
        elif added or created is not None:
            remove_worktree(root, worktree, created)
    print(to_json(report) if args.json else format_report(report))
    return 0 if report["reproduced_ok"] else 1
