"""Shared pieces of the params models: the frozen section base, names checked against the library's
registries, and small validators."""

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, PositiveFloat, PositiveInt, model_validator

__all__ = ["DatasetName", "PreparedName", "EvalTaskName", "SuiteName", "LogGrid"]

# Registered datasets (components.data.DATASETS). cifar10 is the canonical, lossless CIFAR-10 (download);
# cifar10_jpeg the lossy JPEG copy that the offline mirror holds (mirror-only).
DatasetName = Literal["mnist", "fashion_mnist", "digits", "cifar10", "cifar10_jpeg", "mnist1d", "tiny_shakespeare"]


def _check_prepared_name(name: str) -> str:
    from components.data import parse_variant  # noqa: PLC0415 - keeps `import params` light

    parse_variant(name, image_size=1)  # grammar, dataset and explicit size; 1 fits every image dataset
    return name


# A prepared dataset: "<dataset>[_gray][_<size>]", e.g. mnist, mnist_28, cifar10_jpeg_gray_8, tiny_shakespeare
# (components.data.prepare). It names the file data/prepared/<name>.npz and the manifest entry.
PreparedName = Annotated[str, AfterValidator(_check_prepared_name)]


def _check_task_name(name: str) -> str:
    from components.tasks.suite import get_spec  # noqa: PLC0415

    get_spec(name)  # the error lists the registered names
    return name


def _check_suite_name(name: str) -> str:
    from components.tasks.suite import SUITES  # noqa: PLC0415

    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)} (`l2o tasks --suite NAME` lists one)")
    return name


# A registered task (components.tasks.suite.SUITE_TASKS; `l2o tasks --suite heldout` lists them).
EvalTaskName = Annotated[str, AfterValidator(_check_task_name)]
SuiteName = Annotated[str, AfterValidator(_check_suite_name)]


class _Section(BaseModel):
    # allow_inf_nan=False: no float field takes inf or nan (`outer_lr: .inf` used to pass and train a NaN optimizer)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _norm(value):
    """Lists and tuples compare alike; numbers compare as floats (YAML writes 64 and 64.0 alike)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _finite(value) -> bool:
    """False for inf/nan anywhere inside a hyperparameter value (numbers, lists, nested dicts)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _check_optimizer(name: str, hyperparams: dict, kind: str, where: str) -> None:
    """Validates an optimizer name of the wanted kind and its hyperparameter names (and values)."""
    from components.optimizers import registry  # noqa: PLC0415 - keeps `import params` light

    try:
        actual = registry.kind_of(name)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if actual != kind:
        names = registry.available()["learned" if kind == "learned" else "baselines"]
        raise ValueError(f"{where}: {name!r} is a {actual}, expected a {kind} optimizer: one of {names}")
    bad = [k for k, v in hyperparams.items() if not _finite(v)]
    if bad:
        raise ValueError(f"{where}_hyperparams: {bad} must be finite numbers (inf and nan are not allowed)")
    if kind == "learned":
        try:
            registry.create_learned(name, **hyperparams)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}_hyperparams for {name!r}: {err}") from None


class LogGrid(_Section):
    """A log-spaced grid ``num`` points from ``min`` to ``max`` (inclusive)."""

    min: PositiveFloat
    max: PositiveFloat
    num: PositiveInt

    @model_validator(mode="after")
    def _order(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        if self.num == 1 and self.min != self.max:
            raise ValueError("num=1 needs min == max")
        return self

    def values(self) -> list[float]:
        if self.num == 1:
            return [float(self.min)]
        lo, hi = math.log10(self.min), math.log10(self.max)
        return [10 ** (lo + (hi - lo) * i / (self.num - 1)) for i in range(self.num)]
