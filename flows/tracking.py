"""MLflow glue: store location, runs with explicit ids (thread-safe), batched metric histories."""

import os
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

    def start(self, name: str, *, parent: str | None = None, tags: dict | None = None) -> str:
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

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


def _key(name: str) -> str:
    # MLflow metric names allow alphanumerics, _ - . / and spaces
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)
