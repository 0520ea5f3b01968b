"""Long-running services: ``l2o up`` / ``down`` / ``status`` / ``worker``.

    l2o up     [--host 127.0.0.1] [--prefect-port 4200] [--mlflow-port 5000] [--dvc-remote URL]
               [--workers cpu gpu ...] [--runs-per-gpu N] [--timeout 180]
    l2o down   [--timeout 15]
    l2o status
    l2o worker POOL [--runs-per-gpu N] [--gpu ID] [--limit K] [--name NAME] [--background]

Design:

* ``up`` starts one Prefect server (with its UI) and one MLflow server (``--workers 1``, job execution
  off: 2 processes, ~0.5 GB) in parallel, each detached in its own session (``start_new_session``),
  so that each one's process group can be signalled as a whole and a Ctrl-C in the terminal that
  ran ``l2o up`` does not reach them. Output goes to ``.l2o/logs/<name>.log``. Both health endpoints
  are polled under one overall ``--timeout``; on failure everything started is killed and the log
  tail printed. MLflow stores runs in ``.mlflow/mlflow.db`` and artifacts in ``.mlflow/artifacts``
  (the same store ``l2o run`` uses without a server); Prefect keeps its database in ``PREFECT_HOME``
  (``.prefect`` of the project).
* Then the work pools ``l2o-cpu`` and ``l2o-gpu`` (type ``process``) are created if missing, a DVC
  remote is chosen (``--dvc-remote``, else the project's default remote, else ``.l2o/dvc-remote``,
  configured in ``.dvc/config.local``, never committed), and ``--workers`` starts local process
  workers. Everything is recorded in :data:`STATE_FILE` (written atomically), which ``down`` and
  ``status`` read and :func:`apply_recorded_services` turns into ``PREFECT_API_URL`` /
  ``MLFLOW_TRACKING_URI`` / ``L2O_DVC_REMOTE`` for every other ``l2o`` command (explicit env wins).
* A second ``up`` while the recorded servers live starts no duplicates: it prints what runs and
  starts only the requested workers that are not running yet; asking for other ports or another
  host is refused (exit 2): ``l2o down`` first.
* ``worker`` joins a server from any machine (a GPU host): it needs ``PREFECT_API_URL`` (env or the
  state file) and execs ``prefect worker start`` in the foreground, or with ``--background`` starts it
  detached and records it so ``down`` stops it. Several flow runs can share one GPU through
  :func:`gpu_worker_env` (``--runs-per-gpu``).
* Recorded processes are identified by pid *and* creation time, so a recycled pid is never
  signalled. ``down`` stops workers first (SIGINT: a Prefect worker answers SIGTERM only after
  ~10 s), then the servers (SIGTERM), each group escalated to SIGKILL after the timeout.

This module imports neither JAX nor (at import time) Prefect or MLflow: the processes it starts are
``fork+exec``\\ ed from a process without JAX, and ``l2o`` commands that do not use it pay nothing.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "STATE_FILE",
    "POOLS",
    "add_arguments",
    "cmd_up",
    "cmd_down",
    "cmd_status",
    "cmd_worker",
    "apply_recorded_services",
    "gpu_worker_env",
]

STATE_FILE = Path(".l2o/services.json")
POOLS = {"cpu": "l2o-cpu", "gpu": "l2o-gpu"}
LOG_DIR = Path(".l2o/logs")
DEFAULT_DVC_REMOTE = Path(".l2o/dvc-remote")
DEFAULT_HOST, DEFAULT_PREFECT_PORT, DEFAULT_MLFLOW_PORT = "127.0.0.1", 4200, 5000
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(sub) -> None:
    """Add ``up``, ``down``, ``status`` and ``worker`` to the ``l2o`` subparsers ``sub``."""
    u = sub.add_parser(
        "up",
        help="start the Prefect and MLflow servers (and local workers) in the background",
        description=(
            "Start a Prefect server (with UI) and an MLflow server on the project's stores, detached, logging to"
            f" {LOG_DIR}/; create the work pools {POOLS['cpu']} and {POOLS['gpu']}; choose the DVC remote; record it"
            f" all in {STATE_FILE}, which later l2o commands read (PREFECT_API_URL, MLFLOW_TRACKING_URI and"
            " L2O_DVC_REMOTE set in the environment win). Running it again while the servers run starts no"
            " duplicates. Exit 0 ready, 1 a server failed to start, 2 a port in use or bad options."
        ),
    )
    u.add_argument(
        "--host", default=None, help=f"interface to listen on (default: {DEFAULT_HOST}; 0.0.0.0 for remote workers)"
    )
    u.add_argument(
        "--prefect-port",
        type=int,
        default=None,
        metavar="PORT",
        help=f"Prefect server port (default: {DEFAULT_PREFECT_PORT})",
    )
    u.add_argument(
        "--mlflow-port",
        type=int,
        default=None,
        metavar="PORT",
        help=f"MLflow server port (default: {DEFAULT_MLFLOW_PORT})",
    )
    u.add_argument(
        "--dvc-remote",
        default=None,
        metavar="URL",
        help=f"DVC remote for workers (default: the project's default remote, else {DEFAULT_DVC_REMOTE}/)",
    )
    u.add_argument(
        "--workers",
        nargs="*",
        default=[],
        choices=sorted(POOLS),
        metavar="KIND",
        help="also start local process workers, one per KIND given: cpu and/or gpu (repeat a kind for more)",
    )
    u.add_argument(
        "--runs-per-gpu",
        type=int,
        default=1,
        metavar="N",
        help="flow runs sharing the GPU of a gpu worker (default: 1)",
    )
    u.add_argument(
        "--timeout",
        type=float,
        default=180,
        help="seconds to wait for the servers to be healthy (default: %(default)s)",
    )

    d = sub.add_parser(
        "down",
        help="stop what `l2o up` / `l2o worker --background` started",
        description=(
            f"Stop the workers, then the servers recorded in {STATE_FILE} (SIGINT/SIGTERM to each process group,"
            " SIGKILL after --timeout), and remove the file."
        ),
    )
    d.add_argument(
        "--timeout",
        type=float,
        default=15,
        help="seconds each process gets to exit before SIGKILL (default: %(default)s)",
    )

    sub.add_parser(
        "status",
        help="show the recorded servers and workers, their health, the DVC remote and the work pools",
        description=(
            f"One line per service and worker recorded in {STATE_FILE}: healthy (answers its health check),"
            " running (process alive, no answer) or dead; workers online (polling their pool), running or dead."
            " Exit 0 when the servers are healthy and the workers alive (or nothing is recorded), else 1."
        ),
    )

    w = sub.add_parser(
        "worker",
        help="run a Prefect process worker for a work pool (foreground; --background to detach)",
        description=(
            "Poll a work pool of the Prefect server for flow runs and run them as local processes. The server is"
            f" PREFECT_API_URL, else the one `l2o up` recorded in {STATE_FILE}; flow runs log to MLFLOW_TRACKING_URI"
            " (same rule). On a GPU machine joining a server elsewhere: export PREFECT_API_URL=http://server:4200/api"
            " MLFLOW_TRACKING_URI=http://server:5000, then `l2o worker gpu`."
        ),
    )
    w.add_argument("pool", metavar="POOL", help=f"cpu ({POOLS['cpu']}), gpu ({POOLS['gpu']}) or a work pool name")
    w.add_argument(
        "--runs-per-gpu",
        type=int,
        default=None,
        metavar="N",
        help="flow runs sharing one GPU: no preallocation, each gets ~0.9/N of its memory (default: 1; gpu pool"
        " also defaults --limit to N)",
    )
    w.add_argument("--gpu", default=None, metavar="ID", help="GPU(s) to use: sets CUDA_VISIBLE_DEVICES (unless set)")
    w.add_argument("--limit", type=int, default=None, metavar="K", help="most flow runs at once (default: no limit)")
    w.add_argument("--name", default=None, help="worker name (default: <hostname>-<kind>-<n>)")
    w.add_argument(
        "--background", action="store_true", help=f"detach, log to {LOG_DIR}/, record in {STATE_FILE} for `l2o down`"
    )


def _error(msg: str) -> None:
    print(f"l2o: error: {msg}", file=sys.stderr)


def _warn(msg: str) -> None:
    print(f"l2o: warning: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- state


def _read_state(root: Path) -> dict | None:
    path = root / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _warn(f"cannot read {STATE_FILE} ({exc}); `l2o down` removes it")
        return {}


def _write_state(root: Path, state: dict) -> None:
    path = root / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _same_host(state: dict) -> bool:
    return state.get("hostname", socket.gethostname()) == socket.gethostname()


# ---------------------------------------------------------------------------------------------- processes


def _create_time(pid: int) -> float | None:
    try:
        import psutil  # noqa: PLC0415  (a dependency of Prefect and MLflow)

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001  (no psutil, or already gone)
        return None


def _alive(rec: dict) -> bool:
    """Whether the recorded process still runs (same pid *and* creation time; zombies are dead)."""
    if rec.get("_popen") is not None:  # started by this process: poll() also reaps it
        return rec["_popen"].poll() is None
    pid = rec.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        import psutil  # noqa: PLC0415  (a dependency of Prefect and MLflow)
    except ImportError:  # pragma: no cover
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        recorded = rec.get("create_time")
        return recorded is None or abs(proc.create_time() - recorded) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _spawn(cmd: list[str], log: Path, env: dict, cwd: Path) -> dict:
    """Start ``cmd`` detached (own session, stdin from /dev/null, output to ``log``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return {"pid": proc.pid, "create_time": _create_time(proc.pid), "log": str(log), "_popen": proc}


def _stop(recs: list[dict], sig: int, timeout: float) -> list[dict]:
    """Signal each live process group with ``sig``; SIGKILL what still runs after ``timeout``.

    Returns the records that were alive (and are now stopped)."""
    import psutil  # noqa: PLC0415  (a dependency of Prefect and MLflow)

    live = [r for r in recs if _alive(r)]
    # a worker starts each flow run in a session of its own: those (and what they started) are not in
    # the worker's process group, so they are collected now and stopped after it
    descendants = []
    for r in live:
        try:
            descendants += psutil.Process(r["pid"]).children(recursive=True)
        except psutil.Error:
            pass
    for r in live:
        _signal_group(r["pid"], sig)
    deadline = time.monotonic() + timeout
    second = False
    while any(_alive(r) for r in live) and time.monotonic() < deadline:
        if sig == signal.SIGINT and not second and time.monotonic() > deadline - timeout / 2:
            second = True  # a Prefect worker takes a second SIGINT as "stop now"
            for r in live:
                if _alive(r):
                    _signal_group(r["pid"], signal.SIGINT)
        time.sleep(0.1)
    for r in live:
        if _alive(r):
            _signal_group(r["pid"], signal.SIGKILL)
            r["killed"] = True
    deadline = time.monotonic() + 5
    while any(_alive(r) for r in live) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in descendants if p.is_running()]
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, left = psutil.wait_procs(left, timeout=5)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return live


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # started with start_new_session: the group id is the pid
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _tail(path: str | Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "    (no log)"
    if not text.strip():
        return "    (empty)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------- network


def _local_host(host: str) -> str:
    """Where this machine reaches a server listening on ``host``."""
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


def _public_host(host: str) -> str:
    """Where other machines reach a server listening on ``host``."""
    return socket.getfqdn() if host in WILDCARD_HOSTS else host


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _port_busy(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # like the servers (uvicorn sets it): a port in TIME_WAIT after `l2o down` is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _healthy(url: str, timeout: float = 2.0) -> bool:
    from flows.guard import health_problem  # noqa: PLC0415  (the one HTTP health check; stdlib only)

    return bool(url) and health_problem(url, timeout) is None


def _http_json(url: str, body: dict | None = None, timeout: float = 5.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


# ---------------------------------------------------------------------------------------------- GPU workers


def gpu_worker_env(env: dict, *, runs_per_gpu: int, gpu: str | None) -> dict:
    """The environment a GPU worker (and so its flow runs) should have so ``runs_per_gpu`` runs share a GPU.

    A copy of ``env`` with:

    * ``runs_per_gpu == 1``: JAX's defaults (preallocates 75% of the GPU memory for the one run);
    * ``runs_per_gpu == N > 1``: ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` and
      ``XLA_PYTHON_CLIENT_MEM_FRACTION`` = 0.9/N (3 decimals), so N processes fit on one GPU;
    * ``gpu`` given: ``CUDA_VISIBLE_DEVICES=gpu``.

    Values already set in ``env`` are never overridden (what the user exported wins, including a
    ``CUDA_VISIBLE_DEVICES`` the cluster set). ``env`` itself is not modified.
    """
    if not isinstance(runs_per_gpu, int) or runs_per_gpu < 1:
        raise ValueError(f"runs_per_gpu must be an integer >= 1, not {runs_per_gpu!r}")
    out = dict(env)
    if runs_per_gpu > 1:
        out.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        out.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / runs_per_gpu:.3f}")
    if gpu is not None and str(gpu).strip():
        out.setdefault("CUDA_VISIBLE_DEVICES", str(gpu).strip())
    return out


# ---------------------------------------------------------------------------------------------- env for other commands


def apply_recorded_services(root: Path) -> None:
    """Point this process at the servers ``l2o up`` recorded (``os.environ.setdefault``: explicit env wins).

    Sets ``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI`` and ``L2O_DVC_REMOTE`` when :data:`STATE_FILE`
    records servers that still run; when it records dead ones, warns on stderr and sets nothing.
    """
    state = _read_state(Path(root))
    if not state:
        return
    services = state.get("services", {})
    if not services:
        return
    if _same_host(state):
        up = all(_alive(rec) for rec in services.values())
    else:  # a project folder shared with the machine that ran `l2o up`: pids mean nothing here
        up = all(_healthy(rec["health"]) for rec in services.values() if rec.get("health"))
    if not up:
        _warn(
            f"{STATE_FILE} records servers that no longer run ({', '.join(sorted(services))}):"
            " `l2o down` clears it (then `l2o up` starts them again); using the local stores"
        )
        return
    values = {
        "PREFECT_API_URL": services.get("prefect", {}).get("url"),
        "MLFLOW_TRACKING_URI": services.get("mlflow", {}).get("url"),
        "L2O_DVC_REMOTE": state.get("dvc_remote"),
    }
    for key, value in values.items():
        if value:
            os.environ.setdefault(key, value)


# ---------------------------------------------------------------------------------------------- up


def _dvc_default_remote(root: Path) -> str | None:
    """URL of the project's default DVC remote (any config level), or None."""
    if not (root / ".dvc").is_dir():
        return None
    try:
        from dvc.config import Config  # noqa: PLC0415

        conf = Config(dvc_dir=str(root / ".dvc"))
        name = conf["core"].get("remote")
        return conf["remote"][name]["url"] if name and name in conf["remote"] else None
    except Exception as exc:  # noqa: BLE001  (a broken config: say so, fall back)
        _warn(f"cannot read the DVC config of {root} ({exc}); using {DEFAULT_DVC_REMOTE}")
        return None


def _choose_dvc_remote(root: Path, requested: str | None) -> tuple[str, str]:
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
    cmd = [str(_exe("dvc")[0]), "remote", "add", "--local", "-d", "-f", "l2o", url]
    if not Path(cmd[0]).exists():
        cmd = [sys.executable, "-m", "dvc", *cmd[1:]]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        _warn(f"`dvc remote add --local -d l2o {url}` failed: {proc.stderr.strip()}")
        return url, "not configured in DVC"
    return url, "DVC default remote 'l2o' (.dvc/config.local)"


def _exe(name: str) -> list[str]:
    path = BIN / name
    return [str(path)] if path.exists() else [sys.executable, "-m", name]


def _server_env(extra: dict) -> dict:
    env = dict(os.environ)
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        env.pop(var, None)  # a server must not point at another server
    env.update(extra)
    return env


def _start_servers(root: Path, host: str, pport: int, mport: int) -> dict:
    store = (root / ".mlflow").resolve()
    (store / "artifacts").mkdir(parents=True, exist_ok=True)
    lhost = _local_host(host)
    prefect_cmd = [*_exe("prefect"), "server", "start", "--host", host, "--port", str(pport)]
    mlflow_cmd = [
        *_exe("mlflow"),
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
    if not _is_loopback(host) and not os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        # MLflow answers 403 to Host headers other than localhost / private IPs: allow this machine's names
        names = {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn(), _public_host(host)} - {""}
        mlflow_cmd += ["--allowed-hosts", ",".join(sorted(names | {f"{n}:{mport}" for n in names}))]
    prefect_env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "true"}
    if host in WILDCARD_HOSTS and not os.environ.get("PREFECT_UI_API_URL"):
        # the UI's browser code calls this URL: not http://0.0.0.0:PORT/api
        prefect_env["PREFECT_UI_API_URL"] = f"http://{_public_host(host)}:{pport}/api"
    prefect = _spawn(prefect_cmd, root / LOG_DIR / "prefect.log", _server_env(prefect_env), root)
    mlflow = _spawn(
        mlflow_cmd,
        root / LOG_DIR / "mlflow.log",
        _server_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}),
        root,
    )
    prefect.update(
        port=pport,
        url=f"http://{lhost}:{pport}/api",
        ui=f"http://{lhost}:{pport}",
        health=f"http://{lhost}:{pport}/api/health",
        public_url=f"http://{_public_host(host)}:{pport}/api",
    )
    mlflow.update(
        port=mport,
        url=f"http://{lhost}:{mport}",
        ui=f"http://{lhost}:{mport}",
        health=f"http://{lhost}:{mport}/health",
        public_url=f"http://{_public_host(host)}:{mport}",
    )
    return {"prefect": prefect, "mlflow": mlflow}


def _wait_healthy(services: dict, deadline: float, timeout: float) -> str | None:
    """None when every service answers its health check; else why not."""
    pending = dict(services)
    while pending:
        for name, rec in list(pending.items()):
            if _healthy(rec["health"], timeout=1.0):
                rec["ready_s"] = round(time.monotonic() - rec["_t0"], 1)
                del pending[name]
            elif not _alive(rec):
                return f"the {name} server exited (code {rec['_popen'].returncode}) before answering {rec['health']}"
        if pending and time.monotonic() > deadline:
            names = " and the ".join(f"{n} server" for n in sorted(pending))
            return f"the {names} did not answer the health check within --timeout {timeout:g} s"
        if pending:
            time.sleep(0.25)
    return None


def _ensure_pools(api_url: str) -> list[str]:
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
                    _warn(
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


def _worker_env(state: dict, kind: str | None, runs_per_gpu: int, gpu: str | None) -> dict:
    env = dict(os.environ)
    services = state.get("services", {})
    for key, value in (
        ("PREFECT_API_URL", services.get("prefect", {}).get("url")),
        ("MLFLOW_TRACKING_URI", services.get("mlflow", {}).get("url")),
        ("L2O_DVC_REMOTE", state.get("dvc_remote")),
        ("L2O_WORKSPACES", state.get("workspaces")),
    ):
        if value:
            env.setdefault(key, value)
    env.setdefault("L2O_WORKSPACES", _workspaces())
    if kind == "gpu" or gpu is not None or runs_per_gpu > 1:
        env = gpu_worker_env(env, runs_per_gpu=runs_per_gpu, gpu=gpu)
    return env


def _workspaces() -> str:
    return os.environ.get("L2O_WORKSPACES") or str(Path("~/.cache/l2o/workspaces").expanduser())


def _pool_name(pool: str) -> tuple[str, str | None]:
    """(work pool name, kind) for ``cpu``, ``gpu``, or a pool name."""
    if pool in POOLS:
        return POOLS[pool], pool
    kind = next((k for k, v in POOLS.items() if v == pool), None)
    return pool, kind


def _worker_name(state: dict, kind: str) -> str:
    used = {w.get("name") for w in state.get("workers", [])}
    host = socket.gethostname().split(".")[0] or "host"
    n = 1
    while f"{host}-{kind}-{n}" in used:
        n += 1
    return f"{host}-{kind}-{n}"


def _worker_cmd(pool: str, name: str, limit: int | None) -> list[str]:
    cmd = [*_exe("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name]
    cmd += ["--install-policy", "never"]  # a process worker needs no packages; never prompt
    return cmd + (["--limit", str(limit)] if limit else [])


def _start_worker(root: Path, state: dict, pool: str, kind: str | None, name: str, limit, env: dict) -> dict:
    rec = _spawn(_worker_cmd(pool, name, limit), root / LOG_DIR / f"worker-{name}.log", env, root)
    rec.update(name=name, pool=pool, kind=kind, limit=limit, api_url=env.get("PREFECT_API_URL"))
    for key in ("CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
        if key in env and env.get(key) != os.environ.get(key):
            rec.setdefault("env", {})[key] = env[key]
    return rec


def _wait_workers(workers: list[dict], api_url: str, deadline: float) -> list[str]:
    """Wait until each started worker is registered in its pool; returns problems (empty: all online)."""
    pending = list(workers)
    while pending and time.monotonic() < deadline:
        for w in list(pending):
            if not _alive(w):
                pending.remove(w)
                w["problem"] = (
                    f"worker {w['name']} exited (code {w['_popen'].returncode}); log {w['log']}:\n{_tail(w['log'])}"
                )
            elif w["name"] in _online_workers(api_url, w["pool"]):
                pending.remove(w)
        if pending:
            time.sleep(0.5)
    problems = [w["problem"] for w in workers if "problem" in w]
    problems += [f"worker {w['name']} did not register in pool {w['pool']} in time; log {w['log']}" for w in pending]
    return problems


def _online_workers(api_url: str, pool: str) -> list[str]:
    try:
        rows = _http_json(f"{api_url}/work_pools/{_q(pool)}/workers/filter", {}, timeout=3)
    except (OSError, ValueError):
        return []
    return [r.get("name") for r in rows if str(r.get("status", "")).upper() == "ONLINE"]


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _public(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def cmd_up(args, root: Path) -> int:
    root = Path(root).resolve()
    host = args.host if args.host is not None else DEFAULT_HOST
    pport = args.prefect_port if args.prefect_port is not None else DEFAULT_PREFECT_PORT
    mport = args.mlflow_port if args.mlflow_port is not None else DEFAULT_MLFLOW_PORT
    kinds = list(args.workers or [])
    runs_per_gpu = getattr(args, "runs_per_gpu", 1) or 1
    for opt, port in (("--prefect-port", pport), ("--mlflow-port", mport)):
        if not 0 < port < 65536:
            _error(f"{opt} {port} is not a port number (1-65535)")
            return 2
    if pport == mport:
        _error(f"--prefect-port and --mlflow-port are both {pport}: give them different ports")
        return 2
    if runs_per_gpu < 1:
        _error(f"--runs-per-gpu must be >= 1, not {runs_per_gpu}")
        return 2

    state = _read_state(root)
    keep: list[dict] = []
    if state:
        if not _same_host(state):
            _error(
                f"{STATE_FILE} records servers started on {state.get('hostname')}: run `l2o down` there,"
                " or point this machine at them with PREFECT_API_URL / MLFLOW_TRACKING_URI"
            )
            return 2
        services = state.get("services", {})
        alive = {name: _alive(rec) for name, rec in services.items()}
        if alive and all(alive.values()):
            return _already_up(root, state, args, host, pport, mport, kinds, runs_per_gpu)
        if any(alive.values()):
            dead = ", ".join(n for n, a in alive.items() if not a)
            _error(f"{STATE_FILE}: the {dead} server is dead while the others run: `l2o down`, then `l2o up`")
            return 1
        if services:
            print(f"l2o: {STATE_FILE} records servers that no longer run: replacing it", file=sys.stderr)
        keep = [w for w in state.get("workers", []) if _alive(w)]  # e.g. `l2o worker --background` before `up`

    for opt, port in (("--prefect-port", pport), ("--mlflow-port", mport)):
        if _port_busy(host, port):
            _error(
                f"port {port} on {host} is in use ({opt}): stop what listens there, or choose another port,"
                f" e.g. `l2o up {opt} {port + 1}`"
            )
            return 2

    t0 = time.monotonic()
    deadline = t0 + args.timeout
    print(
        f"l2o: starting the Prefect server (port {pport}) and the MLflow server (port {mport}) on {host} ...",
        flush=True,
    )
    services = _start_servers(root, host, pport, mport)
    for rec in services.values():
        rec["_t0"] = t0
    problem = _wait_healthy(services, deadline, args.timeout)
    if problem:
        _stop(list(services.values()), signal.SIGTERM, 10)
        _error(problem)
        for name, rec in services.items():
            print(f"--- {name} log ({rec['log']}), last lines:\n{_tail(rec['log'])}", file=sys.stderr)
        print(
            f"l2o: nothing left running; a slow machine may need more time: `l2o up --timeout {int(args.timeout * 2)}`",
            file=sys.stderr,
        )
        return 1
    try:
        created = _ensure_pools(services["prefect"]["url"])
    except Exception as exc:  # noqa: BLE001  (the server answers health but not the API: stop, explain)
        _stop(list(services.values()), signal.SIGTERM, 10)
        _error(f"cannot create the work pools on {services['prefect']['url']}: {exc}; log {services['prefect']['log']}")
        return 1
    dvc_remote, how = _choose_dvc_remote(root, args.dvc_remote)
    state = {
        "version": 1,
        "root": str(root),
        "hostname": socket.gethostname(),
        "host": host,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "services": {name: _public(rec) for name, rec in services.items()},
        "dvc_remote": dvc_remote,
        "workspaces": _workspaces(),
        "pools": dict(POOLS),
        "workers": [],
    }
    _write_state(root, state)
    url = services["prefect"]["url"]
    stale = [w for w in keep if w.get("api_url") != url]
    if stale:  # they poll a server that is gone
        _stop(stale, signal.SIGINT, 10)
    state["workers"] = [w for w in keep if w.get("api_url") == url]
    if state["workers"]:
        _write_state(root, state)
    pr, ml = services["prefect"], services["mlflow"]
    print(f"l2o: Prefect server {pr['ui']} (API {pr['url']}), healthy after {pr['ready_s']}s; log {pr['log']}")
    print(f"l2o: MLflow server  {ml['ui']} (store .mlflow/), healthy after {ml['ready_s']}s; log {ml['log']}")
    print(
        f"l2o: work pools {', '.join(POOLS.values())} (process)"
        + (f"; created {', '.join(created)}" if created else "; already there")
    )
    print(f"l2o: DVC remote {dvc_remote} ({how})")
    rc = _start_workers(root, state, kinds, runs_per_gpu, deadline)
    _print_exports(state)
    return rc


def _start_workers(root: Path, state: dict, kinds: list[str], runs_per_gpu: int, deadline: float) -> int:
    if not kinds:
        return 0
    started = []
    for kind in kinds:
        name = _worker_name(state, kind)
        env = _worker_env(state, kind, runs_per_gpu if kind == "gpu" else 1, None)
        limit = runs_per_gpu if kind == "gpu" else None
        rec = _start_worker(root, state, POOLS[kind], kind, name, limit, env)
        started.append(rec)
        state["workers"].append(_public(rec))
        _write_state(root, state)  # recorded at once: `l2o down` stops it even if this process dies now
    problems = _wait_workers(started, state["services"]["prefect"]["url"], max(deadline, time.monotonic() + 30))
    for w in started:
        if "problem" not in w:
            print(f"l2o: worker {w['name']} polls {w['pool']} (pid {w['pid']}); log {w['log']}")
    for p in problems:
        _error(p)
    return 1 if problems else 0


def _print_exports(state: dict) -> None:
    pr, ml = state["services"]["prefect"], state["services"]["mlflow"]
    print("l2o: every l2o command in this project now uses these servers; elsewhere (other shells, a GPU machine):")
    print(f"  export PREFECT_API_URL={pr['public_url']} MLFLOW_TRACKING_URI={ml['public_url']}")
    if _is_loopback(state["host"]):
        print(f"  (listening on {state['host']} only: `l2o down && l2o up --host 0.0.0.0` for other machines)")
    print("  then `l2o worker gpu` on the GPU machine; `l2o status` shows what runs, `l2o down` stops it")


def _already_up(root, state, args, host, pport, mport, kinds, runs_per_gpu) -> int:
    services = state["services"]
    asked = {
        "--host": (args.host, state.get("host")),
        "--prefect-port": (args.prefect_port, services["prefect"].get("port")),
        "--mlflow-port": (args.mlflow_port, services["mlflow"].get("port")),
    }
    differ = [
        f"{opt} {want} (running: {have})" for opt, (want, have) in asked.items() if want is not None and want != have
    ]
    if differ:
        _error(
            f"the servers already run ({STATE_FILE}) and you asked for {', '.join(differ)}:"
            " `l2o down` first to restart them elsewhere"
        )
        return 2
    if args.dvc_remote and args.dvc_remote != state.get("dvc_remote"):
        _warn(
            f"the servers already run with DVC remote {state.get('dvc_remote')}:"
            " --dvc-remote ignored (`l2o down` first)"
        )
    print(f"l2o: already running (started {state.get('started')}, {STATE_FILE}):")
    for line in _status_lines(state)[0]:
        print(line)
    # start only the requested workers that do not run yet (per kind: as many as asked)
    live = [w for w in state.get("workers", []) if _alive(w)]
    missing = []
    for kind in sorted(set(kinds)):
        have = sum(1 for w in live if w.get("kind") == kind)
        missing += [kind] * max(0, kinds.count(kind) - have)
    rc = 0
    if missing:
        state["workers"] = live
        rc = _start_workers(root, state, missing, runs_per_gpu, time.monotonic() + args.timeout)
    _print_exports(state)
    return rc


# ---------------------------------------------------------------------------------------------- down


def cmd_down(args, root: Path) -> int:
    root = Path(root).resolve()
    state = _read_state(root)
    if state is None:
        print(f"l2o: nothing running ({STATE_FILE} records nothing)")
        return 0
    if state and not _same_host(state):
        _error(f"{STATE_FILE} records services of {state.get('hostname')}: run `l2o down` there")
        return 2
    timeout = getattr(args, "timeout", 15)
    workers = list(state.get("workers", []))
    servers = [dict(rec, name=name) for name, rec in state.get("services", {}).items()]
    stopped = _stop(workers, signal.SIGINT, timeout)  # a Prefect worker waits >10 s on SIGTERM
    stopped += _stop(servers, signal.SIGTERM, timeout)
    (root / STATE_FILE).unlink(missing_ok=True)
    for rec in stopped:
        kind = f"worker {rec['name']} ({rec.get('pool')})" if "pool" in rec else f"{rec['name']} server"
        print(f"l2o: stopped {kind}, pid {rec['pid']}" + (" (killed)" if rec.get("killed") else ""))
    gone = [r for r in workers + servers if r not in stopped]
    if gone:
        print(f"l2o: already gone: {', '.join(r.get('name', '?') for r in gone)}")
    print(f"l2o: removed {STATE_FILE}")
    return 0


# ---------------------------------------------------------------------------------------------- status


def _status_lines(state: dict) -> tuple[list[str], bool]:
    """(lines, every server healthy and every worker alive)."""
    lines, ok = [], True
    same_host = _same_host(state)
    for name, rec in state.get("services", {}).items():
        healthy = _healthy(rec.get("health", ""), timeout=2)
        alive = _alive(rec) if same_host else healthy
        ok &= healthy
        st = "healthy" if healthy else ("running" if alive else "dead")
        lines.append(f"  {name:<8} {rec.get('ui', rec.get('url', '')):<30} pid {rec.get('pid', '?'):<8} {st}")
    online: dict[tuple[str, str], list[str]] = {}
    for w in state.get("workers", []):
        alive = _alive(w) if same_host else True
        ok &= alive
        key = (w.get("api_url") or "", w.get("pool") or "")
        if alive and key[0] and key not in online:
            online[key] = _online_workers(key[0].rstrip("/"), key[1])
        st = ("online" if w.get("name") in online.get(key, []) else "running") if alive else "dead"
        lines.append(
            f"  worker   {w.get('name', '?'):<30} pid {w.get('pid', '?'):<8} {st}"
            f"  (pool {w.get('pool')}{', limit ' + str(w['limit']) if w.get('limit') else ''})"
        )
    return lines, ok


def cmd_status(args, root: Path) -> int:
    del args
    root = Path(root).resolve()
    state = _read_state(root)
    if state is None:
        print("l2o: nothing running (`l2o up` starts the Prefect and MLflow servers, `l2o worker` a worker)")
        return 0
    if not state:
        return 1
    lines, ok = _status_lines(state)
    print(f"l2o: services of {state.get('hostname')} (started {state.get('started')}, {STATE_FILE}):")
    for line in lines:
        print(line)
    print(f"  DVC remote  {state.get('dvc_remote')}")
    print(f"  workspaces  {state.get('workspaces')}")
    api = state.get("services", {}).get("prefect", {}).get("url")
    for kind, pool in state.get("pools", POOLS).items():
        extra = ""
        if api:
            try:
                info = _http_json(f"{api}/work_pools/{_q(pool)}", timeout=3)
                rows = _http_json(f"{api}/work_pools/{_q(pool)}/workers/filter", {}, timeout=3)
                online = sum(1 for r in rows if str(r.get("status", "")).upper() == "ONLINE")
                extra = f"type {info.get('type')}, {online} worker{'s' if online != 1 else ''} online"
            except urllib.error.HTTPError as exc:
                extra = "missing on the server" if exc.code == 404 else f"HTTP {exc.code}"
            except (OSError, ValueError):
                extra = "server not answering"
        print(f"  pool {kind:<4} {pool:<10} {extra}")
    if not ok:
        print(
            "l2o: something recorded is dead or not answering (its log is in .l2o/logs/):"
            " `l2o down` stops and clears it all, then `l2o up` starts again"
        )
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------- worker


def cmd_worker(args, root: Path) -> int:
    root = Path(root).resolve()
    pool, kind = _pool_name(args.pool)
    runs = args.runs_per_gpu if args.runs_per_gpu is not None else 1
    if runs < 1:
        _error(f"--runs-per-gpu must be >= 1, not {runs}")
        return 2
    if args.limit is not None and args.limit < 1:
        _error(f"--limit must be >= 1, not {args.limit}")
        return 2
    apply_recorded_services(root)
    state = _read_state(root) or {}
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        _error(
            "no Prefect server known (PREFECT_API_URL unset, nothing recorded in"
            f" {STATE_FILE}): start the servers with `l2o up` here, or export PREFECT_API_URL=http://server:4200/api"
        )
        return 2
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        _warn(
            "MLFLOW_TRACKING_URI is unset: flow runs of this worker log to this checkout's .mlflow/ store;"
            " export MLFLOW_TRACKING_URI=http://server:5000 to track on the server"
        )
    gpu_like = kind == "gpu" or args.gpu is not None or runs > 1
    if args.gpu is not None and os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, str(args.gpu)):
        _warn(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} is set and wins over --gpu {args.gpu}")
    limit = args.limit if args.limit is not None else (runs if gpu_like and runs > 1 else None)
    env = _worker_env(state, kind, runs, args.gpu) if gpu_like else _worker_env(state, None, 1, None)
    name = args.name or _worker_name(state, kind or pool)
    if not _healthy(f"{api.rstrip('/')}/health", timeout=5):
        _warn(f"the Prefect server {api} does not answer now; the worker keeps retrying")
    if not args.background:
        cmd = _worker_cmd(pool, name, limit)
        print(
            f"l2o: worker {name} polls {pool} on {api}" + (f" (limit {limit})" if limit else "") + "; Ctrl-C stops it",
            flush=True,
        )
        os.execvpe(cmd[0], cmd, env)
        return 0  # not reached
    rec = _start_worker(root, state, pool, kind, name, limit, env)
    state.setdefault("hostname", socket.gethostname())
    state.setdefault("workers", []).append(rec)
    problems = _wait_workers([rec], api.rstrip("/"), time.monotonic() + 60)
    state["workers"] = [_public(w) for w in state["workers"]]
    _write_state(root, state)
    if problems:
        for p in problems:
            _error(p)
        return 1
    print(f"l2o: worker {name} polls {pool} on {api} (pid {rec['pid']}); log {rec['log']}; `l2o down` stops it")
    return 0
