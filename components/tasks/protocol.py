"""The task protocol every task kind follows, and helpers that work on any task.

A **task** is an immutable pytree: its static configuration (architecture, batch size, context,
...) is pytree aux data, and its per-sample choices (which dataset, a reparametrisation scale, a
quadratic's spectrum, pre-trained weights) are array leaves. So ``jax.vmap(family.sample)(keys)``
is a batch of tasks, and a task passed *as an argument* of a jitted function is data to it, not a
constant (closing over a task bakes its arrays into the compiled program).

Methods (all pure, ``jit``/``vmap``-able):

* ``init(key) -> params``: initial parameters, a pytree of float32 arrays.
* ``loss(params, batch, key=None) -> scalar``: mean training loss on ``batch``; ``key`` is for
  stochastic models (none of the current ones uses it).
* ``batch(data, key) -> batch``: a minibatch drawn with ``key`` from ``data``, the dataset pytree
  passed in by the caller (``ImageData``, ``TokenData``, or ``None`` for synthetic tasks that draw
  their data from the key). Every batch is a pytree whose leaves have a leading batch axis of size
  ``batch_size``.
* ``accuracy(params, batch) -> scalar``: fraction of correct predictions, NaN where meaningless
  (regression, quadratics; ``has_accuracy`` is then ``False``).
* ``normalized_loss(loss) -> loss``: the meta-objective normaliser (clipped to a task-independent
  range, non-finite values mapped to its maximum), see each task kind.

Attributes: ``name`` (str), ``batch_size`` (int), ``has_accuracy`` (bool), and ``head_key`` (the
top-level params entry of the output layer; fine-tuning re-initialises it) where there is one.

A **task family** has ``sample(key) -> task``; sampling twice with the same key gives the same task.
"""

import math
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

__all__ = ["TaskProtocol", "FamilyProtocol", "num_params", "param_shapes", "clip_loss"]


@runtime_checkable
class TaskProtocol(Protocol):
    name: str
    batch_size: int

    def init(self, key: jax.Array) -> Any: ...

    def loss(self, params: Any, batch: Any, key: jax.Array | None = None) -> jax.Array: ...

    def batch(self, data: Any, key: jax.Array) -> Any: ...

    def accuracy(self, params: Any, batch: Any) -> jax.Array: ...

    def normalized_loss(self, loss: jax.Array) -> jax.Array: ...


@runtime_checkable
class FamilyProtocol(Protocol):
    def sample(self, key: jax.Array) -> TaskProtocol: ...


def param_shapes(task: TaskProtocol) -> Any:
    """The params pytree of ``task.init`` as ``jax.ShapeDtypeStruct`` leaves (nothing is computed)."""
    return jax.eval_shape(lambda t, k: t.init(k), task, jax.random.PRNGKey(0))


def num_params(task: TaskProtocol) -> int:
    """Number of scalar parameters of ``task`` (by ``jax.eval_shape``: no data, no FLOPs).

    Example:
      >>> from components.tasks import Task
      >>> num_params(Task("t", "mlp", (32,), "relu", (8, 8, 1), 10, 64))  # 64*32+32 + 32*10+10
      2410
    """
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(param_shapes(task))))


def clip_loss(loss: jax.Array, hi: jax.Array | float) -> jax.Array:
    """``clip(loss, 0, hi)`` with NaN and ±inf mapped to ``hi`` (learned_optimization's normaliser shape)."""
    return jnp.where(jnp.isfinite(loss), jnp.clip(loss, 0.0, hi), hi)
