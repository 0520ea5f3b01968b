"""Stage placement inside a team run: which stages ``l2o run`` hands to another work pool, and the hand-over.

``l2o submit --place STAGE=POOL`` puts ``{stage: pool key}`` into the team pipeline's environment
(:data:`~flows.team.common.PLACEMENT_ENV`); ``l2o run`` reads it with :func:`placement` and runs each placed
stage through :func:`delegate_stage`, which pushes the inputs to the DVC remote, runs the stage's deployment
on that pool (:func:`flows.team.deployments.team_stage`) as a subflow, and restores its outputs from DVC's
run-cache. Prefect is imported only when a stage is handed over.
"""

import json
import os
import time
from pathlib import Path

from flows.team.common import PLACEMENT_ENV, STAGE_FLOW, SUBMISSION_ENV, TEAM_ENV, TeamError
from flows.team.workspace import configure_remote, dvc

__all__ = ["placement", "delegate_stage"]


def placement() -> dict[str, str]:
    """``{stage: pool key}`` of the current team run (empty outside one)."""
    raw = os.environ.get(PLACEMENT_ENV)
    return json.loads(raw) if raw else {}


def delegate_stage(repo, root: Path, name: str, pool: str, params_yaml: str, parent_run_id: str | None, log) -> None:
    """Run stage ``name`` on pool ``pool`` (a subflow run of the current flow) and restore its outputs here."""
    from prefect.deployments import run_deployment  # noqa: PLC0415

    from flows import dvc_glue  # noqa: PLC0415

    if not os.environ.get("L2O_DVC_REMOTE"):
        raise TeamError(f"stage {name!r} is placed on pool {pool!r} but there is no DVC remote (L2O_DVC_REMOTE)")
    configure_remote(root, os.environ["L2O_DVC_REMOTE"])
    dvc(root, "push", "--quiet")  # what the stage needs (earlier stages' outputs)
    env = {k: os.environ[k] for k in TEAM_ENV if os.environ.get(k)}
    env["L2O_PURPOSE"] = f"stage-{pool}"  # its own workspace (checkpoints survive a re-submission)
    submission = os.environ.get(SUBMISSION_ENV)
    if submission:
        env[SUBMISSION_ENV] = submission
    t0 = time.perf_counter()
    run = run_deployment(
        f"{STAGE_FLOW}/{pool}",
        parameters={
            "stage": name,
            "params_yaml": params_yaml,
            "dvc_lock": (root / "dvc.lock").read_text() if (root / "dvc.lock").exists() else "",
            "parent_mlflow_run_id": parent_run_id,
        },
        job_variables={"env": env},
        flow_run_name=f"{name}@{pool}",
        tags=[f"l2o-submission:{submission}"] if submission else None,
        timeout=None,
        poll_interval=2,
    )
    if not run.state or not run.state.is_completed():
        raise TeamError(
            f"stage {name!r} on pool {pool!r} ended {run.state.name if run.state else 'without a state'}"
            f" (Prefect flow run {run.id}): see its log in the Prefect UI or `prefect flow-run logs {run.id}`"
        )
    if not dvc_glue.restore_stage(repo, name, pull=True):
        raise TeamError(
            f"stage {name!r} ran on pool {pool!r} (flow run {run.id}) but DVC's run-cache in"
            f" {os.environ['L2O_DVC_REMOTE']} has no outputs for this pipeline's inputs: did the two workers check"
            " out the same commit and params?"
        )
    log(f"l2o: {name}: ran on pool {pool} (flow run {run.id}) in {time.perf_counter() - t0:.0f}s; outputs restored")
