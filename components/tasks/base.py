"""Tasks and task families for image classification on prepared datasets.

A :class:`Task` is a pytree: its architecture is static, while *which* dataset it trains on and its
weight-reparametrisation scale are arrays. That makes ``jax.vmap(family.sample)(keys)`` a batch of
tasks that one compiled meta-training step can run side by side.

Data never lives inside a task (it would be baked into compiled programs as constants): the caller
passes an :class:`ImageData` pytree, and :meth:`Task.batch` samples from it with an explicit key.
"""

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from components.tasks import models

__all__ = ["ImageData", "stack_datasets", "Task", "ImageMLPFamily", "normalize_loss"]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class ImageData:
    """Images of one or more datasets, padded to a common length.

    Attributes:
      x: ``[D, N, H, W, C]`` float32 images.
      y: ``[D, N]`` int32 labels.
      n: ``[D]`` int32 number of valid examples per dataset (rows beyond it are padding).
    """

    x: jax.Array
    y: jax.Array
    n: jax.Array

    def tree_flatten(self):
        return (self.x, self.y, self.n), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def stack_datasets(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> ImageData:
    """Stack datasets of equal image shape into one :class:`ImageData` (padding to the longest)."""
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) != 1:
        raise ValueError(
            f"datasets in one family must share an image shape, got {sorted(shapes)}: prepare them"
            " with the same data.image_size"
        )
    n_max = max(len(x) for x in xs)
    x_pad = np.zeros((len(xs), n_max, *xs[0].shape[1:]), np.float32)
    y_pad = np.zeros((len(xs), n_max), np.int32)
    for i, (x, y) in enumerate(zip(xs, ys)):
        x_pad[i, : len(x)] = x
        y_pad[i, : len(y)] = y
    return ImageData(jnp.asarray(x_pad), jnp.asarray(y_pad), jnp.asarray([len(x) for x in xs], jnp.int32))


def normalize_loss(loss: jax.Array, num_classes: int) -> jax.Array:
    """learned_optimization's image-task normaliser: ``clip(loss, 0, 1.5 ln C)``, non-finite -> max."""
    hi = 1.5 * math.log(num_classes)
    return jnp.where(jnp.isfinite(loss), jnp.clip(loss, 0.0, hi), hi)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Task:
    """An image-classification training problem.

    Static attributes (pytree aux data): ``name``, ``model`` ("mlp" | "conv"), ``hidden`` (hidden
    sizes or conv channels), ``activation``, ``image_shape``, ``num_classes``, ``batch_size``.
    Array attributes: ``dataset_index`` (int32, which dataset of the :class:`ImageData` to use) and
    ``log_scale`` (float32): weights are stored as ``w / s`` and used as ``w * s`` with ``s =
    exp(log_scale)``; the network function is unchanged but its parameter sensitivity is
    (learned_optimization's ``ReparamWeightsFamily``, global level).
    """

    name: str
    model: str
    hidden: tuple[int, ...]
    activation: str
    image_shape: tuple[int, int, int]
    num_classes: int
    batch_size: int
    dataset_index: jax.Array
    log_scale: jax.Array

    def tree_flatten(self):
        aux = (self.name, self.model, self.hidden, self.activation, self.image_shape, self.num_classes, self.batch_size)
        return (self.dataset_index, self.log_scale), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*aux, *children)

    # -- parameters ---------------------------------------------------------------------------
    def init(self, key: jax.Array) -> dict:
        """Initial parameters (in the stored, reparametrised space)."""
        if self.model == "mlp":
            params = models.init_mlp(key, math.prod(self.image_shape), self.hidden, self.num_classes)
        elif self.model == "conv":
            params = models.init_conv(key, self.image_shape, self.hidden, self.num_classes)
        else:
            raise ValueError(f"unknown model {self.model!r}; expected 'mlp' or 'conv'")
        scale = jnp.exp(self.log_scale)
        return jax.tree_util.tree_map(lambda w: w / scale, params)

    def logits(self, params: dict, x: jax.Array) -> jax.Array:
        scale = jnp.exp(self.log_scale)
        params = jax.tree_util.tree_map(lambda w: w * scale, params)
        apply = models.apply_mlp if self.model == "mlp" else models.apply_conv
        return apply(params, x, self.activation)

    # -- objective ----------------------------------------------------------------------------
    def loss(self, params: dict, batch: tuple[jax.Array, jax.Array], key: jax.Array | None = None) -> jax.Array:
        """Mean softmax cross-entropy on ``batch = (x, y)``; ``key`` is unused (deterministic model)."""
        del key
        x, y = batch
        logp = jax.nn.log_softmax(self.logits(params, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def accuracy(self, params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = batch
        return jnp.mean(jnp.argmax(self.logits(params, x), axis=-1) == y)

    def normalized_loss(self, loss: jax.Array) -> jax.Array:
        return normalize_loss(loss, self.num_classes)

    # -- data ---------------------------------------------------------------------------------
    def batch(self, data: ImageData, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """A uniformly sampled minibatch (with replacement) from this task's dataset."""
        n = data.n[self.dataset_index]
        idx = jax.random.randint(key, (self.batch_size,), 0, n)
        return data.x[self.dataset_index, idx], data.y[self.dataset_index, idx]


@dataclasses.dataclass(frozen=True)
class ImageMLPFamily:
    """Image MLPs on several datasets of one image shape: ``sample(key) -> Task``.

    Each sampled task picks a dataset uniformly and a global reparametrisation scale
    ``s ~ logU[param_scale_range]`` (learned_optimization's task augmentation; ``(1, 1)`` disables it).
    """

    datasets: tuple[str, ...]
    hidden_sizes: tuple[int, ...]
    image_shape: tuple[int, int, int]
    num_classes: int
    batch_size: int
    param_scale_range: tuple[float, float] = (1.0, 1.0)
    activation: str = "relu"

    def sample(self, key: jax.Array) -> Task:
        kd, ks = jax.random.split(key)
        lo, hi = (math.log(v) for v in self.param_scale_range)
        return Task(
            name="image_mlp_family",
            model="mlp",
            hidden=tuple(self.hidden_sizes),
            activation=self.activation,
            image_shape=tuple(self.image_shape),
            num_classes=self.num_classes,
            batch_size=self.batch_size,
            dataset_index=jax.random.randint(kd, (), 0, len(self.datasets)),
            log_scale=jax.random.uniform(ks, (), jnp.float32, lo, hi),
        )
