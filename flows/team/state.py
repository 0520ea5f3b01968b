"""The record of what `l2o up` / `l2o worker --background` started: :data:`STATE_FILE`, and what it means for
every other ``l2o`` command (:func:`apply_recorded_services`).

The file holds the servers (pid, creation time, URLs, log), the workers, the DVC remote, the work pools and
the workspaces folder; it is written atomically and read by ``l2o down`` and ``l2o status``.
"""

import json
import os
import socket
from pathlib import Path

from flows.team.common import warn
from flows.team.network import healthy
from flows.team.processes import alive

__all__ = [
    "STATE_FILE",
    "LOG_DIR",
    "read_state",
    "write_state",
    "same_host",
    "data_mirror_setting",
    "apply_recorded_services",
]

STATE_FILE = Path(".l2o/services.json")
LOG_DIR = Path(".l2o/logs")


def read_state(root: Path) -> dict | None:
    """The recorded state; None when nothing is recorded, {} when the file cannot be read (with a warning)."""
    path = root / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        warn(f"cannot read {STATE_FILE} ({exc}); `l2o down` removes it")
        return {}


def write_state(root: Path, state: dict) -> None:
    path = root / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def same_host(state: dict) -> bool:
    return state.get("hostname", socket.gethostname()) == socket.gethostname()


def data_mirror_setting(root: Path) -> str | None:
    """What ``l2o up`` records as the workers' dataset mirror: the absolute folder this clone reads (or
    ``none`` when ``L2O_DATA_MIRROR=none`` asks for downloads); None when there is no mirror."""
    from components.stages.fetch import MIRROR_ENV, NO_MIRROR, resolve_mirror  # noqa: PLC0415

    if os.environ.get(MIRROR_ENV, "").strip().lower() == NO_MIRROR:
        return NO_MIRROR
    mirror = resolve_mirror(Path(root))
    return str(Path(mirror).resolve()) if mirror is not None else None


def apply_recorded_services(root: Path) -> None:
    """Point this process at the servers ``l2o up`` recorded (``os.environ.setdefault``: explicit env wins).

    Sets ``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``, ``L2O_DVC_REMOTE`` and ``L2O_DATA_MIRROR`` (the dataset
    mirror of the clone that ran ``l2o up``) when :data:`STATE_FILE`
    records servers that still run; when it records dead ones, warns on stderr and sets nothing.
    """
    state = read_state(Path(root))
    if not state:
        return
    services = state.get("services", {})
    if not services:
        return
    if same_host(state):
        up = all(alive(rec) for rec in services.values())
    else:  # a project folder shared with the machine that ran `l2o up`: pids mean nothing here
        up = all(healthy(rec["health"]) for rec in services.values() if rec.get("health"))
    if not up:
        warn(
            f"{STATE_FILE} records servers that no longer run ({', '.join(sorted(services))}):"
            " `l2o down` clears it (then `l2o up` starts them again); using the local stores"
        )
        return
    values = {
        "PREFECT_API_URL": services.get("prefect", {}).get("url"),
        "MLFLOW_TRACKING_URI": services.get("mlflow", {}).get("url"),
        "L2O_DVC_REMOTE": state.get("dvc_remote"),
        "L2O_DATA_MIRROR": state.get("data_mirror"),
    }
    for key, value in values.items():
        if value:
            os.environ.setdefault(key, value)
