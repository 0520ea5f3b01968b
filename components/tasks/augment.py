"""Task augmentation (learned_optimization ``tasks/task_augmentation.py``; ``research/algorithms.md`` §0.4).

Wrappers that change how a task looks to an optimizer without changing what it computes, usable on
any task (classification, LM, quadratics, fine-tuning) and on any family:

* **Weight reparametrisation** (:func:`reparametrize`, :class:`ReparamTask`, :class:`ReparamFamily`):
  with scales ``s ~ logU[lo, hi]`` the task stores ``w / s`` (``init``) and evaluates its loss at
  ``w · s``. The network function is unchanged; gradients are multiplied by ``s`` and the optimizer
  sees parameters of magnitude ``|w| / s``, so an optimizer must cope with badly scaled parameters.
  Levels: ``global`` (one ``s`` per task), ``tensor`` (one per params leaf), ``parameter`` (one per
  scalar). Celo meta-trains with ``global``, ``(1e-3, 1e3)``.
* **Reduced batch size** (:func:`with_batch_size`, :class:`ReducedBatchFamily`): the same task with a
  smaller static ``batch_size`` (noisier gradients). ``batch_size`` is static (it fixes array
  shapes), so one family gives one batch size; learned_optimization's ``ReducedBatchsizeFamily``
  likewise uses a fixed fraction.

Meta-objectives use ``task.normalized_loss`` (forwarded unchanged by every wrapper): the loss is
clipped to a task-independent range so that tasks of different scales weigh alike (see
:func:`components.tasks.normalize_loss` and each task kind's docstring).
"""

import dataclasses
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp

from components.tasks.protocol import param_shapes

__all__ = [
    "LEVELS",
    "ReparamTask",
    "reparametrize",
    "sample_log_scales",
    "ReparamFamily",
    "with_batch_size",
    "ReducedBatchFamily",
]

LEVELS = ("global", "tensor", "parameter")


def _check_range(param_scale_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = param_scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"param_scale_range must satisfy 0 < lo <= hi, got {param_scale_range}; e.g. (1e-3, 1e3)")
    return math.log(lo), math.log(hi)


def sample_log_scales(key: jax.Array, shapes: Any, level: str, param_scale_range: tuple[float, float]) -> Any:
    """``log s`` for every params leaf: ``s ~ logU[param_scale_range]`` at ``level``.

    Args:
      key: PRNG key.
      shapes: the params pytree (arrays or ``ShapeDtypeStruct``), e.g. :func:`param_shapes` of a task.
      level: ``"global"`` (every leaf gets the same scalar), ``"tensor"`` (one scalar per leaf) or
        ``"parameter"`` (an array of the leaf's shape).
      param_scale_range: ``(lo, hi)``, both > 0.

    Returns:
      A pytree like ``shapes`` of float32 arrays: shape ``()`` for global / tensor, the leaf's shape
      for parameter.

    Raises:
      ValueError: for an unknown level or a bad range.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown reparametrisation level {level!r}; choose one of {list(LEVELS)}")
    lo, hi = _check_range(param_scale_range)
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    if level == "global":
        s = jax.random.uniform(key, (), jnp.float32, lo, hi)
        return jax.tree_util.tree_unflatten(treedef, [s] * len(leaves))
    # one draw sliced per leaf: one PRNG call compiles far faster than one per leaf
    shapes_ = [() if level == "tensor" else tuple(leaf.shape) for leaf in leaves]
    sizes = [math.prod(s) for s in shapes_]
    u = jax.random.uniform(key, (sum(sizes),), jnp.float32, lo, hi)
    offsets = [0, *itertools.accumulate(sizes)]
    return jax.tree_util.tree_unflatten(
        treedef, [u[a:b].reshape(s) for s, a, b in zip(shapes_, offsets[:-1], offsets[1:])]
    )


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class ReparamTask:
    """``task`` with weights stored as ``w / s`` and evaluated at ``w · s`` (see the module docstring).

    Attributes:
      task: the wrapped task (a pytree child).
      log_scale: pytree like the params, float32 leaves ``()`` or the leaf's shape: ``log s``.
      level: static, for the record (``"global"`` / ``"tensor"`` / ``"parameter"``).
    """

    task: Any
    log_scale: Any
    level: str = "global"

    def tree_flatten(self):
        return (self.task, self.log_scale), (self.level,)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    # forwarded attributes
    @property
    def name(self) -> str:
        return self.task.name

    @property
    def batch_size(self) -> int:
        return self.task.batch_size

    @property
    def has_accuracy(self) -> bool:
        return self.task.has_accuracy

    @property
    def head_key(self) -> str:
        return self.task.head_key

    @property
    def scales(self) -> Any:
        """``s`` per params leaf."""
        return jax.tree_util.tree_map(jnp.exp, self.log_scale)

    def to_function_space(self, params: Any) -> Any:
        """Stored params ``w / s`` -> the wrapped task's params ``w``."""
        return jax.tree_util.tree_map(lambda w, ls: w * jnp.exp(ls).astype(w.dtype), params, self.log_scale)

    def to_stored_space(self, params: Any) -> Any:
        """The wrapped task's params ``w`` -> stored params ``w / s``."""
        return jax.tree_util.tree_map(lambda w, ls: w / jnp.exp(ls).astype(w.dtype), params, self.log_scale)

    def init(self, key: jax.Array) -> Any:
        return self.to_stored_space(self.task.init(key))

    def loss(self, params: Any, batch: Any, key: jax.Array | None = None) -> jax.Array:
        return self.task.loss(self.to_function_space(params), batch, key)

    def accuracy(self, params: Any, batch: Any) -> jax.Array:
        return self.task.accuracy(self.to_function_space(params), batch)

    def batch(self, data: Any, key: jax.Array) -> Any:
        return self.task.batch(data, key)

    def normalized_loss(self, loss: jax.Array) -> jax.Array:
        return self.task.normalized_loss(loss)


def reparametrize(
    task: Any, key: jax.Array, level: str = "global", param_scale_range: tuple[float, float] = (1e-3, 1e3)
) -> ReparamTask:
    """``task`` reparametrised with scales ``s ~ logU[param_scale_range]`` drawn with ``key`` at ``level``.

    Example:
      >>> from components.tasks import Task
      >>> t = Task("t", "mlp", (8,), "relu", (4, 4, 1), 10, 16)
      >>> aug = reparametrize(t, jax.random.PRNGKey(0), "tensor")
      >>> sorted(aug.log_scale)  # one scale per params leaf
      ['dense0', 'dense1']
    """
    return ReparamTask(task, sample_log_scales(key, param_shapes(task), level, param_scale_range), level)


@dataclasses.dataclass(frozen=True)
class ReparamFamily:
    """``family`` whose sampled tasks are reparametrised: ``sample(key) = reparametrize(family.sample(k1), k2, ...)``.

    ``ReparamFamily(family, "global", (1e-3, 1e3))`` is Celo's augmentation (learned_optimization's
    ``ReparamWeightsFamily``).
    """

    family: Any
    level: str = "global"
    param_scale_range: tuple[float, float] = (1e-3, 1e3)

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"unknown reparametrisation level {self.level!r}; choose one of {list(LEVELS)}")
        _check_range(self.param_scale_range)

    def sample(self, key: jax.Array) -> ReparamTask:
        k_task, k_scale = jax.random.split(key)
        return reparametrize(self.family.sample(k_task), k_scale, self.level, self.param_scale_range)


def with_batch_size(task: Any, batch_size: int) -> Any:
    """``task`` (or a wrapper around one) with its static ``batch_size`` replaced.

    Raises:
      ValueError: if ``batch_size < 1``.
      TypeError: if neither ``task`` nor a task it wraps has a ``batch_size`` field.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = {f.name for f in dataclasses.fields(task)} if dataclasses.is_dataclass(task) else set()
    if "batch_size" in names:
        return dataclasses.replace(task, batch_size=batch_size)
    if "task" in names:  # a wrapper (ReparamTask, FineTuneTask, ...)
        return dataclasses.replace(task, task=with_batch_size(task.task, batch_size))
    raise TypeError(f"{type(task).__name__} has no batch_size field and wraps no task; cannot change its batch size")


@dataclasses.dataclass(frozen=True)
class ReducedBatchFamily:
    """``family`` with batch sizes multiplied by ``fraction`` (rounded, at least 1)."""

    family: Any
    fraction: float

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")

    def sample(self, key: jax.Array) -> Any:
        task = self.family.sample(key)
        return with_batch_size(task, max(1, round(task.batch_size * self.fraction)))
