"""An MLP autoencoder on images: reconstruct the input, no labels.

The task learned_optimization calls ``ImageMLPAE`` (``tasks/fixed/mlp_ae.py``; TaskSet's
``FixedMLPAE``): a fully connected network ``pixels -> hidden... -> pixels`` whose outputs pass a
sigmoid, trained on the mean squared error between the sigmoid outputs and the input pixels::

    x̂ = sigmoid(MLP(flatten(x)))          x in [0, 1]^P (P = H·W·C, the prepared images' range)
    loss = mean_batch mean_pixels (x̂ - x)²

The network is :func:`components.tasks.models.init_mlp` / ``apply_mlp`` with ``P`` outputs (LeCun-normal
weights, zero biases; ``dense{L}`` is the decoder's output layer). Labels in the batch are ignored:
the target is the input itself.

``normalized_loss`` is ``clip(loss, 0, 1)``, non-finite -> 1: learned_optimization's normaliser of
this task. With pixels and outputs both in ``[0, 1]`` the squared error of a pixel is at most 1, so
the clip bounds the loss without cutting off any finite value; at initialisation
``x̂ ≈ 0.5`` and the loss is ``mean (x - 0.5)²`` (about 0.2 for MNIST's mostly black pixels).

``accuracy`` is NaN and ``has_accuracy`` False (a reconstruction has no classes), so the evaluation
records losses only, as for the noisy quadratic.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from components.tasks import models
from components.tasks.base import ImageData
from components.tasks.protocol import clip_loss

__all__ = ["AutoencoderTask", "AE_LOSS_MAX"]

AE_LOSS_MAX = 1.0  # the largest squared error of one pixel in [0, 1] (learned_optimization's clip)


def _zero_index() -> jax.Array:
    return jnp.zeros((), jnp.int32)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class AutoencoderTask:
    """Reconstruct images with an MLP ``P -> hidden... -> P`` and a sigmoid output (module docstring).

    Static attributes: ``name``, ``hidden`` (encoder and decoder widths in order, e.g.
    ``(128, 16, 128)``: the middle one is the code), ``activation``, ``image_shape``, ``batch_size``.
    Array attribute: ``dataset_index`` (as for :class:`~components.tasks.Task`).

    Shapes: ``batch = (x [B, *image_shape] float32, y [B] int32)``; ``y`` is ignored.
    :meth:`reconstruct` gives ``x̂`` ``[B, *image_shape]``.

    Example::

        task = AutoencoderTask("ae", (128, 16, 128), "relu", (8, 8, 1), 128)
        loss = task.loss(task.init(k1), task.batch(data, k2))   # mean (x̂ - x)², ≈ mean (x - 0.5)² at init
    """

    name: str
    hidden: tuple[int, ...]
    activation: str
    image_shape: tuple[int, ...]
    batch_size: int
    dataset_index: jax.Array = dataclasses.field(default_factory=_zero_index)

    has_accuracy = False

    def __post_init__(self):
        models.check_choice("activation", self.activation, models.ACTIVATIONS)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"task {self.name!r}: an autoencoder needs hidden widths >= 1, got {self.hidden}")

    def tree_flatten(self):
        return (self.dataset_index,), (self.name, self.hidden, self.activation, self.image_shape, self.batch_size)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*aux, *children)

    @property
    def head_key(self) -> str:
        """The params entry of the decoder's output layer."""
        return f"dense{len(self.hidden)}"

    @property
    def num_pixels(self) -> int:
        return math.prod(self.image_shape)

    def init(self, key: jax.Array) -> dict:
        return models.init_mlp(key, self.num_pixels, self.hidden, self.num_pixels)

    def reconstruct(self, params: dict, x: jax.Array) -> jax.Array:
        """``x̂ = sigmoid(MLP(flatten(x)))`` in the shape of ``x``."""
        return jax.nn.sigmoid(models.apply_mlp(params, x, self.activation)).reshape(x.shape)

    def loss(self, params: dict, batch: tuple[jax.Array, jax.Array], key: jax.Array | None = None) -> jax.Array:
        """Mean squared reconstruction error of the batch's images (its labels are not used)."""
        del key
        x = batch[0]
        return jnp.mean(jnp.square(self.reconstruct(params, x) - x))

    def accuracy(self, params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        del params, batch
        return jnp.float32(jnp.nan)

    def normalized_loss(self, loss: jax.Array) -> jax.Array:
        """``clip(loss, 0, 1)``, non-finite -> 1 (module docstring)."""
        return clip_loss(loss, AE_LOSS_MAX)

    def batch(self, data: ImageData, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """A uniformly sampled minibatch (with replacement): images and their (unused) labels."""
        idx = jax.random.randint(key, (self.batch_size,), 0, data.n[self.dataset_index])
        return data.x[self.dataset_index, idx], data.y[self.dataset_index, idx]
