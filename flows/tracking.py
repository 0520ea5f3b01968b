"""MLflow glue: store location, runs with explicit ids (thread-safe), batched metric histories.

A SQLite store shared by several processes or clones is made safe here: its schema migrations are serialised
by a file lock beside the database (two processes opening a fresh store used to crash in alembic), and an
experiment whose artifacts live in another project's folder is refused with the fix instead of silently
filling (and later losing with) that folder. ``L2O_MLFLOW_ARTIFACT_ROOT`` names an explicit artifact root that
several projects may share.
"""

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["configure", "tracking_uri", "Tracker", "flatten", "StoreUnsafe", "ARTIFACT_ROOT_ENV", "experiment_url"]

ARTIFACT_ROOT_ENV = "L2O_MLFLOW_ARTIFACT_ROOT"
# the experiment tag MLflow 3's UI reads to choose its view: the classic runs table, not the GenAI (traces) one
EXPERIMENT_KIND_TAG, CLASSIC_ML = "mlflow.experimentKind", "custom_model_development"
_OPENED: set[str] = set()  # SQLite stores this process has opened (their schema is set up)
# a saved view of the runs table (MLflow's "shared view", an experiment tag): the headline columns that the
# pipeline runs carry (flows.model_links) beside the defaults; `l2o ui` prints the URL that opens it
VIEW_KEY = "l2o"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_STATE = json.dumps(
    {
        "selectedColumns": [
            "attributes.`Models`",
            *(f"metrics.`{m}`" for m in ("speedup_iqm", "beats_adam_fraction", "test_acc")),
        ]
    }
)


def experiment_url(base: str, experiment_id: str) -> str:
    """The runs table of an experiment in MLflow 3's UI: the classic (model training) view, l2o's columns."""
    query = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


class StoreUnsafe(RuntimeError):
    """The tracking store cannot be used safely as configured (the message says why and what to do)."""


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store inside the project (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root) / '.mlflow' / 'mlflow.db').resolve()}"


def configure(root: Path) -> str:
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri(root)
    import mlflow  # noqa: PLC0415

    if uri.startswith("sqlite:///") and uri not in _OPENED:
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with _migration_lock(db):  # the first use creates or migrates the schema: one process at a time
            from mlflow.tracking import MlflowClient  # noqa: PLC0415

            client = MlflowClient(uri, uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        _OPENED.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@contextlib.contextmanager
def _migration_lock(db: Path, log=print):
    """An exclusive ``flock`` on ``<db>.lock`` while this process opens (and maybe migrates) the store. The
    kernel drops it when its holder ends, however it ends, so waiting for it cannot hang on a dead process."""
    path = db.with_name(db.name + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"l2o: waiting for another process to create or migrate the MLflow store {db}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_artifact_location(location: str, root: Path, name: str, uri: str) -> None:
    """Refuse an experiment whose (local) artifacts live in another project's folder."""
    if not location.startswith("file:") and "://" in location:
        return  # a server's or an object store's location: not another clone's folder
    from urllib.parse import unquote, urlparse  # noqa: PLC0415

    folder = Path(unquote(urlparse(location).path) if location.startswith("file:") else location).resolve()
    mine = [(Path(root) / ".mlflow").resolve()]
    if os.environ.get(ARTIFACT_ROOT_ENV):
        mine.append(Path(os.environ[ARTIFACT_ROOT_ENV]).resolve())
    if any(folder == m or folder.is_relative_to(m) for m in mine):
        return
    raise StoreUnsafe(
        f"MLflow experiment {name!r} of the store {uri} keeps its artifacts in {folder}, another project's folder:"
        " this project's models and reports would be written there (and lost with it). Share a tracking server"
        " instead (`l2o up` there, then MLFLOW_TRACKING_URI=http://host:5000), use another experiment_name, or"
        f" set {ARTIFACT_ROOT_ENV} to a folder every project sharing this store can reach (it must hold {folder})"
    )


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
            if os.environ.get(ARTIFACT_ROOT_ENV):  # an explicit root: one folder per experiment in it
                artifacts = (Path(os.environ[ARTIFACT_ROOT_ENV]) / experiment_name).resolve().as_uri()
            elif self.uri.startswith("sqlite:///"):  # the project's own folder
                artifacts = (Path(root) / ".mlflow" / "artifacts").resolve().as_uri()
            self.experiment_id = self._create(experiment_name, artifacts)
        else:
            db = Path(self.uri.removeprefix("sqlite:///")) if self.uri.startswith("sqlite:///") else None
            if db is not None and not db.resolve().is_relative_to(Path(root).resolve()):  # a store shared by clones
                _check_artifact_location(exp.artifact_location, Path(root), experiment_name, self.uri)
            self.experiment_id = exp.experiment_id
            for key, value in ((EXPERIMENT_KIND_TAG, CLASSIC_ML), (VIEW_TAG, VIEW_STATE)):  # made by an older l2o
                if exp.tags.get(key) != value:
                    self.client.set_experiment_tag(self.experiment_id, key, value)
        self.root = str(Path(root).resolve())
        self.reap_orphans()

    def _create(self, name: str, artifacts: str | None) -> str:
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        try:  # tagged for MLflow 3's UI to open its classic ML view (runs table), not the GenAI one
            kind = {EXPERIMENT_KIND_TAG: CLASSIC_ML, VIEW_TAG: VIEW_STATE}
            return self.client.create_experiment(name, artifact_location=artifacts, tags=kind)
        except MlflowException:  # another process created it in between: use theirs (checked like any other)
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

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
