"""Prefect process workers: `l2o worker POOL`, and the local workers `l2o up --workers` starts.

``worker`` joins a server from any machine (a GPU host): it needs ``PREFECT_API_URL`` (env or the state
file) and execs ``prefect worker start`` in the foreground, or with ``--background`` starts it detached and
records it so ``down`` stops it. Several flow runs can share one GPU through :func:`gpu_worker_env`
(``--runs-per-gpu``).
"""

import os
import socket
import time
from pathlib import Path

from flows.team.common import POOLS, error, executable, warn, workspaces_setting
from flows.team.network import healthy, online_workers
from flows.team.processes import alive, public, spawn, tail
from flows.team.state import LOG_DIR, STATE_FILE, apply_recorded_services, read_state, write_state

__all__ = ["add_arguments", "cmd_worker", "gpu_worker_env", "start_workers"]


def add_arguments(sub) -> None:
    """Add ``worker`` to the ``l2o`` subparsers ``sub``."""
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


def _worker_env(state: dict, kind: str | None, runs_per_gpu: int, gpu: str | None) -> dict:
    env = dict(os.environ)
    services = state.get("services", {})
    for key, value in (
        ("PREFECT_API_URL", services.get("prefect", {}).get("url")),
        ("MLFLOW_TRACKING_URI", services.get("mlflow", {}).get("url")),
        ("L2O_DVC_REMOTE", state.get("dvc_remote")),
        ("L2O_WORKSPACES", state.get("workspaces")),
        ("L2O_DATA_MIRROR", state.get("data_mirror")),
    ):
        if value:
            env.setdefault(key, value)
    env.setdefault("L2O_WORKSPACES", workspaces_setting())
    if kind == "gpu" or gpu is not None or runs_per_gpu > 1:
        env = gpu_worker_env(env, runs_per_gpu=runs_per_gpu, gpu=gpu)
    return env


def mirror_problem(env: dict) -> str | None:
    """Why a worker with environment ``env`` would not find the datasets (None: it will). A worker's flow runs
    happen in workspaces where ``../shared/datasets`` does not resolve, so they use ``L2O_DATA_MIRROR``: the
    mirror ``l2o up`` recorded, or the worker's own environment."""
    from components.stages.fetch import MIRROR_ENV, NO_MIRROR  # noqa: PLC0415

    mirror = env.get(MIRROR_ENV)
    if mirror and mirror.strip().lower() != NO_MIRROR and not Path(mirror).is_dir():
        return (
            f"the dataset mirror {mirror} (L2O_DATA_MIRROR, or what `l2o up` recorded in {STATE_FILE}) is not a"
            " folder on this machine: export L2O_DATA_MIRROR=<this machine's copy of shared/datasets>"
            " (or L2O_DATA_MIRROR=none to download) and start the worker again"
        )
    return None


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
    cmd = [*executable("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name]
    cmd += ["--install-policy", "never"]  # a process worker needs no packages; never prompt
    return cmd + (["--limit", str(limit)] if limit else [])


def _start_worker(root: Path, state: dict, pool: str, kind: str | None, name: str, limit, env: dict) -> dict:
    rec = spawn(_worker_cmd(pool, name, limit), root / LOG_DIR / f"worker-{name}.log", env, root)
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
            if not alive(w):
                pending.remove(w)
                w["problem"] = (
                    f"worker {w['name']} exited (code {w['_popen'].returncode}); log {w['log']}:\n{tail(w['log'])}"
                )
            elif w["name"] in online_workers(api_url, w["pool"]):
                pending.remove(w)
        if pending:
            time.sleep(0.5)
    problems = [w["problem"] for w in workers if "problem" in w]
    problems += [f"worker {w['name']} did not register in pool {w['pool']} in time; log {w['log']}" for w in pending]
    return problems


def start_workers(root: Path, state: dict, kinds: list[str], runs_per_gpu: int, deadline: float) -> int:
    """Start one local worker per entry of ``kinds`` (cpu / gpu) for the servers of ``state``, recording each
    in the state file at once; 0 when all are online in their pools, else 1 (the problems printed)."""
    if not kinds:
        return 0
    started = []
    for kind in kinds:
        name = _worker_name(state, kind)
        env = _worker_env(state, kind, runs_per_gpu if kind == "gpu" else 1, None)
        limit = runs_per_gpu if kind == "gpu" else None
        rec = _start_worker(root, state, POOLS[kind], kind, name, limit, env)
        started.append(rec)
        state["workers"].append(public(rec))
        write_state(root, state)  # recorded at once: `l2o down` stops it even if this process dies now
    problems = _wait_workers(started, state["services"]["prefect"]["url"], max(deadline, time.monotonic() + 30))
    for w in started:
        if "problem" not in w:
            print(f"l2o: worker {w['name']} polls {w['pool']} (pid {w['pid']}); log {w['log']}")
    for p in problems:
        error(p)
    return 1 if problems else 0


def cmd_worker(args, root: Path) -> int:
    root = Path(root).resolve()
    pool, kind = _pool_name(args.pool)
    runs = args.runs_per_gpu if args.runs_per_gpu is not None else 1
    if runs < 1:
        error(f"--runs-per-gpu must be >= 1, not {runs}")
        return 2
    if args.limit is not None and args.limit < 1:
        error(f"--limit must be >= 1, not {args.limit}")
        return 2
    apply_recorded_services(root)
    state = read_state(root) or {}
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        error(
            "no Prefect server known (PREFECT_API_URL unset, nothing recorded in"
            f" {STATE_FILE}): start the servers with `l2o up` here, or export PREFECT_API_URL=http://server:4200/api"
        )
        return 2
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        warn(
            "MLFLOW_TRACKING_URI is unset: flow runs of this worker log to this checkout's .mlflow/ store;"
            " export MLFLOW_TRACKING_URI=http://server:5000 to track on the server"
        )
    gpu_like = kind == "gpu" or args.gpu is not None or runs > 1
    if args.gpu is not None and os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, str(args.gpu)):
        warn(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} is set and wins over --gpu {args.gpu}")
    limit = args.limit if args.limit is not None else (runs if gpu_like and runs > 1 else None)
    env = _worker_env(state, kind, runs, args.gpu) if gpu_like else _worker_env(state, None, 1, None)
    problem = mirror_problem(env)
    if problem:
        error(problem)
        return 2
    name = args.name or _worker_name(state, kind or pool)
    if not healthy(f"{api.rstrip('/')}/health", timeout=5):
        warn(f"the Prefect server {api} does not answer now; the worker keeps retrying")
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
    state["workers"] = [public(w) for w in state["workers"]]
    write_state(root, state)
    if problems:
        for p in problems:
            error(p)
        return 1
    print(f"l2o: worker {name} polls {pool} on {api} (pid {rec['pid']}); log {rec['log']}; `l2o down` stops it")
    return 0
