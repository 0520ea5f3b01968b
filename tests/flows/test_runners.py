"""evaluate.runner in params picks the Prefect task runner of the stages that fan out."""

import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from pydantic import ValidationError

from components.stages.params import PipelineParams
from flows.runners import FANOUT_STAGES, task_runner


def _params(**runner) -> PipelineParams:
    return PipelineParams(evaluate={"runner": runner})


def test_threads_by_default_with_an_optional_pool_size():
    assert isinstance(task_runner(PipelineParams()), ThreadPoolTaskRunner)
    runner = task_runner(_params(kind="threads", max_workers=3))
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 3
    assert FANOUT_STAGES == ("evaluate",)


def test_dask_local_cluster_of_worker_processes():
    runner = task_runner(_params(kind="dask", n_workers=3, threads_per_worker=2))
    assert isinstance(runner, DaskTaskRunner) and runner.address is None
    assert runner.cluster_kwargs == {
        "n_workers": 3,
        "threads_per_worker": 2,
        "processes": True,
        "dashboard_address": None,
    }


def test_dask_scheduler_address():
    runner = task_runner(_params(kind="dask", address="tcp://127.0.0.1:8786"))
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://127.0.0.1:8786"


@pytest.mark.parametrize(
    "runner, message",
    [
        ({"kind": "threads", "address": "tcp://127.0.0.1:8786"}, "needs kind: dask"),
        ({"kind": "dask", "address": "127.0.0.1:8786"}, "give e.g. tcp://127.0.0.1:8786"),
        ({"kind": "ray"}, "'threads' or 'dask'"),
        ({"kind": "dask", "n_workers": 0}, "greater than 0"),
    ],
)
def test_bad_runner_params_say_what_to_change(runner, message):
    with pytest.raises(ValidationError, match=message):
        _params(**runner)


def test_baselines_must_include_adam_and_exist():
    with pytest.raises(ValidationError, match="must include adam"):
        PipelineParams(evaluate={"baselines": ["sgdm"]})
    with pytest.raises(ValidationError, match=r"unknown baselines \['adamm'\]"):
        PipelineParams(evaluate={"baselines": ["adam", "adamm"]})
    with pytest.raises(ValidationError, match="evaluate.adam_lr_grid is now evaluate.lr_grid"):
        PipelineParams(evaluate={"adam_lr_grid": {"min": 1e-3, "max": 1e-1, "num": 3}})
