"""MLflow glue: store location, runs with explicit ids (thread-safe), batched metric histories."""

import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["configure", "tracking_uri", "Tracker", "flatten"]


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store inside the project (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root) / '.mlflow' / 'mlflow.db').resolve()}"


def configure(root: Path) -> str:
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    import mlflow  # noqa: PLC0415

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested dict -> ``{"a.b.c": "value"}`` (lists rendered as JSON-ish strings)."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = str(obj)
    return out


class Tracker:
    """Explicit-run-id MLflow logging (safe from any thread; no fluent active-run state)."""

    def __init__(self, root: Path, experiment_name: str):
        from mlflow.tracking import MlflowClient  # noqa: PLC0415

        self.uri = configure(root)
        self.client = MlflowClient(self.uri, self.uri)
        exp = self.client.get_experiment_by_name(experiment_name)
        if exp is None:
            artifacts = None
            if self.uri.startswith("sqlite:///"):
                artifacts = (Path(root) / ".mlflow" / "artifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment_name, artifact_location=artifacts)
        else:
            self.experiment_id = exp.experiment_id
        self.root = str(Path(root).resolve())
        self.reap_orphans()

    def start(self, name: str, *, parent: str | None = None, tags: dict | None = None) -> str:
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        # who runs it, so that the next command can tell a run whose process was killed (reap_orphans)
        tags.update({OWNER_ROOT: self.root, OWNER_HOST: socket.gethostname(), OWNER_PROCESS: _process_id()})
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def reap_orphans(self, log=print) -> list[str]:
        """Mark KILLED this project's RUNNING runs (on this host) whose process is gone; returns their ids.

        A run killed by SIGKILL, OOM or a power cut never reaches :meth:`finish` and would stay RUNNING in
        MLflow forever. Every run records its owner (project root, host, pid + process start time); the next
        command in the same project on the same host ends the runs whose owner no longer exists, with a tag
        saying why. Runs of other hosts or projects are left alone (their processes cannot be checked here).
        """
        query = f"attributes.status = 'RUNNING' and tags.`{OWNER_HOST}` = '{socket.gethostname()}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000)
        reaped = []
        for run in runs:
            tags = run.data.tags
            owner = tags.get(OWNER_PROCESS)
            if tags.get(OWNER_ROOT) != self.root or owner is None or _process_alive(owner):
                continue
            self.client.set_tag(run.info.run_id, "l2o.ended_by", f"process {owner} was gone: marked KILLED later")
            self.client.set_terminated(run.info.run_id, "KILLED")
            reaped.append(run.info.run_id)
        if reaped:
            log(f"l2o: marked {len(reaped)} MLflow run(s) KILLED whose process is gone: {', '.join(reaped)}")
        return reaped

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param  # noqa: PLC0415

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag  # noqa: PLC0415

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, tags=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], curves: dict[str, list] | None = None) -> None:
        """Scalars and whole metric histories, in batches of at most 1000 points."""
        from mlflow.entities import Metric  # noqa: PLC0415

        now = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), now, 0) for k, v in metrics.items()]
        for name, points in (curves or {}).items():
            items += [Metric(_key(name), float(v), now, int(s)) for s, v in points]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path or path.name)
        elif path.exists():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


OWNER_ROOT, OWNER_HOST, OWNER_PROCESS = "l2o.owner.root", "l2o.owner.host", "l2o.owner.process"


def _process_id() -> str:
    """``"<pid>@<start time>"`` of this process: the start time tells a reused pid from the run's owner."""
    return f"{os.getpid()}@{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:  # Linux: field 22 of /proc/<pid>/stat, the start time in clock ticks after boot
        return open(f"/proc/{pid}/stat", encoding="ascii").read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _process_alive(owner: str) -> bool:
    pid_text, _, started = owner.partition("@")
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True  # unreadable or another user's: do not touch it
    return started == "?" or _start_time(pid) in (started, "?")


def _key(name: str) -> str:
    # MLflow metric names allow alphanumerics, _ - . / and spaces
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)
