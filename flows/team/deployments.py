"""The team flows ``prefect.yaml`` deploys: the pipeline, and one stage on another work pool.

* ``l2o-team/pipeline`` (pool ``l2o-cpu``): :func:`team_pipeline` runs ``l2o run`` in a workspace
  checked out at the submitted commit. Stages placed on another pool (``meta_train`` on ``l2o-gpu`` by
  default, see ``l2o submit --place``) are handed to that pool by ``l2o run`` itself
  (:func:`flows.team.delegation.delegate_stage`), as a Prefect subflow run of its ``l2o-pipeline`` flow.
* ``l2o-stage/gpu`` and ``l2o-stage/cpu``: :func:`team_stage` runs one stage (``l2o stage NAME``) in
  its own workspace and hands the outputs back through DVC's run-cache.

Every flow run begins with the deployment's pull steps (:mod:`flows.team.workspace`), which the worker
runs before it loads the flow: a workspace at the exact commit, the environment of its ``uv.lock``, the
committed outputs from the DVC remote. The flows then call the workspace's own code in a subprocess
(``python -m flows.cli ...``): the worker's installed copy of this module only checks out, installs and
moves files, so the stages always run the submitted commit's code.

How a delegated stage travels (no shared file system needed, only the DVC remote and the servers):

1. the pipeline pushes the outputs it has so far (``dvc push``) and passes its ``dvc.lock``;
2. the stage flow pulls them, runs the stage (its MLflow run nests under the pipeline's run), records
   it with ``dvc commit`` (which also writes DVC's run-cache entry) and pushes outputs and run-cache;
3. the pipeline pulls the run-cache and restores the stage from it (``Stage ... is cached``), so its
   ``dvc.lock`` records exactly the outputs the stage worker produced.

Environment (set by ``l2o submit`` as the flow run's job variables; the worker's own env otherwise):
``L2O_COMMIT``, ``L2O_REPOSITORY`` (a path or URL ``git clone`` accepts), ``L2O_DVC_REMOTE`` (any
DVC remote URL), ``MLFLOW_TRACKING_URI``, ``L2O_WORKSPACES`` (where workspaces live, default
``~/.cache/l2o/workspaces``).
"""

import json
import logging
import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger

from flows.team.common import PLACEMENT_ENV, STAGE_FLOW, TeamError, stream
from flows.team.workspace import configure_remote, dvc

__all__ = ["team_pipeline", "team_stage"]


def _run_logger():
    """The flow run's logger at INFO, whatever PREFECT_LOGGING_LEVEL the worker runs with (the stage
    output is the point of the log)."""
    logging.getLogger("prefect").setLevel(logging.INFO)
    return get_run_logger()


def _workspace_env(python: str) -> dict:
    # L2O_IN_PLACE: the checkout is this run's own workspace (flows.workspace: no nested experiment workspace)
    env = dict(os.environ, PYTHONPATH="", L2O_PYTHON=python, L2O_IN_PLACE="1")
    env.pop("PREFECT__FLOW_RUN_ID", None)  # the subprocess's flows are its own runs
    return env


def _python() -> str:
    return os.environ.get("L2O_PYTHON") or sys.executable


def _run_logged(cmd: list[str], ws: Path, env: dict, logger, what: str) -> None:
    """Run ``cmd`` in workspace ``ws``, each output line into the flow run's log; TeamError if it fails."""
    code = stream(cmd, ws, env, lambda line: logger.info(line.rstrip()))
    if code != 0:
        raise TeamError(f"{what} failed (exit {code}) in {ws}; see the log above")


def _take_over(ws: Path, logger) -> None:
    """Before a flow run works in workspace ``ws``: refuse if another one is live there, and mark the
    flow run that last worked there as crashed when it is still "running" although nothing holds the
    workspace (its worker was killed: the server cannot know, the runs simply stop reporting).

    ``<ws>/.l2o/flow_run`` records which flow run works in the workspace; the repository lock of
    :mod:`flows.preflight` (also taken by the ``l2o run`` / ``l2o stage`` this run starts) tells a live run
    from a dead one.
    """
    from prefect.runtime import flow_run  # noqa: PLC0415

    from flows import preflight  # noqa: PLC0415

    record = ws / ".l2o" / "flow_run"
    mine = str(flow_run.id)
    try:
        with preflight.repository_lock(ws, f"team flow run {mine} (taking over the workspace)"):
            previous = record.read_text().strip() if record.exists() else ""
            if previous and previous != mine:
                _mark_crashed(previous, f"its worker stopped; flow run {mine} took over the workspace {ws}", logger)
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name("flow_run.tmp")
            tmp.write_text(mine)
            os.replace(tmp, record)
    except preflight.RepositoryBusy as exc:
        raise TeamError(f"workspace {ws} is in use by another run: {exc}") from None


def _mark_crashed(flow_run_id: str, message: str, logger) -> None:
    """Set flow run ``flow_run_id`` Crashed if the server still has it in a non-final state."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.states import Crashed  # noqa: PLC0415

    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(flow_run_id).state
        except Exception:  # noqa: BLE001 - a run of another server, or deleted: nothing to mark
            return
        if state is not None and not state.is_final():
            client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
            logger.warning(f"l2o: flow run {flow_run_id} did not finish ({message}): marked crashed")


@flow(name="l2o-team", log_prints=True, persist_result=False)
def team_pipeline(
    params_yaml: str, params_label: str = "params.yaml", placement: dict | None = None, force: bool = False
) -> str:
    """The pipeline at the checked-out commit: ``l2o run --resume`` with the submitted params."""
    logger = _run_logger()
    ws = Path.cwd()
    _take_over(ws, logger)
    target = ws / ".l2o-submitted.yaml"
    target.write_text(params_yaml)
    env = _workspace_env(_python())
    env[PLACEMENT_ENV] = json.dumps(placement or {})
    cmd = [_python(), "-m", "flows.cli", "run", "--params", target.name, "--resume"] + (["--force"] if force else [])
    logger.info(f"l2o: {params_label} at {os.environ.get('L2O_COMMIT', '?')[:12]} in {ws}: {' '.join(cmd[1:])}")
    _run_logged(cmd, ws, env, logger, "l2o run")
    if configure_remote(ws, os.environ.get("L2O_DVC_REMOTE")):
        from flows import dvc_glue  # noqa: PLC0415

        dvc(ws, "push", "--run-cache", "--quiet")
        repo = dvc_glue.open_repo(ws)
        for name in dvc_glue.stage_order(repo):  # the run-cache entries' metrics and plots too
            if dvc_glue.run_cache_key(repo, name):
                dvc_glue.push_stage(repo, name)
        logger.info(f"l2o: outputs and run-cache pushed to {os.environ['L2O_DVC_REMOTE']}")
    return "done"


@flow(name=STAGE_FLOW, log_prints=True, persist_result=False)
def team_stage(stage: str, params_yaml: str, dvc_lock: str, parent_mlflow_run_id: str | None = None) -> str:
    """One stage at the checked-out commit, on this pool; outputs and run-cache go to the DVC remote."""
    logger = _run_logger()
    ws = Path.cwd()
    _take_over(ws, logger)
    (ws / "params.yaml").write_text(params_yaml)
    (ws / "dvc.lock").write_text(dvc_lock)
    remote = configure_remote(ws, os.environ.get("L2O_DVC_REMOTE"))
    if remote is None:
        raise TeamError(f"stage {stage!r} placed on another pool needs a DVC remote: set L2O_DVC_REMOTE (l2o up)")
    dvc(ws, "pull", "--allow-missing", "--quiet")  # the inputs the pipeline pushed
    env = _workspace_env(_python())
    if parent_mlflow_run_id:
        env["L2O_MLFLOW_PARENT_RUN_ID"] = parent_mlflow_run_id
    cmd = [_python(), "-m", "flows.cli", "stage", stage, "--params", "params.yaml", "--resume"]
    logger.info(f"l2o: stage {stage} in {ws}")
    _run_logged(cmd, ws, env, logger, f"stage {stage!r}")
    dvc(ws, "commit", "--force", "--quiet", stage)  # dvc.lock entry and run-cache entry
    from flows import dvc_glue  # noqa: PLC0415

    dvc_glue.push_stage(dvc_glue.open_repo(ws), stage)
    logger.info(f"l2o: {stage}: outputs and run-cache pushed to {remote}")
    return "done"
