"""Classification tasks on labelled arrays (images, MNIST-1D signals) and the first task family.

A :class:`Task` is a pytree: its architecture is static, while *which* dataset it trains on and its
weight-reparametrisation scale are arrays. That makes ``jax.vmap(family.sample)(keys)`` a batch of
tasks that one compiled meta-training step can run side by side (the protocol every task kind
follows is in :mod:`components.tasks.protocol`).

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
from components.tasks.protocol import clip_loss

__all__ = ["ImageData", "stack_datasets", "ImageClassification", "Task", "ImageMLPFamily", "normalize_loss", "MODELS"]

MODELS = ("mlp", "conv", "conv1d")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class ImageData:
    """Labelled examples of one or more datasets, padded to a common length.

    Attributes:
      x: ``[D, N, *example_shape]`` float32 examples: images ``[H, W, C]`` or MNIST-1D signals ``[40]``.
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
    """Stack datasets of equal example shape into one :class:`ImageData` (padding to the longest)."""
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
    """learned_optimization's image-task normaliser: ``clip(loss, 0, 1.5 ln C)``, non-finite -> max.

    ``ln C`` is the cross-entropy of the uniform predictor (≈ the loss at initialisation), so a
    normalised loss of 1.5 ln C means "diverged"; clipping keeps one exploding task from dominating
    a meta-gradient.
    """
    return clip_loss(loss, 1.5 * math.log(num_classes))


def _zero_index() -> jax.Array:
    return jnp.zeros((), jnp.int32)


def _zero_scale() -> jax.Array:
    return jnp.zeros((), jnp.float32)


class ImageClassification:
    """The objective and data of an image classifier: mixed into a task class that has ``logits(params, x)``,
    ``num_classes``, ``batch_size`` and ``dataset_index`` (:class:`Task`, :class:`.residual.ResNetTask`)."""

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
        """``clip(loss, 0, 1.5 ln num_classes)``, non-finite -> max (:func:`normalize_loss`)."""
        return normalize_loss(loss, self.num_classes)

    # -- data ---------------------------------------------------------------------------------
    def batch(self, data: ImageData, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """A uniformly sampled minibatch (with replacement) from this task's dataset."""
        n = data.n[self.dataset_index]
        idx = jax.random.randint(key, (self.batch_size,), 0, n)
        return data.x[self.dataset_index, idx], data.y[self.dataset_index, idx]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Task(ImageClassification):
    """A classification problem on labelled arrays: an MLP, a 2-D CNN or a 1-D CNN.

    Static attributes (pytree aux data):
      name: label for logs.
      model: ``"mlp"`` | ``"conv"`` (images ``[H, W, C]``) | ``"conv1d"`` (signals ``[L]`` or ``[L, C]``).
      hidden: hidden widths (MLP) or conv channels, one entry per layer.
      activation: ``"relu"`` | ``"tanh"`` | ``"gelu"``.
      image_shape: the shape of one example (``(H, W, C)``, or ``(40,)`` for MNIST-1D).
      num_classes, batch_size: as named.
      norm: ``"none"`` | ``"layer_norm"`` (before each hidden activation; see :mod:`.models`).
      downsample: convs after the first have stride 2.
      kernel_size: conv kernel side.

    Array attributes:
      dataset_index: int32, which dataset of the :class:`ImageData` to use.
      log_scale: float32: weights are stored as ``w / s`` and used as ``w * s`` with ``s =
        exp(log_scale)``; the network function is unchanged but its parameter sensitivity is
        (learned_optimization's ``ReparamWeightsFamily``, global level; the wrappers of
        :mod:`components.tasks.augment` do the same for any task and at every level).

    Shapes: ``batch = (x [B, *image_shape] float32, y [B] int32)``; ``loss`` and ``accuracy`` are
    scalars. Example::

        task = Task("mnist_mlp", "mlp", (32,), "relu", (8, 8, 1), 10, 64)
        params = task.init(jax.random.PRNGKey(0))  # {"dense0": {"w": [64, 32], ...}, "dense1": ...}
        loss = task.loss(params, task.batch(data, jax.random.PRNGKey(1)))
    """

    name: str
    model: str
    hidden: tuple[int, ...]
    activation: str
    image_shape: tuple[int, ...]
    num_classes: int
    batch_size: int
    dataset_index: jax.Array = dataclasses.field(default_factory=_zero_index)
    log_scale: jax.Array = dataclasses.field(default_factory=_zero_scale)
    norm: str = "none"
    downsample: bool = False
    kernel_size: int = 3

    has_accuracy = True  # class attribute, not a field

    def __post_init__(self):
        models.check_choice("model", self.model, MODELS)
        models.check_choice("activation", self.activation, models.ACTIVATIONS)
        models.check_choice("norm", self.norm, models.NORMS)
        if self.model == "conv" and len(self.image_shape) != 3:
            raise ValueError(f"model 'conv' needs image_shape (H, W, C), got {self.image_shape}; use 'conv1d' or 'mlp'")
        if self.model == "conv1d" and len(self.image_shape) not in (1, 2):
            raise ValueError(f"model 'conv1d' needs image_shape (L,) or (L, C), got {self.image_shape}")

    def tree_flatten(self):
        aux = (
            self.name,
            self.model,
            self.hidden,
            self.activation,
            self.image_shape,
            self.num_classes,
            self.batch_size,
            self.norm,
            self.downsample,
            self.kernel_size,
        )
        return (self.dataset_index, self.log_scale), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        *head, norm, downsample, kernel_size = aux
        return cls(*head, *children, norm=norm, downsample=downsample, kernel_size=kernel_size)

    @property
    def head_key(self) -> str:
        """The params entry of the classifier head."""
        return f"dense{len(self.hidden)}" if self.model == "mlp" else "head"

    # -- parameters ---------------------------------------------------------------------------
    def init(self, key: jax.Array) -> dict:
        """Initial parameters (in the stored, reparametrised space)."""
        ln = self.norm == "layer_norm"
        if self.model == "mlp":
            params = models.init_mlp(key, math.prod(self.image_shape), self.hidden, self.num_classes, layer_norm=ln)
        elif self.model == "conv":
            params = models.init_conv(
                key, self.image_shape, self.hidden, self.num_classes, kernel_size=self.kernel_size, layer_norm=ln
            )
        else:
            cin = 1 if len(self.image_shape) == 1 else self.image_shape[-1]
            params = models.init_conv1d(
                key, cin, self.hidden, self.num_classes, kernel_size=self.kernel_size, layer_norm=ln
            )
        scale = jnp.exp(self.log_scale)
        return jax.tree_util.tree_map(lambda w: w / scale, params)

    def logits(self, params: dict, x: jax.Array) -> jax.Array:
        """``[B, num_classes]`` logits for examples ``x`` ``[B, *image_shape]``."""
        scale = jnp.exp(self.log_scale)
        params = jax.tree_util.tree_map(lambda w: w * scale, params)
        if self.model == "mlp":
            return models.apply_mlp(params, x, self.activation)
        if self.model == "conv":
            return models.apply_conv(params, x, self.activation, downsample=self.downsample)
        return models.apply_conv1d(params, x, self.activation, downsample=self.downsample)


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
