"""Run one stage of ``dvc.yaml`` in-process and log it to MLflow (shared by `l2o run` and `l2o stage`)."""

import importlib
import os
import time
from pathlib import Path

from components.stages.common import MapFn, StageResult, git_commit, serial_map
from components.stages.params import PipelineParams, params_hash
from flows.tracking import Tracker, flatten

__all__ = [
    "RUN_ID_ENV",
    "stage_module",
    "component_versions",
    "stage_param_keys",
    "execute_stage",
    "StageFailed",
    "make_logger",
]


# set while a stage runs: the MLflow run it is logged under (the pipeline run for `l2o run`)
RUN_ID_ENV = "L2O_MLFLOW_RUN_ID"


class StageFailed(RuntimeError):
    """A stage raised: the message names the stage, the params file and the tracking run ids."""


def stage_module(name: str):
    """The module ``components.stages.<name>`` implementing a stage of ``dvc.yaml``."""
    try:
        module = importlib.import_module(f"components.stages.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"components.stages.{name}":
            raise ValueError(
                f"dvc.yaml declares stage {name!r} but there is no module components/stages/{name}.py:"
                " every stage's cmd must be `l2o stage <name>` with a module of that name"
            ) from None
        raise
    if not hasattr(module, "run") or not hasattr(module, "VERSION"):
        raise ValueError(f"components/stages/{name}.py must define run(params, root, ...) and VERSION")
    return module


def component_versions(names: list[str]) -> dict[str, str]:
    return {n: stage_module(n).VERSION for n in names}


def stage_param_keys(repo, name: str) -> list[str]:
    """Top-level params keys stage ``name`` depends on, as declared in ``dvc.yaml``."""
    from dvc.dependency.param import ParamsDependency  # noqa: PLC0415

    stage = next(s for s in repo.index.stages if s.name == name)
    keys: list[str] = []
    for dep in stage.deps:
        if isinstance(dep, ParamsDependency):
            keys += [k.split(".")[0] for k in dep.params]
    return sorted(set(keys))


def make_logger(name: str):
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)

    return log


def execute_stage(
    name: str,
    params: PipelineParams,
    root: Path,
    *,
    tracker: Tracker,
    param_keys: list[str],
    parent_run_id: str | None = None,
    params_file: str = "params.yaml",
    map_fn: MapFn = serial_map,
    extra_tags: dict | None = None,
) -> StageResult:
    """Run stage ``name`` and log it as an MLflow run (nested under ``parent_run_id`` if given)."""
    module = stage_module(name)
    dumped = params.model_dump(mode="json")
    tags = {
        "l2o.stage": name,
        "l2o.component_version": module.VERSION,
        "l2o.params_hash": params_hash(params),
        "l2o.params_file": params_file,
        "git_commit": git_commit(root),
        **{f"dvc.{k}": os.environ[k] for k in ("DVC_STAGE", "DVC_EXP_NAME") if k in os.environ},
        **(extra_tags or {}),
    }
    run_id = tracker.start(name, parent=parent_run_id, tags=tags)
    tracker.log_params(run_id, flatten({k: dumped[k] for k in param_keys if k in dumped}))
    log = make_logger(name)
    # the report names the MLflow run it belongs to: the pipeline's, else this stage's own
    previous = os.environ.get(RUN_ID_ENV)
    os.environ[RUN_ID_ENV] = parent_run_id or run_id
    try:
        result = module.run(params, root, log=log, map_fn=map_fn)
    except BaseException as exc:
        tracker.finish(run_id, "FAILED")
        raise StageFailed(
            f"stage {name!r} failed (params {params_file}, MLflow run {run_id}): {exc.__class__.__name__}: {exc}"
        ) from exc
    finally:
        if previous is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = previous
    tracker.log_metrics(run_id, result.metrics, result.curves)
    tracker.set_tags(run_id, result.tags)
    for path in result.artifacts:
        tracker.log_artifact(run_id, root / path, artifact_path=None if (root / path).is_file() else Path(path).name)
    if result.model_dir is not None:
        from flows.mlflow_models import log_learned_optimizer  # noqa: PLC0415

        uri = log_learned_optimizer(run_id, root / result.model_dir, result.tags["registered_name"])
        tracker.set_tags(run_id, {"l2o.model_uri": uri})
        log(f"{name}: registered learned optimizer {result.tags['registered_name']!r} ({uri})")
    tracker.finish(run_id)
    result.tags["mlflow_run_id"] = run_id
    return result
