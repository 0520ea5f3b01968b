"""Team runs: the pipeline on Prefect process workers, data and stage outputs through a DVC remote.

``prefect.yaml`` deploys two flows of this module:

* ``l2o-team/pipeline`` (pool ``l2o-cpu``): :func:`team_pipeline` runs ``l2o run`` in a workspace
  checked out at the submitted commit. Stages placed on another pool (``meta_train`` on ``l2o-gpu`` by
  default, see ``l2o submit --place``) are handed to that pool by ``l2o run`` itself
  (:func:`delegate_stage`), as a Prefect subflow run of its ``l2o-pipeline`` flow.
* ``l2o-stage/gpu`` and ``l2o-stage/cpu``: :func:`team_stage` runs one stage (``l2o stage NAME``) in
  its own workspace and hands the outputs back through DVC's run-cache.

Every flow run begins with the deployment's pull steps, which the worker runs before it loads the
flow: :func:`checkout` (a workspace at the exact commit, reused by a re-submitted run so
meta-training resumes from its checkpoint), :func:`install` (the environment of the commit's
``uv.lock``) and :func:`dvc_pull` (the committed outputs from the DVC remote). The flows then call the
workspace's own code in a subprocess (``python -m flows.cli ...``): the worker's installed copy of
this module only checks out, installs and moves files, so the stages always run the submitted
commit's code.

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

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefect import flow, get_run_logger

__all__ = [
    "PIPELINE_DEPLOYMENT",
    "STAGE_FLOW",
    "PLACEMENT_ENV",
    "SUBMISSION_ENV",
    "POOL_KEYS",
    "TeamError",
    "workspace_root",
    "checkout",
    "install",
    "dvc_pull",
    "team_pipeline",
    "team_stage",
    "placement",
    "delegate_stage",
]

PIPELINE_DEPLOYMENT = "l2o-team/pipeline"
STAGE_FLOW = "l2o-stage"  # deployments l2o-stage/<pool key>
PLACEMENT_ENV = "L2O_PLACEMENT"  # JSON {stage: pool key}; set for `l2o run` inside a team run
SUBMISSION_ENV = "L2O_SUBMISSION"  # the id `l2o submit` tags every flow run of one submission with
POOL_KEYS = ("gpu", "cpu")  # deployments l2o-stage/<key> on work pools l2o-<key>
REMOTE_NAME = "l2o"
TEAM_ENV = ("L2O_COMMIT", "L2O_REPOSITORY", "L2O_DVC_REMOTE", "MLFLOW_TRACKING_URI", "L2O_WORKSPACES", "L2O_UV")


class TeamError(RuntimeError):
    """A team run cannot go on (the message says what is wrong and what to do)."""


def workspace_root() -> Path:
    return Path(os.environ.get("L2O_WORKSPACES") or Path.home() / ".cache" / "l2o" / "workspaces").expanduser()


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None, what: str = "") -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TeamError(
            f"{what or ' '.join(cmd)} failed (exit {proc.returncode}) in {cwd or os.getcwd()}:\n"
            f"{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return proc.stdout


def _dvc(directory: Path, *args: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    return _run([sys.executable, "-m", "dvc", *args], cwd=directory, env=env, what=f"dvc {' '.join(args)}")


# --- pull steps (prefect.yaml) -------------------------------------------------------------------


def checkout(repository: str = "", commit: str = "", purpose: str = "pipeline") -> dict:
    """Pull step: ``{"directory": ...}``, a git workspace of ``repository`` at exactly ``commit``.

    The workspace is ``<L2O_WORKSPACES>/<repo name>-<commit[:12]>-<purpose>``: a run re-submitted for the
    same commit lands in the same folder and finds its checkpoints there. It is cloned into a temporary
    folder and renamed into place, so a worker killed while cloning leaves nothing half-made. A reused
    workspace must still be at ``commit`` with no change to tracked code.
    """
    if not repository or repository.startswith("{{"):
        raise TeamError("no repository to check out: set L2O_REPOSITORY (l2o submit does) to a git URL or path")
    if not commit or commit.startswith("{{"):
        raise TeamError("no commit to check out: set L2O_COMMIT (l2o submit does) to the full commit sha")
    name = Path(repository.rstrip("/")).name.removesuffix(".git") or "project"
    root = workspace_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{name}-{commit[:12]}-{purpose}"
    if not target.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            _run(["git", "clone", "--quiet", "--no-checkout", repository, str(tmp)], what="git clone")
            _run(["git", "checkout", "--quiet", "--detach", commit], cwd=tmp, what=f"git checkout {commit}")
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    head = _run(["git", "rev-parse", "HEAD"], cwd=target).strip()
    if head != commit and not head.startswith(commit):
        raise TeamError(f"workspace {target} is at {head}, not {commit}: remove the folder to check it out again")
    changed = [
        line[3:]
        for line in _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=target).splitlines()
        if line[3:] not in ("params.yaml", "dvc.lock")  # what runs write
    ]
    if changed:
        raise TeamError(f"workspace {target} has changed code ({', '.join(changed)}): remove the folder to start over")
    print(f"l2o: workspace {target} at {commit[:12]}", flush=True)
    return {"directory": str(target)}


def _lock_digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _worker_project() -> Path | None:
    """The project this worker's interpreter has installed (editable), if any."""
    try:
        import flows  # noqa: PLC0415

        return Path(flows.__file__).resolve().parents[1]
    except Exception:  # pragma: no cover - flows is this package
        return None


def install(directory: str) -> dict:
    """Pull step: ``{"python": ...}``, an interpreter with exactly the packages of the workspace's ``uv.lock``.

    When the worker's own project was installed from the same ``uv.lock`` (byte for byte), its
    interpreter already is that environment and is used as is; otherwise ``uv sync --frozen`` builds
    ``<workspace>/.venv`` from the lock file (uv from ``L2O_UV``, PATH, or the worker project's
    ``.tools/bin/uv``).
    """
    ws = Path(directory)
    mine = _worker_project()
    wanted = _lock_digest(ws / "uv.lock")
    if wanted is None:
        raise TeamError(f"{ws} has no uv.lock: the commit cannot be installed reproducibly")
    if mine is not None and _lock_digest(mine / "uv.lock") == wanted:
        print(f"l2o: uv.lock matches the worker's environment ({sys.executable})", flush=True)
        os.environ["L2O_PYTHON"] = sys.executable
        return {"python": sys.executable}
    uv = os.environ.get("L2O_UV") or shutil.which("uv")
    if uv is None and mine is not None and (mine / ".tools" / "bin" / "uv").exists():
        uv = str(mine / ".tools" / "bin" / "uv")
    if uv is None:
        raise TeamError("uv.lock differs from the worker's environment and no uv was found: set L2O_UV or install uv")
    env = dict(os.environ, UV_PROJECT_ENVIRONMENT=str(ws / ".venv"), UV_COMPILE_BYTECODE="1")
    python = str(ws / ".venv" / "bin" / "python")
    print(f"l2o: installing {ws / 'uv.lock'} into {ws / '.venv'} (uv sync --frozen)", flush=True)
    _run([uv, "sync", "--frozen"], cwd=ws, env=env, what="uv sync --frozen")
    os.environ["L2O_PYTHON"] = python  # the flow runs in this process after the pull steps
    return {"python": python}


def _configure_remote(ws: Path, remote: str | None) -> str | None:
    if remote and not remote.startswith("{{"):
        _dvc(ws, "remote", "add", "--local", "-d", "-f", REMOTE_NAME, remote)
        return remote
    return None


def dvc_pull(directory: str, remote: str | None = None) -> dict:
    """Pull step: the remote becomes the workspace's default (``config.local``); then ``dvc pull``.

    Fetches the outputs its ``dvc.lock`` records and the shared run-cache; outputs no run has pushed
    yet are skipped (they are produced by this run).
    """
    ws = Path(directory)
    if _configure_remote(ws, remote) is None:
        print("l2o: no DVC remote (L2O_DVC_REMOTE): nothing pulled, outputs stay on this worker", flush=True)
        return {"remote": ""}
    _dvc(ws, "pull", "--run-cache", "--allow-missing", "--quiet")
    return {"remote": remote}


# --- flows ---------------------------------------------------------------------------------------


def _stream(cmd: list[str], cwd: Path, env: dict, logger) -> int:
    """Run ``cmd``, sending each output line to ``logger`` (the Prefect run log) as it comes."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        logger.info(line.rstrip())
    return proc.wait()


def _run_logger():
    """The flow run's logger at INFO, whatever PREFECT_LOGGING_LEVEL the worker runs with (the stage
    output is the point of the log)."""
    logging.getLogger("prefect").setLevel(logging.INFO)
    return get_run_logger()


def _workspace_env(python: str) -> dict:
    env = dict(os.environ, PYTHONPATH="", L2O_PYTHON=python)
    env.pop("PREFECT__FLOW_RUN_ID", None)  # the subprocess's flows are its own runs
    return env


def _python() -> str:
    return os.environ.get("L2O_PYTHON") or sys.executable


def _take_over(ws: Path, logger) -> None:
    """Before a flow run works in workspace ``ws``: refuse if another one is live there, and mark the
    flow run that last worked there as crashed when it is still "running" although nothing holds the
    workspace (its worker was killed: the server cannot know, the runs simply stop reporting).

    ``<ws>/.l2o/flow_run`` records which flow run works in the workspace; the repository lock of
    :mod:`flows.guard` (also taken by the ``l2o run`` / ``l2o stage`` this run starts) tells a live run
    from a dead one.
    """
    from prefect.runtime import flow_run  # noqa: PLC0415

    from flows import guard  # noqa: PLC0415

    record = ws / ".l2o" / "flow_run"
    mine = str(flow_run.id)
    try:
        with guard.repository_lock(ws, f"team flow run {mine} (taking over the workspace)"):
            previous = record.read_text().strip() if record.exists() else ""
            if previous and previous != mine:
                _mark_crashed(previous, f"its worker stopped; flow run {mine} took over the workspace {ws}", logger)
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name("flow_run.tmp")
            tmp.write_text(mine)
            os.replace(tmp, record)
    except guard.RepositoryBusy as exc:
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
    code = _stream(cmd, ws, env, logger)
    if code != 0:
        raise TeamError(f"l2o run failed (exit {code}) in {ws}; see the log above")
    if _configure_remote(ws, os.environ.get("L2O_DVC_REMOTE")):
        from flows import dvc_glue  # noqa: PLC0415

        _dvc(ws, "push", "--run-cache", "--quiet")
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
    remote = _configure_remote(ws, os.environ.get("L2O_DVC_REMOTE"))
    if remote is None:
        raise TeamError(f"stage {stage!r} placed on another pool needs a DVC remote: set L2O_DVC_REMOTE (l2o up)")
    _dvc(ws, "pull", "--allow-missing", "--quiet")  # the inputs the pipeline pushed
    env = _workspace_env(_python())
    if parent_mlflow_run_id:
        env["L2O_MLFLOW_PARENT_RUN_ID"] = parent_mlflow_run_id
    cmd = [_python(), "-m", "flows.cli", "stage", stage, "--params", "params.yaml", "--resume"]
    logger.info(f"l2o: stage {stage} in {ws}")
    code = _stream(cmd, ws, env, logger)
    if code != 0:
        raise TeamError(f"stage {stage!r} failed (exit {code}) in {ws}; see the log above")
    _dvc(ws, "commit", "--force", "--quiet", stage)  # dvc.lock entry and run-cache entry
    from flows import dvc_glue  # noqa: PLC0415

    dvc_glue.push_stage(dvc_glue.open_repo(ws), stage)
    logger.info(f"l2o: {stage}: outputs and run-cache pushed to {remote}")
    return "done"


# --- placement, used by `l2o run` inside a team run ---------------------------------------------


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
    _configure_remote(root, os.environ["L2O_DVC_REMOTE"])
    _dvc(root, "push", "--quiet")  # what the stage needs (earlier stages' outputs)
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
