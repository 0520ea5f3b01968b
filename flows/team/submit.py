"""`l2o submit --params FILE`: run the pipeline on the team's Prefect workers and follow it.

What it does, in order, stopping with exit code 2 and nothing submitted at the first problem:

1. validates the params (and ``--set`` overrides) exactly as ``l2o run`` does, and resolves them;
2. finds the servers (``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``: from the environment or from
   ``l2o up`` on this machine) and checks that they answer;
3. takes the commit to run: ``HEAD``, which must hold every code change (workers check out that commit,
   not this folder), and the repository URL workers clone it from (``--repository``, else
   ``L2O_REPOSITORY``, else this folder, which suits workers on this machine or a shared file system);
4. takes the DVC remote (``L2O_DVC_REMOTE`` or the project's default remote) that carries data and
   stage outputs between workers;
5. deploys ``prefect.yaml`` (``prefect deploy --all``) and starts a run of ``l2o-team/pipeline`` with
   the resolved params and the stage placement: by default meta-training on the GPU pool when a GPU
   worker is online, in the pipeline's own run on the CPU worker otherwise (``--place`` decides);
6. follows it: prints the log lines of every flow run of the submission (the pipeline and the stages it
   hands to other pools) until it ends. Exit 0 when it completed, 1 otherwise. Ctrl-C stops following,
   not the run.
"""

import argparse
import datetime
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from flows.team.common import PIPELINE_DEPLOYMENT, changed_code, error, executable, git, warn

__all__ = ["add_arguments", "cmd_submit", "choose_placement"]

DEFAULT_PLACEMENT = {"meta_train": "gpu"}
PLACES = ("gpu", "cpu", "pipeline")  # "pipeline": in the pipeline's own process (no delegation)
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# how much later than a newer one a log line may reach the Prefect API (its process sends lines in batches)
LATE_LOGS = datetime.timedelta(seconds=60)


def add_arguments(sub) -> None:
    s = sub.add_parser(
        "submit",
        help="run the pipeline on the team's Prefect workers (l2o up / l2o worker) and follow it",
        description=__doc__.split("\n\n", 1)[1].replace("``", "`"),  # plain text, not reStructuredText
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--params", default="params/default.yaml", help="params YAML (default: %(default)s)")
    s.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one param"
    )
    s.add_argument(
        "--place",
        action="append",
        default=[],
        metavar="STAGE=POOL",
        help="where a stage runs: gpu (pool l2o-gpu), cpu (pool l2o-cpu, its own worker process) or pipeline"
        " (inside the pipeline's run); default meta_train=gpu when a GPU worker is online (else in the"
        " pipeline's run), every other stage in the pipeline's run",
    )
    s.add_argument(
        "--repository", default=None, help="git URL or path workers clone (default: L2O_REPOSITORY, else here)"
    )
    s.add_argument("--force", action="store_true", help="run every stage even if its outputs are in the remote")
    s.add_argument("--no-follow", action="store_true", help="print the flow run id and return at once")
    s.add_argument("--timeout", type=float, default=None, help="stop following after this many seconds (exit 1)")


def _fail(msg: str) -> int:
    error(msg)
    return 2


def _placement(args, stages: list[str]) -> tuple[dict[str, str], set[str]]:
    """``({stage: pool key}, stages the user placed explicitly)``; stages run in the pipeline are left out."""
    placed = dict(DEFAULT_PLACEMENT)
    explicit = set()
    for item in args.place:
        stage, sep, pool = item.partition("=")
        if not sep or stage not in stages or pool not in PLACES:
            raise ValueError(
                f"--place {item!r}: give STAGE=POOL with STAGE one of {', '.join(stages)} and POOL one of"
                f" {', '.join(PLACES)}"
            )
        placed[stage] = pool
        explicit.add(stage)
    return {k: v for k, v in placed.items() if v != "pipeline"}, explicit


def choose_placement(placed: dict[str, str], explicit: set[str], online: dict[str, int]) -> tuple[dict, list[str]]:
    """The placement to submit, and what to tell the user.

    A stage placed by default (meta-training on the GPU pool) whose pool has no online worker runs in
    the pipeline's own process instead — meta-training goes to GPU workers when they exist, to the CPU
    otherwise. A stage the user placed explicitly stays there and waits for a worker.
    """
    final, notes = {}, []
    for stage, pool in placed.items():
        if online.get(f"l2o-{pool}", 0) > 0:
            final[stage] = pool
        elif stage in explicit:
            final[stage] = pool
            notes.append(f"no worker is online in pool l2o-{pool}: {stage} waits for one (`l2o worker {pool}`)")
        else:
            notes.append(
                f"no worker is online in pool l2o-{pool}: {stage} runs in the pipeline's own process on the"
                f" l2o-cpu worker (`--place {stage}={pool}` waits for a {pool} worker instead)"
            )
    return final, notes


def cmd_submit(args, root: Path) -> int:
    from flows import dvc_glue, preflight  # noqa: PLC0415
    from flows.params_io import ParamsError, dump_params, load_params  # noqa: PLC0415

    try:
        params = load_params(args.params, args.overrides)
    except ParamsError as exc:
        return _fail(str(exc))
    text = dump_params(params, args.params + "".join(f" --set {o}" for o in args.overrides))
    repo = dvc_glue.open_repo(root)
    try:
        placed, explicit = _placement(args, dvc_glue.stage_order(repo))
    except ValueError as exc:
        return _fail(str(exc))

    api = os.environ.get("PREFECT_API_URL")
    if not api:
        return _fail(
            "no Prefect server to submit to: run `l2o up` here (it records the servers for later commands),"
            " or export PREFECT_API_URL=http://<server>:4200/api and MLFLOW_TRACKING_URI=http://<server>:5000"
        )
    tracking = os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking:
        return _fail("no MLflow tracking server: run `l2o up`, or export MLFLOW_TRACKING_URI=http://<server>:5000")
    try:
        preflight.check_services(root)
    except preflight.ServiceUnavailable as exc:
        return _fail(str(exc))

    try:
        commit = git(root, "rev-parse", "HEAD").stdout.strip()
        changed = changed_code(git(root, "status", "--porcelain", "--untracked-files=no").stdout.rstrip())
    except (OSError, subprocess.CalledProcessError):
        return _fail(f"{root} is not a git repository with a commit: workers check out a commit; `git commit` first")
    if changed:
        return _fail(
            f"uncommitted changes to {', '.join(changed)}: workers run commit {commit[:12]}, which does not have"
            " them. Commit (and push, if workers clone from a remote) first"
        )
    repository = args.repository or os.environ.get("L2O_REPOSITORY") or str(root)
    remote = os.environ.get("L2O_DVC_REMOTE") or dvc_glue.default_remote(repo)
    if not remote:
        return _fail(
            "no DVC remote to carry data and outputs between workers: `l2o up` configures one, or"
            " `dvc remote add -d NAME URL` (any DVC remote), or export L2O_DVC_REMOTE=URL"
        )
    if "://" not in remote and not Path(remote).is_absolute():
        remote = str((root / ".dvc" / remote).resolve())  # DVC resolves relative local remotes from .dvc/

    online = _online_workers(["l2o-cpu", *{f"l2o-{p}" for p in placed.values()}])
    if isinstance(online, str):
        return _fail(online)
    if not online.get("l2o-cpu"):
        warn("no worker is online in pool 'l2o-cpu': the run waits until one starts")
    placed, notes = choose_placement(placed, explicit, online)
    for note in notes:
        print(f"l2o: {note}", file=sys.stderr)
    deploy = subprocess.run(
        [*executable("prefect"), "--no-prompt", "deploy", "--all"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if deploy.returncode != 0:
        error(f"`prefect deploy --all` failed:\n{(deploy.stdout + deploy.stderr)[-3000:]}")
        return 1

    submission = uuid.uuid4().hex[:12]
    env = {
        "L2O_COMMIT": commit,
        "L2O_REPOSITORY": repository,
        "L2O_DVC_REMOTE": remote,
        "MLFLOW_TRACKING_URI": tracking,
        "L2O_PURPOSE": "pipeline",
        "L2O_SUBMISSION": submission,
        **{k: os.environ[k] for k in ("L2O_WORKSPACES", "L2O_UV") if os.environ.get(k)},
    }
    from prefect.deployments import run_deployment  # noqa: PLC0415

    run = run_deployment(
        PIPELINE_DEPLOYMENT,
        parameters={"params_yaml": text, "params_label": args.params, "placement": placed, "force": args.force},
        job_variables={"env": env},
        flow_run_name=f"{Path(args.params).stem}@{commit[:8]}",
        tags=[f"l2o-submission:{submission}"],
        timeout=0,
        as_subflow=False,
    )
    ui = api.removesuffix("/api")
    print(
        f"l2o: submitted {args.params} at {commit[:12]} as flow run {run.name} ({run.id});"
        f" stages placed: {', '.join(f'{k}={v}' for k, v in placed.items()) or 'none'}",
        flush=True,
    )
    print(f"l2o: Prefect UI {ui}/runs/flow-run/{run.id}; MLflow {tracking}", flush=True)
    if args.no_follow:
        return 0
    return _follow(run.id, submission, args.timeout)


def _online_workers(pools: list[str]) -> dict[str, int] | str:
    """``{pool: online workers}``, or a message when a pool does not exist on the server."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415

    online = {}
    with get_client(sync_client=True) as client:
        for pool in pools:
            try:
                client.read_work_pool(pool)
            except Exception:  # noqa: BLE001 - ObjectNotFound and friends
                return f"work pool {pool!r} does not exist on the Prefect server: `l2o up` creates l2o-cpu and l2o-gpu"
            workers = client.read_workers_for_work_pool(pool)
            online[pool] = sum(str(getattr(w, "status", "")).upper().endswith("ONLINE") for w in workers)
    return online


def print_new_logs(client, flow_run_ids: list, names: dict, seen: set, newest):
    """Print the log lines of ``flow_run_ids`` not in ``seen`` (adding them), oldest first; the newest timestamp.

    Each process of a submission (the pipeline's flow run, a stage's on another pool) sends its log lines to the
    Prefect API in batches, so a line can arrive after lines of another process stamped later: this reads again
    from :data:`LATE_LOGS` before ``newest`` (the newest line printed so far), not from ``newest``, which would
    skip it.
    """
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp  # noqa: PLC0415
    from prefect.client.schemas.sorting import LogSort  # noqa: PLC0415

    since = LogFilterTimestamp(after_=newest - LATE_LOGS) if newest else None
    offset = 0
    while True:  # a page at a time
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids), timestamp=since),
            sort=LogSort.TIMESTAMP_ASC,
            limit=200,
            offset=offset,
        )
        for entry in logs:
            if entry.id in seen:
                continue
            seen.add(entry.id)
            newest = entry.timestamp if newest is None else max(newest, entry.timestamp)
            print(f"[{names.get(entry.flow_run_id, '?')}] {entry.message}", flush=True)
        if len(logs) < 200:
            return newest
        offset += len(logs)


def _follow(flow_run_id, submission: str, timeout: float | None) -> int:
    """Print the logs of the submission's flow runs as they come (:func:`print_new_logs`); the exit code of the
    pipeline run. Once the run has ended, one more poll collects its processes' last batches of lines."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags  # noqa: PLC0415

    t0 = time.monotonic()
    seen: set = set()
    names: dict = {}
    newest = None
    state = None
    ended = False
    try:
        with get_client(sync_client=True) as client:
            while True:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"l2o-submission:{submission}"]))
                )
                names.update({r.id: r.name for r in runs})
                state = client.read_flow_run(flow_run_id).state
                newest = print_new_logs(client, list(names) or [flow_run_id], names, seen, newest)
                if ended:
                    break
                if state is not None and state.type.value in FINAL:
                    ended = True  # one more poll: the last batches of its processes
                elif timeout is not None and time.monotonic() - t0 > timeout:
                    error(f"still {state.name if state else 'pending'} after {timeout:.0f}s")
                    return 1
                time.sleep(2)
    except KeyboardInterrupt:
        print(f"\nl2o: stopped following; the run goes on (flow run {flow_run_id})", file=sys.stderr)
        return 130
    if state.type.value == "COMPLETED":
        print(f"l2o: flow run {flow_run_id} completed in {time.monotonic() - t0:.0f}s", flush=True)
        return 0
    error(f"flow run {flow_run_id} ended {state.name}: {state.message or ''}")
    return 1
