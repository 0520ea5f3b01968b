"""Detached processes (servers, workers) recorded by pid *and* creation time, so a recycled pid is never signalled.

A record is a dict: ``pid``, ``create_time``, ``log`` and, in the process that started it, ``_popen``
(keys starting with ``_`` are never written to the state file: :func:`public`).
"""

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["create_time", "alive", "spawn", "stop", "signal_group", "tail", "public"]


def create_time(pid: int) -> float | None:
    try:
        import psutil  # noqa: PLC0415  (a dependency of Prefect and MLflow)

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001  (no psutil, or already gone)
        return None


def alive(rec: dict) -> bool:
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


def spawn(cmd: list[str], log: Path, env: dict, cwd: Path) -> dict:
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
    return {"pid": proc.pid, "create_time": create_time(proc.pid), "log": str(log), "_popen": proc}


def stop(recs: list[dict], sig: int, timeout: float) -> list[dict]:
    """Signal each live process group with ``sig``; SIGKILL what still runs after ``timeout``.

    Returns the records that were alive (and are now stopped)."""
    import psutil  # noqa: PLC0415  (a dependency of Prefect and MLflow)

    live = [r for r in recs if alive(r)]
    # a worker starts each flow run in a session of its own: those (and what they started) are not in
    # the worker's process group, so they are collected now and stopped after it
    descendants = []
    for r in live:
        try:
            descendants += psutil.Process(r["pid"]).children(recursive=True)
        except psutil.Error:
            pass
    for r in live:
        signal_group(r["pid"], sig)
    deadline = time.monotonic() + timeout
    second = False
    while any(alive(r) for r in live) and time.monotonic() < deadline:
        if sig == signal.SIGINT and not second and time.monotonic() > deadline - timeout / 2:
            second = True  # a Prefect worker takes a second SIGINT as "stop now"
            for r in live:
                if alive(r):
                    signal_group(r["pid"], signal.SIGINT)
        time.sleep(0.1)
    for r in live:
        if alive(r):
            signal_group(r["pid"], signal.SIGKILL)
            r["killed"] = True
    deadline = time.monotonic() + 5
    while any(alive(r) for r in live) and time.monotonic() < deadline:
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


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # started with start_new_session: the group id is the pid
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def tail(path: str | Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log, indented (or why there are none)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "    (no log)"
    if not text.strip():
        return "    (empty)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def public(rec: dict) -> dict:
    """The record without this process's private keys (``_popen``, ``_t0``): what the state file keeps."""
    return {k: v for k, v in rec.items() if not k.startswith("_")}
