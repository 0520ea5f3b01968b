"""Fine-tuning: a task that starts from pre-trained parameters, and the pre-training that makes them.

Pipeline (the stages do the I/O and caching; this module is pure)::

    source = <a task on the source data>              e.g. an MLP on mnist_28
    pretrained = pretrain(source, source_data, key, num_steps, learning_rate)   # Adam, lax.scan
    task = finetune(<the same architecture on the target data>, pretrained)     # e.g. fashion_mnist_28

**Where the pre-trained weights live.** They are array leaves of the :class:`FineTuneTask` pytree
(like a task's dataset index or reparametrisation scale), never aux data or Python constants, and
``init(key)`` keeps the task protocol. A jitted runner therefore receives them as an argument when
it receives the task as an argument::

    run = jax.jit(lambda task, data, key: train(task, data, key))   # task is an argument
    run(finetune(arch, pretrained_a), data, key)
    run(finetune(arch, pretrained_b), data, key)                    # same program, no recompilation

(A function that *closes over* a task bakes its arrays into the compiled program as constants: for
a fine-tuning task that is the whole pre-trained model. Pass tasks as arguments.)

**The classifier head** (the task's ``head_key`` entry: an MLP's last dense layer, a CNN's
``head``, the LM's ``unembed``) is re-initialised from ``key`` when the number of classes differs
(its shape differs, so the pre-trained head cannot be used). With ``reinit_head=True`` it is
re-initialised even when the shapes agree: cross-dataset image transfer (MNIST → Fashion-MNIST:
both 10 classes, different meanings) is fine-tuned with a fresh head, as is usual; a char-LM
fine-tuned on more of the same corpus keeps its head. Every other entry must match the target
architecture exactly.

**Char-LM fine-tuning** splits one corpus by contiguous range: pre-train a :class:`CharLMTask` with
``token_range=(0.0, 0.5)`` of ``train_tokens``, fine-tune with ``token_range=(0.5, 1.0)`` (the
second half of tiny-shakespeare's training text: other plays, unseen during pre-training).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from components.tasks.protocol import param_shapes

__all__ = ["FineTuneTask", "finetune", "pretrain", "pretrain_with_losses"]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class FineTuneTask:
    """``task`` started from pre-trained params (build it with :func:`finetune`, which validates them).

    Attributes:
      task: the target task (its data, batch size, loss); a pytree child.
      pretrained: the pre-trained params, without the head entry when ``reinit_head``; pytree child.
      reinit_head: static: ``init`` draws a fresh head with the target task's initialiser.
      name: static label.

    Shapes: as the wrapped task's (params, batch, loss).
    """

    task: Any
    pretrained: Any
    reinit_head: bool
    name: str

    def tree_flatten(self):
        return (self.task, self.pretrained), (self.reinit_head, self.name)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def batch_size(self) -> int:
        return self.task.batch_size

    @property
    def has_accuracy(self) -> bool:
        return self.task.has_accuracy

    @property
    def head_key(self) -> str:
        return self.task.head_key

    def init(self, key: jax.Array) -> Any:
        """The pre-trained params (copied), with a fresh head drawn from ``key`` if ``reinit_head``."""
        params = jax.tree_util.tree_map(jnp.array, self.pretrained)
        if self.reinit_head:
            # XLA removes the unused part of the fresh initialisation (only the head is kept)
            params = {**params, self.head_key: self.task.init(key)[self.head_key]}
        return params

    def loss(self, params: Any, batch: Any, key: jax.Array | None = None) -> jax.Array:
        return self.task.loss(params, batch, key)

    def accuracy(self, params: Any, batch: Any) -> jax.Array:
        return self.task.accuracy(params, batch)

    def batch(self, data: Any, key: jax.Array) -> Any:
        return self.task.batch(data, key)

    def normalized_loss(self, loss: jax.Array) -> jax.Array:
        return self.task.normalized_loss(loss)


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(p): tuple(jnp.shape(a)) for p, a in jax.tree_util.tree_leaves_with_path(tree)}


def finetune(task: Any, pretrained: Any, *, reinit_head: bool | None = None, name: str | None = None) -> FineTuneTask:
    """``task`` started from ``pretrained`` params (see the module docstring for the head rule).

    Args:
      task: the target task (unaugmented: wrap the result with :func:`~components.tasks.reparametrize`
        to augment it). It must have ``head_key`` and params that are a dict.
      pretrained: params of the same architecture (numpy or jax arrays), e.g. from :func:`pretrain`
        or a checkpoint; the head may have another number of classes.
      reinit_head: ``None`` (default): re-initialise the head iff its shape differs; ``True``:
        always; ``False``: never (an error if the shapes differ).
      name: label (default ``"<task name>_finetune"``).

    Raises:
      ValueError: if ``pretrained`` does not match the architecture outside the head, or
        ``reinit_head=False`` while the heads differ.
    """
    expected = param_shapes(task)
    head = task.head_key
    if not isinstance(pretrained, dict) or set(pretrained) != set(expected):
        got = sorted(pretrained) if isinstance(pretrained, dict) else type(pretrained).__name__
        raise ValueError(
            f"pretrained params do not fit task {task.name!r}: expected entries {sorted(expected)}, got {got}."
            " Pre-train the same architecture (pretrain(source_task, ...)) and pass its params"
        )
    want = _leaf_shapes({k: v for k, v in expected.items() if k != head})
    have = _leaf_shapes({k: v for k, v in pretrained.items() if k != head})
    if want != have:
        bad = {k: (want.get(k), have.get(k)) for k in sorted(want.keys() | have.keys()) if want.get(k) != have.get(k)}
        raise ValueError(
            f"pretrained params do not fit task {task.name!r} outside its head {head!r}: (expected, got) shapes"
            f" {bad}. Only the head may change between pre-training and fine-tuning"
        )
    want_head, have_head = _leaf_shapes(expected[head]), _leaf_shapes(pretrained[head])
    if reinit_head is None:
        reinit_head = want_head != have_head
    elif not reinit_head and want_head != have_head:
        raise ValueError(
            f"the pretrained head {head!r} has shapes {have_head} but task {task.name!r} needs {want_head}"
            " (another number of classes): pass reinit_head=True or None"
        )
    kept = {k: v for k, v in pretrained.items() if not (reinit_head and k == head)}
    kept = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), kept)
    return FineTuneTask(task, kept, bool(reinit_head), name or f"{task.name}_finetune")


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _pretrain(task, data, key, learning_rate, num_steps: int):
    k_init, k_run = jax.random.split(key)
    opt = optax.adam(learning_rate)
    params = task.init(k_init)

    def step(carry, k):
        params, state = carry
        loss, grads = jax.value_and_grad(task.loss)(params, task.batch(data, k))
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(k_run, num_steps))
    return params, losses


def pretrain_with_losses(
    task: Any, data: Any, key: jax.Array, num_steps: int, lr: float = 1e-3
) -> tuple[Any, jax.Array]:
    """:func:`pretrain` that also returns the training curve: ``(params, losses [num_steps])``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return _pretrain(task, data, key, jnp.float32(lr), num_steps=int(num_steps))


def pretrain(task: Any, data: Any, key: jax.Array, num_steps: int, lr: float = 1e-3) -> Any:
    """Train ``task`` from ``task.init`` with Adam(``lr``) for ``num_steps`` minibatches; return its params.

    One compiled program (``lax.scan`` over steps); ``task``, ``data`` and ``lr`` are arguments, so
    other tasks of the same architecture, other data of the same shapes and other learning rates
    reuse it. Deterministic given ``key``. The pipeline caches the result (a DVC-tracked artifact)
    and passes it to :func:`finetune`.

    Args:
      task: any task (protocol in :mod:`components.tasks.protocol`).
      data: its dataset pytree (``ImageData``, ``TokenData``, ``None``).
      key: PRNG key (initialisation and minibatches).
      num_steps: Adam steps.
      lr: Adam's learning rate.

    Returns:
      The trained params (the pytree ``task.init`` returns).

    Raises:
      ValueError: if ``num_steps < 1``.
    """
    return pretrain_with_losses(task, data, key, num_steps, lr)[0]
