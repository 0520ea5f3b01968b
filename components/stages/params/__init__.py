"""Experiment params: one pydantic model per stage section, validated at the boundary.

A params file (``params/*.yaml``) is one :class:`PipelineParams`. Every model forbids unknown keys
and is frozen, so a typo fails loudly. Params stop at the stage boundary: stages read these models
and pass plain values to the library factories.

This module holds the whole experiment (:class:`PipelineParams`) and the two small sections; the
others live beside it by stage: :mod:`~components.stages.params.data`,
:mod:`~components.stages.params.meta` (built from :class:`components.meta.MetaTrainConfig`) and
:mod:`~components.stages.params.evaluation`; :mod:`~components.stages.params.common` holds the shared
names and validators.
"""

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from components.stages.params.common import DatasetName, EvalTaskName, LogGrid, PreparedName, _Section
from components.stages.params.data import DataParams
from components.stages.params.evaluation import CalibrateParams, EvaluateParams, RunnerParams
from components.stages.params.meta import MetaTrainParams, MetaTrainPhase, TaskFamilyParams

__all__ = [
    "DatasetName",
    "PreparedName",
    "EvalTaskName",
    "DataParams",
    "TaskFamilyParams",
    "MetaTrainPhase",
    "PretrainParams",
    "MetaTrainParams",
    "CalibrateParams",
    "LogGrid",
    "EvaluateParams",
    "RunnerParams",
    "ReportParams",
    "PipelineParams",
    "params_hash",
]


class PretrainParams(_Section):
    """pretrain: the starting points of fine-tuning tasks (Adam on their source data, as each task says)."""

    num_steps: PositiveInt | None = Field(
        default=None, description="pre-training steps of every fine-tuning task (unset: each task's own)"
    )


class ReportParams(_Section):
    """report: the HTML report."""

    title: str = "l2o-pipeline report"


class PipelineParams(_Section):
    """A whole experiment."""

    seed: NonNegativeInt = 0
    experiment_name: str = Field(default="l2o-pipeline", min_length=1, description="MLflow experiment")
    data: DataParams = DataParams()
    meta_train: MetaTrainParams = MetaTrainParams()
    pretrain: PretrainParams = PretrainParams()
    calibrate: CalibrateParams = CalibrateParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()

    @model_validator(mode="after")
    def _datasets_prepared(self):
        from components.tasks.spec import dataset_info  # noqa: PLC0415
        from components.tasks.suite import get_spec  # noqa: PLC0415

        data = self.data
        shapes = {}
        one = self.meta_train.task_family.task
        if one is not None:
            spec = get_spec(one)
            if spec.dataset:
                data.require(spec.dataset, f"meta_train.task_family.task {one!r}")
            if spec.pretrain is not None:
                data.require(spec.pretrain.dataset, f"meta_train.task_family.task {one!r} (pre-training)")
        for d in [] if one is not None else self.meta_train.task_family.datasets:
            entry = data.require(d, "meta_train.task_family")
            shapes[d] = dataset_info(entry, image_size=data.image_size).example_shape
        if len(set(shapes.values())) > 1:
            raise ValueError(
                f"meta_train.task_family.datasets must share one image shape, got {shapes}: name them with"
                " one size, e.g. mnist_8, cifar10_jpeg_gray_8"
            )
        for name in self.evaluate.tasks:
            spec = get_spec(name)
            if spec.dataset:
                data.require(spec.dataset, f"evaluate task {name!r}")
            if spec.pretrain is not None:
                data.require(spec.pretrain.dataset, f"evaluate task {name!r} (pre-training)")
        return self


def params_hash(params: PipelineParams) -> str:
    """A short, stable hash of the resolved params (canonical JSON)."""
    import hashlib  # noqa: PLC0415
    import json  # noqa: PLC0415

    blob = json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
