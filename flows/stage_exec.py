"""Run one stage of ``dvc.yaml`` in-process and log it to MLflow (shared by `l2o run` and `l2o stage`).

A stage gets everything from here as arguments: its params, the project root and a
:class:`~components.stages.common.StageContext` (:func:`stage_context`) holding the log, the fan-out map, the
MLflow run its outputs belong to, whether to resume, and the meta-training hook. The two settings that come from
the environment are read here, in orchestration, never by a stage:

* ``L2O_RESUME=1`` (:data:`RESUME_ENV`): resume meta-training from its checkpoints; ``l2o run --resume`` and
  ``l2o stage --resume`` set it, and ``L2O_RESUME=1 dvc repro`` reaches the ``l2o stage`` commands through it;
* ``L2O_FAULT_KILL_AT_OUTER_STEP=n`` (:data:`FAULT_ENV`, for failure tests): meta-training's process is killed
  with SIGKILL after outer step ``n`` (:func:`fault_hook`), as a crash would, to test ``--resume``.
"""

import importlib
import os
import signal
import time
from pathlib import Path

from components.stages.common import Logger, MapFn, OuterStepHook, StageContext, StageResult, git_commit, serial_map
from components.stages.params import PipelineParams, params_hash
from flows.tracking import Tracker, flatten

__all__ = [
    "RESUME_ENV",
    "FAULT_ENV",
    "stage_module",
    "component_versions",
    "stage_param_keys",
    "stage_context",
    "fault_hook",
    "execute_stage",
    "StageFailed",
    "make_logger",
]

RESUME_ENV = "L2O_RESUME"
FAULT_ENV = "L2O_FAULT_KILL_AT_OUTER_STEP"


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
        raise ValueError(f"components/stages/{name}.py must define run(params, root, context) and VERSION")
    return module


def component_versions(names: list[str]) -> dict[str, str]:
    return {n: stage_module(n).VERSION for n in names}


def stage_param_keys(repo, name: str) -> list[str]:
    """Top-level params keys stage ``name`` depends on, as declared in ``dvc.yaml``."""
    from dvc.dependency.param import ParamsDependency  # noqa: PLC0415

    from flows.dvc_glue import stage_by_name  # noqa: PLC0415

    stage = stage_by_name(repo, name)
    keys: list[str] = []
    for dep in stage.deps:
        if isinstance(dep, ParamsDependency):
            keys += [k.split(".")[0] for k in dep.params]
    return sorted(set(keys))


def fault_hook(log: Logger) -> OuterStepHook | None:
    """The meta-training hook that ``$L2O_FAULT_KILL_AT_OUTER_STEP`` asks for, or ``None`` when it is unset / 0.

    The hook kills this process with SIGKILL once ``steps done >= n`` and the run is not finished (it is called
    after the checkpoint of that step, so the last checkpoint is the one before it when ``checkpoint_every``
    does not divide ``n``).

    Raises:
      ValueError: if the variable is not an integer.
    """
    raw = os.environ.get(FAULT_ENV, "0") or "0"
    try:
        at = int(raw)
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={raw!r}: expected an outer step number (an integer), or unset it") from None
    if not at:
        return None

    def kill(done: int, total: int) -> None:
        if done >= at and done < total:
            log(f"meta_train: {FAULT_ENV}={at}: killing this process at outer step {done}")
            os.kill(os.getpid(), signal.SIGKILL)

    return kill


def stage_context(log: Logger, *, map_fn: MapFn = serial_map, run_id: str | None = None, resume: bool | None = None):
    """The :class:`StageContext` of a stage run by ``l2o run`` / ``l2o stage`` (and so by ``dvc repro``).

    Args:
      log: the stage's log.
      map_fn: its fan-out (``flows.runners.prefect_map`` for the stages that fan out).
      run_id: the MLflow run the stage's outputs belong to.
      resume: resume meta-training; ``None`` reads ``$L2O_RESUME`` (``1`` resumes).
    """
    resume = os.environ.get(RESUME_ENV) == "1" if resume is None else resume
    return StageContext(log=log, map_fn=map_fn, resume=resume, run_id=run_id, on_outer_step=fault_hook(log))


def make_logger(name: str):
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)

    return log


def _warn_fresh_over_checkpoint(root: Path, log: Logger) -> None:
    """One line when meta-training starts over although an earlier run left a checkpoint (say how to resume)."""
    from components.meta.checkpoint import read_header  # noqa: PLC0415
    from components.stages.paths import CHECKPOINT_DIR  # noqa: PLC0415

    for path in sorted((Path(root) / CHECKPOINT_DIR).glob("*.npz")):
        try:
            step = read_header(path)["step"]
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is overwritten like any other
            step = "?"
        log(
            f"meta_train: {path.relative_to(root)} holds an earlier run's state at outer step {step}; this run starts"
            " over and overwrites it. To continue that run instead, stop this one and use `l2o run --resume`"
            " (or `l2o stage meta_train --resume`, `L2O_RESUME=1 dvc repro`)"
        )
        return


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
    resume: bool | None = None,
    materialize_zoo: bool = True,
) -> StageResult:
    """Run stage ``name`` and log it as an MLflow run (nested under ``parent_run_id`` if given).

    The stage's context (:func:`stage_context`) names ``parent_run_id`` (the pipeline's run), else this stage's
    own run, as the run its outputs belong to; ``resume`` ``None`` reads ``$L2O_RESUME``. ``materialize_zoo``:
    check out missing zoo entries before evaluate (``l2o run`` does it once, before it takes DVC's lock).
    """
    module = stage_module(name)
    if name == "evaluate" and materialize_zoo:  # e.g. `l2o stage evaluate` on a fresh clone: every zoo entry
        from flows.zoo import materialize  # noqa: PLC0415

        materialize(root, log=print)
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
    try:
        # the report names the MLflow run it belongs to: the pipeline's, else this stage's own
        context = stage_context(log, map_fn=map_fn, run_id=parent_run_id or run_id, resume=resume)
        if name == "meta_train" and not context.resume:
            _warn_fresh_over_checkpoint(root, log)
        result = module.run(params, root, context)
    except BaseException as exc:
        tracker.finish(run_id, "FAILED")
        raise StageFailed(
            f"stage {name!r} failed (params {params_file}, MLflow run {run_id}): {exc.__class__.__name__}: {exc}"
        ) from exc
    tracker.log_metrics(run_id, result.metrics, result.curves)
    tracker.set_tags(run_id, result.tags)
    for path in result.artifacts:
        tracker.log_artifact(run_id, root / path, artifact_path=None if (root / path).is_file() else Path(path).name)
    if result.model_dir is not None:
        from flows.mlflow_models import log_learned_optimizer  # noqa: PLC0415
        from flows.model_links import weights_tags  # noqa: PLC0415

        uri = log_learned_optimizer(run_id, root / result.model_dir, result.tags["registered_name"])
        tracker.set_tags(run_id, {"l2o.model_uri": uri, **weights_tags(root)})  # evaluate runs find it by content
        log(f"{name}: registered learned optimizer {result.tags['registered_name']!r} ({uri})")
    if name == "evaluate":  # which training run and model it evaluated
        from flows.model_links import headline_metrics, link_evaluation, promote_champion  # noqa: PLC0415

        links = link_evaluation(tracker, root)
        tracker.set_tags(run_id, links)
        if parent_run_id is None:  # `l2o stage evaluate` (dvc repro); `l2o run` promotes when it finishes
            promote_champion(tracker, links, headline_metrics(root).get("speedup_iqm"), params_hash(params), log=log)
    zoo_entries = params.evaluate.zoo if name == "evaluate" else []
    if zoo_entries:  # zoo entries are registered in MLflow the first time the pipeline uses them
        from flows import zoo  # noqa: PLC0415

        tracker.set_tags(run_id, {f"l2o.zoo.{e}": zoo.register(root, e, log=log) for e in zoo_entries})
    tracker.finish(run_id)
    result.tags["mlflow_run_id"] = run_id
    return result
