"""Prefect task runners for stages that fan out (evaluation), chosen by ``evaluate.runner`` in params.

``threads`` runs the Prefect tasks in a thread pool of the pipeline process (XLA releases the GIL);
``dask`` runs them on a Dask cluster through ``prefect-dask``: a ``LocalCluster`` of worker processes
started for the stage (``spawn``ed, so never a fork after JAX started), or an existing scheduler
given by ``address``, whose workers must be able to import this project and read the project
directory (the same checkout on a shared file system).
"""

import itertools
import threading
from collections.abc import Callable
from typing import Any

from components.stages.params import PipelineParams

__all__ = ["FANOUT_STAGES", "task_runner", "prefect_map", "run_as_flow"]

# stages whose work is fanned out as Prefect tasks (their ``map_fn``)
FANOUT_STAGES = ("evaluate",)


def task_runner(params: PipelineParams):
    """The Prefect task runner ``params.evaluate.runner`` describes."""
    r = params.evaluate.runner
    if r.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner  # noqa: PLC0415

        return ThreadPoolTaskRunner(max_workers=r.max_workers) if r.max_workers else ThreadPoolTaskRunner()
    try:
        from prefect_dask import DaskTaskRunner  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RuntimeError(
            "evaluate.runner.kind: dask needs prefect-dask (a dependency of this project: run `make setup`)"
        ) from exc
    if r.address:
        return DaskTaskRunner(address=r.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": r.n_workers,
            "threads_per_worker": r.threads_per_worker,
            "processes": True,
            "dashboard_address": None,
        },
    )


def prefect_map(fn, items) -> list[Any]:
    """``map_fn`` for stages: every item becomes a Prefect task run of the current flow's task runner.

    ``fn`` must be a module-level function and the items picklable when the runner uses processes
    (Dask); a task run is named after ``item.task`` when the item has one.
    """
    from prefect import task  # noqa: PLC0415
    from prefect.cache_policies import NO_CACHE  # noqa: PLC0415

    items = list(items)
    t = task(fn, name=getattr(fn, "__name__", "fan-out"), cache_policy=NO_CACHE, persist_result=False)
    futures = [
        t.with_options(task_run_name=str(getattr(item, "task", f"item-{i}"))).submit(item)
        for i, item in enumerate(items)
    ]
    return [f.result() for f in futures]


# Remote task runners (Dask) pickle the calling flow -- its function and parameters -- with every
# task they submit. A stage's flow therefore runs a module-level function whose only parameter is a
# key; the closure doing the work (which holds the DVC repo, the MLflow client, ...) stays here.
_PENDING: dict[str, Callable[[], Any]] = {}
_COUNTER = itertools.count()
_LOCK = threading.Lock()


def _call_pending(key: str) -> Any:
    return _PENDING[key]()


def run_as_flow(name: str, fn: Callable[[], Any], runner=None) -> Any:
    """``fn()`` as a Prefect flow (a subflow inside a flow) named ``name``, with ``runner`` if given.

    ``fn`` is never serialized, so it may close over anything; tasks it submits through
    :func:`prefect_map` run on the flow's task runner.
    """
    from prefect import flow  # noqa: PLC0415

    with _LOCK:
        key = f"{name}-{next(_COUNTER)}"
        _PENDING[key] = fn
    try:
        options = {"task_runner": runner} if runner is not None else {}
        return flow(name=name, log_prints=False, persist_result=False, **options)(_call_pending)(key)
    finally:
        _PENDING.pop(key, None)
