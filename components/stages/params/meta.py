"""meta_train's params section: the task family, the phases, and the loop settings, which are
:class:`~components.meta.config.MetaTrainConfig`'s fields (name, type, default, bound and
description declared there, once)."""

import dataclasses
import typing
from typing import Any, Literal

import annotated_types
from pydantic import Field, PositiveFloat, PositiveInt, create_model, model_serializer, model_validator

from components.meta.config import DEFAULT_LOPT, MetaTrainConfig
from components.stages.params.common import EvalTaskName, PreparedName, _check_optimizer, _norm, _Section

__all__ = ["TaskFamilyParams", "MetaTrainPhase", "MetaTrainParams", "SETTINGS"]

SETTINGS = tuple(f.name for f in dataclasses.fields(MetaTrainConfig))
"""The ``meta_train`` keys that are :class:`MetaTrainConfig` settings (the rest: lopt, its family, phases)."""


class TaskFamilyParams(_Section):
    """The meta-training distribution: image MLPs on prepared image datasets of one shape.

    ``preset: celo`` is Celo's recipe (``components.tasks.celo_family``): 8x8 grayscale MNIST,
    Fashion-MNIST, CIFAR-10 and UCI digits (in place of SVHN), one hidden layer of 32 ReLU units,
    batch 64, global weight re-parametrisation ``s ~ logU[1e-3, 1e3]``. It fixes every other field.
    """

    preset: Literal["celo"] | None = Field(default=None, description="celo: Celo's four-task recipe (fixes the rest)")
    datasets: list[PreparedName] = Field(
        default=["mnist", "fashion_mnist"],
        min_length=1,
        description="prepared image datasets of one shape (each must be in data.datasets, by variant)",
    )
    hidden_sizes: list[PositiveInt] = Field(default=[32], min_length=1)
    batch_size: PositiveInt = 128
    param_scale_range: tuple[PositiveFloat, PositiveFloat] = Field(
        default=(1.0, 1.0),
        description="global weight-reparametrisation scale ~ logU[lo, hi] (1, 1 = no augmentation)",
    )
    task: EvalTaskName | None = Field(
        default=None,
        description="meta-train on this one suite task (STAR, L3RS) instead of an image-MLP family;"
        " fine-tuning tasks start from the pretrain stage's model",
    )
    estimator_per_dataset: bool = Field(
        default=False,
        description="one estimator (num_tasks tasks) per dataset, meta-gradients averaged (Celo's recipe)",
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, values):
        if isinstance(values, dict) and values.get("preset") == "celo":
            from components.tasks.families import (  # noqa: PLC0415
                CELO_BATCH_SIZE,
                CELO_DATASETS,
                CELO_HIDDEN,
                CELO_PARAM_SCALE_RANGE,
            )

            fixed = {
                "datasets": list(CELO_DATASETS),
                "hidden_sizes": list(CELO_HIDDEN),
                "batch_size": CELO_BATCH_SIZE,
                "param_scale_range": tuple(CELO_PARAM_SCALE_RANGE),
            }
            clash = sorted(k for k in fixed if k in values and _norm(values[k]) != _norm(fixed[k]))
            if clash:
                raise ValueError(
                    f"task_family.preset celo fixes {clash}: remove them, or drop the preset to set them yourself"
                )
            values = {**values, **fixed}
        return values

    @model_validator(mode="after")
    def _range(self):
        from components.tasks.spec import dataset_info  # noqa: PLC0415

        if self.task is not None:
            # a field set to its default clashes with nothing: dumps hold every field, so a dumped params file
            # (params.yaml, a zoo workspace's record) validates again
            fixed = sorted(
                f
                for f in ("preset", "datasets", "hidden_sizes", "batch_size", "param_scale_range")
                if f in self.model_fields_set and _norm(getattr(self, f)) != _norm(type(self).model_fields[f].default)
            )
            if fixed:
                raise ValueError(
                    f"task_family.task {self.task!r} fixes the model and data: remove {fixed}, or drop task"
                )
            if self.estimator_per_dataset:
                raise ValueError("task_family.task is one task: estimator_per_dataset needs a family of datasets")
        lo, hi = self.param_scale_range
        if lo > hi:
            raise ValueError(f"param_scale_range must be [low, high] with low <= high, got {[lo, hi]}")
        for d in self.datasets:
            kind = dataset_info(d, image_size=1).kind
            if kind != "image":
                raise ValueError(f"task_family.datasets: {d!r} is a {kind} dataset; the family holds image MLPs only")
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"task_family.datasets must be unique, got {self.datasets}")
        return self


class MetaTrainPhase(_Section):
    """One phase of meta-training: optimizer hyperparameters merged over ``meta_train.lopt_hyperparams``."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    lopt_hyperparams: dict[str, Any] = Field(default_factory=dict, description="e.g. {train_phase: 2}")
    num_outer_steps: PositiveInt | None = Field(default=None, description="unset: meta_train.num_outer_steps")


def _setting(name: str) -> tuple[Any, Any]:
    """``(annotation, FieldInfo)`` of the setting ``name`` as :class:`MetaTrainConfig` declares it:
    a bound ``gt`` becomes ``Annotated[type, Gt]`` (``PositiveInt`` is ``Annotated[int, Gt(0)]``), a
    bound ``ge`` the field's ``ge``; ``None`` stays allowed where the type allows it."""
    field = next(f for f in dataclasses.fields(MetaTrainConfig) if f.name == name)
    hint = typing.get_type_hints(MetaTrainConfig)[name]
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is not Literal and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if field.metadata["gt"] is not None:
        base = typing.Annotated[base, annotated_types.Gt(field.metadata["gt"])]
    info = Field(default=field.default, description=field.metadata["description"], ge=field.metadata["ge"])
    return (base | None if optional else base), info


class _MetaTrainRules(_Section):
    """The rules and helpers of :class:`MetaTrainParams` (its fields are generated below)."""

    def phase_list(self) -> list["MetaTrainPhase"]:
        """The phases to run: ``phases``, or one phase of the top-level settings."""
        return list(self.phases) or [MetaTrainPhase(name="main")]

    def phase_hyperparams(self, phase: "MetaTrainPhase") -> dict[str, Any]:
        return {**self.lopt_hyperparams, **phase.lopt_hyperparams}

    def phase_steps(self, phase: "MetaTrainPhase") -> int:
        return phase.num_outer_steps or self.num_outer_steps

    @model_serializer(mode="wrap")
    def _omit_unset_norm_clip(self, handler):
        # grad_clip_norm came after the params files: unset, it is left out of dumps, so the params.yaml and
        # params hash of every experiment that does not use it stay what they were
        data = handler(self)
        if self.grad_clip_norm is None:
            data.pop("grad_clip_norm", None)
        return data

    @model_validator(mode="after")
    def _lengths(self):
        _check_optimizer(self.lopt, self.lopt_hyperparams, "learned", "meta_train.lopt")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"meta_train.phases need distinct names, got {names}")
        for p in self.phases:
            _check_optimizer(self.lopt, self.phase_hyperparams(p), "learned", f"meta_train.phases[{p.name}].lopt")
        try:  # the library's own rules (log_every / checkpoint_every multiples of steps_per_call)
            self.config()
        except ValueError as err:
            raise ValueError(f"meta_train.{err}") from None
        if self.min_unroll > self.max_unroll:
            raise ValueError(f"min_unroll ({self.min_unroll}) must be <= max_unroll ({self.max_unroll})")
        if self.estimator != "es" and self.trunc_length > self.min_unroll:
            raise ValueError(
                f"trunc_length ({self.trunc_length}) must be <= min_unroll ({self.min_unroll}):"
                " a truncation may contain at most one reset"
            )
        return self

    def config(self, num_outer_steps: int | None = None) -> MetaTrainConfig:
        """The library config of these settings (with another ``num_outer_steps``, e.g. a phase's)."""
        settings = {name: getattr(self, name) for name in SETTINGS}
        if num_outer_steps is not None:
            settings["num_outer_steps"] = num_outer_steps
        return MetaTrainConfig(**settings)


_LOOP = SETTINGS[: SETTINGS.index("log_every") + 1]  # the order of the params files' keys
MetaTrainParams = create_model(
    "MetaTrainParams",
    __base__=_MetaTrainRules,
    __module__=__name__,
    __doc__="meta_train: the learned optimizer and its truncated-PES meta-training.",
    lopt=(
        str,
        Field(
            default=DEFAULT_LOPT,
            description="learned optimizer to meta-train: a name of components.optimizers.available()['learned']",
        ),
    ),
    lopt_hyperparams=(
        dict[str, Any],
        Field(
            default_factory=dict,
            description="its architecture hyperparameters, e.g. {hidden_size: 4} (defaults otherwise)",
        ),
    ),
    task_family=(TaskFamilyParams, TaskFamilyParams()),
    **{name: _setting(name) for name in _LOOP},
    registered_name=(str, Field(default="small_fc_lopt", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")),
    **{name: _setting(name) for name in SETTINGS[len(_LOOP) :]},
    phases=(
        list[MetaTrainPhase],
        Field(
            default_factory=list,
            description="run in order, each from the previous phase's meta-params (Celo: phase 1 MLP, phase 2"
            " scheduler)",
        ),
    ),
)
