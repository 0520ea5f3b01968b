"""`l2o up` / `l2o down` / `l2o status`: the team's servers and local workers on this machine.

    l2o up     [--host 127.0.0.1] [--prefect-port 4200] [--mlflow-port 5000] [--dvc-remote URL]
               [--workers cpu gpu ...] [--runs-per-gpu N] [--timeout 180]
    l2o down   [--timeout 15]
    l2o status

Design:

* ``up`` starts the Prefect and MLflow servers (:mod:`flows.team.servers`) and polls both health
  endpoints under one overall ``--timeout``; on failure everything started is killed and the log tail
  printed. Then the work pools are created if missing, the DVC remote is chosen, and ``--workers``
  starts local process workers (:mod:`flows.team.workers`). Everything is recorded in the state file
  (:mod:`flows.team.state`), which ``down`` and ``status`` read and which points every other ``l2o``
  command at the servers.
* A second ``up`` while the recorded servers live starts no duplicates: it prints what runs and
  starts only the requested workers that are not running yet; asking for other ports or another
  host is refused (exit 2): ``l2o down`` first.
* ``down`` stops workers first (SIGINT: a Prefect worker answers SIGTERM only after ~10 s), then the
  servers (SIGTERM), each group escalated to SIGKILL after the timeout (:mod:`flows.team.processes`).

This module imports neither JAX nor (at import time) Prefect or MLflow: the processes it starts are
``fork+exec``\\ ed from a process without JAX, and ``l2o`` commands that do not use it pay nothing.
"""

import signal
import socket
import sys
import time
import urllib.error
from datetime import UTC, datetime
from pathlib import Path

from flows.team.common import POOLS, error, warn, workspaces_setting
from flows.team.network import healthy, http_json, is_loopback, online_names, online_workers, port_busy, quote
from flows.team.processes import alive, public, stop, tail
from flows.team.servers import (
    DEFAULT_DVC_REMOTE,
    DEFAULT_HOST,
    DEFAULT_MLFLOW_PORT,
    DEFAULT_PREFECT_PORT,
    choose_dvc_remote,
    ensure_pools,
    start_servers,
    wait_healthy,
)
from flows.team.state import LOG_DIR, STATE_FILE, data_mirror_setting, read_state, same_host, write_state
from flows.team.workers import start_workers

__all__ = ["add_arguments", "cmd_up", "cmd_down", "cmd_status"]


def add_arguments(sub) -> None:
    """Add ``up``, ``down`` and ``status`` to the ``l2o`` subparsers ``sub``."""
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


def cmd_up(args, root: Path) -> int:
    root = Path(root).resolve()
    host = args.host if args.host is not None else DEFAULT_HOST
    pport = args.prefect_port if args.prefect_port is not None else DEFAULT_PREFECT_PORT
    mport = args.mlflow_port if args.mlflow_port is not None else DEFAULT_MLFLOW_PORT
    kinds = list(args.workers or [])
    runs_per_gpu = getattr(args, "runs_per_gpu", 1) or 1
    for opt, port in (("--prefect-port", pport), ("--mlflow-port", mport)):
        if not 0 < port < 65536:
            error(f"{opt} {port} is not a port number (1-65535)")
            return 2
    if pport == mport:
        error(f"--prefect-port and --mlflow-port are both {pport}: give them different ports")
        return 2
    if runs_per_gpu < 1:
        error(f"--runs-per-gpu must be >= 1, not {runs_per_gpu}")
        return 2
    try:
        mirror = data_mirror_setting(root)
    except FileNotFoundError as exc:  # L2O_DATA_MIRROR names no folder: nothing started
        error(str(exc))
        return 2

    state = read_state(root)
    keep: list[dict] = []
    if state:
        if not same_host(state):
            error(
                f"{STATE_FILE} records servers started on {state.get('hostname')}: run `l2o down` there,"
                " or point this machine at them with PREFECT_API_URL / MLFLOW_TRACKING_URI"
            )
            return 2
        services = state.get("services", {})
        running = {name: alive(rec) for name, rec in services.items()}
        if running and all(running.values()):
            return _already_up(root, state, args, host, pport, mport, kinds, runs_per_gpu)
        if any(running.values()):
            dead = ", ".join(n for n, a in running.items() if not a)
            error(f"{STATE_FILE}: the {dead} server is dead while the others run: `l2o down`, then `l2o up`")
            return 1
        if services:
            print(f"l2o: {STATE_FILE} records servers that no longer run: replacing it", file=sys.stderr)
        keep = [w for w in state.get("workers", []) if alive(w)]  # e.g. `l2o worker --background` before `up`

    for opt, port in (("--prefect-port", pport), ("--mlflow-port", mport)):
        if port_busy(host, port):
            error(
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
    services = start_servers(root, host, pport, mport)
    for rec in services.values():
        rec["_t0"] = t0
    problem = wait_healthy(services, deadline, args.timeout)
    if problem:
        stop(list(services.values()), signal.SIGTERM, 10)
        error(problem)
        for name, rec in services.items():
            print(f"--- {name} log ({rec['log']}), last lines:\n{tail(rec['log'])}", file=sys.stderr)
        print(
            f"l2o: nothing left running; a slow machine may need more time: `l2o up --timeout {int(args.timeout * 2)}`",
            file=sys.stderr,
        )
        return 1
    try:
        created = ensure_pools(services["prefect"]["url"])
    except Exception as exc:  # noqa: BLE001  (the server answers health but not the API: stop, explain)
        stop(list(services.values()), signal.SIGTERM, 10)
        error(f"cannot create the work pools on {services['prefect']['url']}: {exc}; log {services['prefect']['log']}")
        return 1
    dvc_remote, how = choose_dvc_remote(root, args.dvc_remote)
    state = {
        # workers run in workspaces where the clone's ../shared/datasets does not resolve: they get this one
        "data_mirror": mirror,
        "version": 1,
        "root": str(root),
        "hostname": socket.gethostname(),
        "host": host,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "services": {name: public(rec) for name, rec in services.items()},
        "dvc_remote": dvc_remote,
        "workspaces": workspaces_setting(),
        "pools": dict(POOLS),
        "workers": [],
    }
    write_state(root, state)
    url = services["prefect"]["url"]
    stale = [w for w in keep if w.get("api_url") != url]
    if stale:  # they poll a server that is gone
        stop(stale, signal.SIGINT, 10)
    state["workers"] = [w for w in keep if w.get("api_url") == url]
    if state["workers"]:
        write_state(root, state)
    pr, ml = services["prefect"], services["mlflow"]
    print(f"l2o: Prefect server {pr['ui']} (API {pr['url']}), healthy after {pr['ready_s']}s; log {pr['log']}")
    print(f"l2o: MLflow server  {ml['ui']} (store .mlflow/), healthy after {ml['ready_s']}s; log {ml['log']}")
    print(
        f"l2o: work pools {', '.join(POOLS.values())} (process)"
        + (f"; created {', '.join(created)}" if created else "; already there")
    )
    print(f"l2o: DVC remote {dvc_remote} ({how})")
    print(f"l2o: dataset mirror for the workers: {state['data_mirror'] or 'none found (they download)'}")
    rc = start_workers(root, state, kinds, runs_per_gpu, deadline)
    _print_exports(state)
    return rc


def _print_exports(state: dict) -> None:
    pr, ml = state["services"]["prefect"], state["services"]["mlflow"]
    print("l2o: every l2o command in this project now uses these servers; elsewhere (other shells, a GPU machine):")
    print(f"  export PREFECT_API_URL={pr['public_url']} MLFLOW_TRACKING_URI={ml['public_url']}")
    if is_loopback(state["host"]):
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
        error(
            f"the servers already run ({STATE_FILE}) and you asked for {', '.join(differ)}:"
            " `l2o down` first to restart them elsewhere"
        )
        return 2
    if args.dvc_remote and args.dvc_remote != state.get("dvc_remote"):
        warn(
            f"the servers already run with DVC remote {state.get('dvc_remote')}:"
            " --dvc-remote ignored (`l2o down` first)"
        )
    print(f"l2o: already running (started {state.get('started')}, {STATE_FILE}):")
    for line in _status_lines(state)[0]:
        print(line)
    # start only the requested workers that do not run yet (per kind: as many as asked)
    live = [w for w in state.get("workers", []) if alive(w)]
    missing = []
    for kind in sorted(set(kinds)):
        have = sum(1 for w in live if w.get("kind") == kind)
        missing += [kind] * max(0, kinds.count(kind) - have)
    rc = 0
    if missing:
        state["workers"] = live
        rc = start_workers(root, state, missing, runs_per_gpu, time.monotonic() + args.timeout)
    _print_exports(state)
    return rc


def cmd_down(args, root: Path) -> int:
    root = Path(root).resolve()
    state = read_state(root)
    if state is None:
        print(f"l2o: nothing running ({STATE_FILE} records nothing)")
        return 0
    if state and not same_host(state):
        error(f"{STATE_FILE} records services of {state.get('hostname')}: run `l2o down` there")
        return 2
    timeout = getattr(args, "timeout", 15)
    workers = list(state.get("workers", []))
    servers = [dict(rec, name=name) for name, rec in state.get("services", {}).items()]
    stopped = stop(workers, signal.SIGINT, timeout)  # a Prefect worker waits >10 s on SIGTERM
    stopped += stop(servers, signal.SIGTERM, timeout)
    (root / STATE_FILE).unlink(missing_ok=True)
    for rec in stopped:
        kind = f"worker {rec['name']} ({rec.get('pool')})" if "pool" in rec else f"{rec['name']} server"
        print(f"l2o: stopped {kind}, pid {rec['pid']}" + (" (killed)" if rec.get("killed") else ""))
    gone = [r for r in workers + servers if r not in stopped]
    if gone:
        print(f"l2o: already gone: {', '.join(r.get('name', '?') for r in gone)}")
    print(f"l2o: removed {STATE_FILE}")
    return 0


def _status_lines(state: dict) -> tuple[list[str], bool]:
    """(lines, every server healthy and every worker alive)."""
    lines, ok = [], True
    local = same_host(state)
    for name, rec in state.get("services", {}).items():
        answers = healthy(rec.get("health", ""), timeout=2)
        running = alive(rec) if local else answers
        ok &= answers
        st = "healthy" if answers else ("running" if running else "dead")
        lines.append(f"  {name:<8} {rec.get('ui', rec.get('url', '')):<30} pid {rec.get('pid', '?'):<8} {st}")
    online: dict[tuple[str, str], list[str]] = {}
    for w in state.get("workers", []):
        running = alive(w) if local else True
        ok &= running
        key = (w.get("api_url") or "", w.get("pool") or "")
        if running and key[0] and key not in online:
            online[key] = online_workers(key[0].rstrip("/"), key[1])
        st = ("online" if w.get("name") in online.get(key, []) else "running") if running else "dead"
        lines.append(
            f"  worker   {w.get('name', '?'):<30} pid {w.get('pid', '?'):<8} {st}"
            f"  (pool {w.get('pool')}{', limit ' + str(w['limit']) if w.get('limit') else ''})"
        )
    return lines, ok


def cmd_status(args, root: Path) -> int:
    del args
    root = Path(root).resolve()
    state = read_state(root)
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
                info = http_json(f"{api}/work_pools/{quote(pool)}", timeout=3)
                rows = http_json(f"{api}/work_pools/{quote(pool)}/workers/filter", {}, timeout=3)
                online = len(online_names(rows))
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
