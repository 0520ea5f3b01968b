"""The Prefect and MLflow servers of `l2o up`: started detached, waited for, and what they need around them.

* :func:`start_servers` starts one Prefect server (with its UI) and one MLflow server (``--workers 1``, job
  execution off: 2 processes, ~0.5 GB) in parallel, each detached in its own session, so that each one's
  process group can be signalled as a whole and a Ctrl-C in the terminal that ran ``l2o up`` does not reach
  them. Output goes to ``.l2o/logs/<name>.log``. MLflow stores runs in ``.mlflow/mlflow.db`` and artifacts in
  ``.mlflow/artifacts`` (the same store ``l2o run`` uses without a server); Prefect keeps its database in
  ``PREFECT_HOME`` (``.prefect`` of the project).
* :func:`wait_healthy` polls both health endpoints under one overall deadline.
* :func:`ensure_pools` creates the ``process`` work pools ``l2o-cpu`` and ``l2o-gpu`` if missing.
* :func:`choose_dvc_remote` picks the DVC remote workers share (``--dvc-remote``, else the project's default
  remote, else ``.l2o/dvc-remote``, configured in ``.dvc/config.local``, never committed).
"""

import os
import socket
import time
from pathlib import Path

from flows.team.common import POOLS, dvc_command, executable, remote_add_args, run, warn
from flows.team.network import WILDCARD_HOSTS, healthy, is_loopback, local_host, public_host
from flows.team.processes import alive, spawn
from flows.team.state import LOG_DIR

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PREFECT_PORT",
    "DEFAULT_MLFLOW_PORT",
    "DEFAULT_DVC_REMOTE",
    "start_servers",
    "wait_healthy",
    "ensure_pools",
    "choose_dvc_remote",
]

DEFAULT_HOST, DEFAULT_PREFECT_PORT, DEFAULT_MLFLOW_PORT = "127.0.0.1", 4200, 5000
DEFAULT_DVC_REMOTE = Path(".l2o/dvc-remote")


def _dvc_default_remote(root: Path) -> str | None:
    """URL of the project's default DVC remote (any config level), or None."""
    if not (root / ".dvc").is_dir():
        return None
    try:
        from dvc.config import Config  # noqa: PLC0415

        from flows.dvc_glue import default_remote_url  # noqa: PLC0415

        return default_remote_url(Config(dvc_dir=str(root / ".dvc")))
    except Exception as exc:  # noqa: BLE001  (a broken config: say so, fall back)
        warn(f"cannot read the DVC config of {root} ({exc}); using {DEFAULT_DVC_REMOTE}")
        return None


def choose_dvc_remote(root: Path, requested: str | None) -> tuple[str, str]:
    """(url, how) for L2O_DVC_REMOTE; configures ``l2o`` in .dvc/config.local when the project has no default."""
    configured = _dvc_default_remote(root)
    if requested:
        url = requested
        if "://" not in url:
            url = str(Path(url).expanduser().resolve())
    elif configured:
        return configured, "the project's default DVC remote"
    else:
        path = (root / DEFAULT_DVC_REMOTE).resolve()
        path.mkdir(parents=True, exist_ok=True)
        url = str(path)
    if configured or not (root / ".dvc").is_dir():
        return url, "--dvc-remote" if requested else "default"
    proc = run(dvc_command(*remote_add_args(url)), cwd=root)
    if proc.returncode != 0:
        warn(f"`dvc remote add --local -d l2o {url}` failed: {proc.stderr.strip()}")
        return url, "not configured in DVC"
    return url, "DVC default remote 'l2o' (.dvc/config.local)"


def _server_env(extra: dict) -> dict:
    env = dict(os.environ)
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        env.pop(var, None)  # a server must not point at another server
    env.update(extra)
    return env


def _addresses(host: str, port: int, api: str, health: str) -> dict:
    """A server's port and URLs: ``url`` (API), ``ui``, ``health`` from here; ``public_url`` from elsewhere."""
    here, there = f"http://{local_host(host)}:{port}", f"http://{public_host(host)}:{port}"
    return {"port": port, "url": here + api, "ui": here, "health": here + health, "public_url": there + api}


def start_servers(root: Path, host: str, pport: int, mport: int) -> dict:
    """Start both servers detached; ``{"prefect": record, "mlflow": record}`` with their ports and URLs."""
    store = (root / ".mlflow").resolve()
    (store / "artifacts").mkdir(parents=True, exist_ok=True)
    prefect_cmd = [*executable("prefect"), "server", "start", "--host", host, "--port", str(pport)]
    mlflow_cmd = [
        *executable("mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        host,
        "--port",
        str(mport),
        "--workers",
        "1",
    ]
    if not is_loopback(host) and not os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        # MLflow answers 403 to Host headers other than localhost / private IPs: allow this machine's names
        names = {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn(), public_host(host)} - {""}
        mlflow_cmd += ["--allowed-hosts", ",".join(sorted(names | {f"{n}:{mport}" for n in names}))]
    prefect_env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "true"}
    if host in WILDCARD_HOSTS and not os.environ.get("PREFECT_UI_API_URL"):
        # the UI's browser code calls this URL: not http://0.0.0.0:PORT/api
        prefect_env["PREFECT_UI_API_URL"] = f"http://{public_host(host)}:{pport}/api"
    prefect = spawn(prefect_cmd, root / LOG_DIR / "prefect.log", _server_env(prefect_env), root)
    mlflow = spawn(
        mlflow_cmd,
        root / LOG_DIR / "mlflow.log",
        _server_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}),
        root,
    )
    prefect.update(_addresses(host, pport, "/api", "/api/health"))
    mlflow.update(_addresses(host, mport, "", "/health"))
    return {"prefect": prefect, "mlflow": mlflow}


def wait_healthy(services: dict, deadline: float, timeout: float) -> str | None:
    """None when every service answers its health check; else why not."""
    pending = dict(services)
    while pending:
        for name, rec in list(pending.items()):
            if healthy(rec["health"], timeout=1.0):
                rec["ready_s"] = round(time.monotonic() - rec["_t0"], 1)
                del pending[name]
            elif not alive(rec):
                return f"the {name} server exited (code {rec['_popen'].returncode}) before answering {rec['health']}"
        if pending and time.monotonic() > deadline:
            names = " and the ".join(f"{n} server" for n in sorted(pending))
            return f"the {names} did not answer the health check within --timeout {timeout:g} s"
        if pending:
            time.sleep(0.25)
    return None


def ensure_pools(api_url: str) -> list[str]:
    """Create the ``process`` work pools of :data:`POOLS` that do not exist; returns the names created."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.client.schemas.actions import WorkPoolCreate  # noqa: PLC0415
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound  # noqa: PLC0415
    from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: PLC0415
    from prefect.workers.process import ProcessWorker  # noqa: PLC0415

    created = []
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for kind, name in POOLS.items():
            try:
                pool = client.read_work_pool(name)
                if pool.type != "process":
                    warn(
                        f"work pool {name} exists with type {pool.type!r}, not 'process':"
                        f" `l2o worker {kind}` needs a process pool"
                    )
                continue
            except ObjectNotFound:
                pass
            template = ProcessWorker.get_default_base_job_template()
            try:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=name,
                        type="process",
                        base_job_template=template,
                        description=f"l2o {kind} workers (`l2o worker {kind}`)",
                    )
                )
                created.append(name)
            except ObjectAlreadyExists:
                pass
    return created
