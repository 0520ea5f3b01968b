"""Checks made before any stage runs: one run per repository, reachable tracking and orchestration servers.

* **Repository lock.** Two ``l2o run`` (or ``l2o stage``) processes in one project would write the same
  outputs, ``dvc.lock`` and checkpoints. :func:`repository_lock` takes an exclusive ``flock`` on
  ``.l2o/run.lock`` for the whole command and refuses at once, naming the process that holds it, when
  another one runs. The kernel drops the lock when that process ends, however it ends, so a killed
  run never leaves a stale lock behind.
* **Servers.** When ``MLFLOW_TRACKING_URI`` (or ``PREFECT_API_URL``) points at a server, it is asked
  for its health a few times (bounded retries) before anything runs; if it does not answer, the
  command stops with an error naming the URL and the fix, and nothing has been written. A local
  SQLite store is checked for a writable folder instead.
"""

import contextlib
import fcntl
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = [
    "LOCK_FILE",
    "RepositoryBusy",
    "ServiceUnavailable",
    "repository_lock",
    "check_services",
    "health_problem",
]

LOCK_FILE = Path(".l2o") / "run.lock"


class RepositoryBusy(RuntimeError):
    """Another l2o process holds this repository's run lock."""


class ServiceUnavailable(RuntimeError):
    """A tracking or orchestration server does not answer (the message says which and what to do)."""


@contextlib.contextmanager
def repository_lock(root: Path, command: str):
    """Hold ``<root>/.l2o/run.lock`` exclusively while the block runs (RepositoryBusy if taken)."""
    path = Path(root) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            raise RepositoryBusy(
                f"another l2o command is running in {root} ({holder}): two runs in one repository would overwrite"
                " each other's outputs, dvc.lock and checkpoints. Wait for it to finish (or stop it), or run the"
                " second experiment in another clone or with `l2o submit` (each team run gets its own workspace)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": command, "since": time.time()}).encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "its details are not written yet"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')}, `l2o {info.get('command')}`, since {since}"


def health_problem(url: str, timeout: float) -> str | None:
    """None if ``url`` answers 2xx, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - a URL the user configured
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError, ValueError) as err:
        return str(getattr(err, "reason", err))


def _check(url: str, what: str, fix: str, retries: int, delay: float, timeout: float) -> None:
    reason = None
    for attempt in range(retries):
        reason = health_problem(url, timeout)
        if reason is None:
            return
        if attempt + 1 < retries:
            time.sleep(delay)
    raise ServiceUnavailable(
        f"{what} at {url} does not answer ({reason}; {retries} tries over {delay * (retries - 1):.0f}s): {fix}."
        " Nothing was run or written"
    )


def check_services(root: Path, *, retries: int | None = None, delay: float = 2.0, timeout: float = 5.0) -> None:
    """ServiceUnavailable unless the configured MLflow store and Prefect API can be used.

    ``retries`` defaults to ``L2O_SERVICE_RETRIES`` or 3.
    """
    retries = max(1, int(os.environ.get("L2O_SERVICE_RETRIES", "3")) if retries is None else retries)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://")):
        _check(
            uri.rstrip("/") + "/health",
            "the MLflow tracking server (MLFLOW_TRACKING_URI)",
            "start it (`l2o up` on the server machine), fix MLFLOW_TRACKING_URI, or unset it to use the project's"
            " local store",
            retries,
            delay,
            timeout,
        )
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not os.access(folder if folder.exists() else folder.parent, os.W_OK):
            raise ServiceUnavailable(f"the MLflow store {uri} is not writable: fix MLFLOW_TRACKING_URI or the folder")
    api = os.environ.get("PREFECT_API_URL", "")
    if api.startswith(("http://", "https://")):
        _check(
            api.rstrip("/") + "/health",
            "the Prefect API (PREFECT_API_URL)",
            "start the server (`l2o up`), fix PREFECT_API_URL, or unset it to use a local temporary API",
            retries,
            delay,
            timeout,
        )
