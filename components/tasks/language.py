"""Character-level language modelling: a causal transformer on a token array (tiny-shakespeare).

The data is a :class:`TokenData` pytree holding one device-resident int32 token array (e.g. the
prepared ``train_tokens``); :meth:`CharLMTask.batch` draws random windows from a contiguous
*fraction range* of it with :func:`components.data.sample_windows`, inside ``jit``. Ranges let one
corpus serve two tasks without copying it: pre-train on ``token_range=(0.0, 0.5)`` of
``train_tokens`` and fine-tune on ``(0.5, 1.0)`` (:mod:`components.tasks.finetune`).

Shapes: ``batch = (inputs [B, T] int32, targets [B, T] int32)`` with ``targets[:, t] =
inputs[:, t + 1]`` in the corpus; ``loss`` is the mean next-character cross-entropy over all ``B·T``
positions (nats), ``accuracy`` the fraction of positions whose arg-max prediction is the target.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from components.data import sample_windows
from components.tasks import transformer
from components.tasks.base import normalize_loss

__all__ = ["TokenData", "CharLMTask", "token_windows", "token_bounds"]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class TokenData:
    """A token corpus on the device. ``tokens``: int32 ``[n]`` (indices into the vocabulary)."""

    tokens: jax.Array

    def tree_flatten(self):
        return (self.tokens,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def token_bounds(n: int, token_range: tuple[float, float], context: int) -> tuple[int, int]:
    """``(floor(n * lo), floor(n * hi))``, the token slice a range selects (static ints).

    Raises:
      ValueError: if the range is not ``0 <= lo < hi <= 1`` or holds no window of ``context + 1`` tokens.
    """
    lo_f, hi_f = token_range
    if not 0.0 <= lo_f < hi_f <= 1.0:
        raise ValueError(f"token_range must satisfy 0 <= lo < hi <= 1, got {token_range}")
    lo, hi = math.floor(n * lo_f), math.floor(n * hi_f)
    if hi - lo <= context:
        raise ValueError(
            f"token_range {token_range} of {n} tokens holds {hi - lo} tokens; a window of context={context}"
            " plus its target needs more: widen the range or shorten the context"
        )
    return lo, hi


def token_windows(tokens: np.ndarray, context: int, max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive non-overlapping windows from the start of ``tokens``, for deterministic evaluation.

    Returns:
      ``(inputs, targets)`` int32 ``[W, context]`` with ``W = min((len - 1) // context, max_windows)``.

    Raises:
      ValueError: if ``tokens`` holds no window.
    """
    tokens = np.asarray(tokens, np.int32)
    w = (len(tokens) - 1) // context
    if max_windows is not None:
        w = min(w, max_windows)
    if w < 1:
        raise ValueError(f"{len(tokens)} tokens hold no window of context={context} plus its target")
    x = tokens[: w * context].reshape(w, context)
    y = tokens[1 : w * context + 1].reshape(w, context)
    return x, y


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class CharLMTask:
    """Next-character prediction with a causal transformer (:mod:`components.tasks.transformer`).

    All attributes are static (the task has no array leaves): ``vocab_size`` ``V``, ``context``
    ``T`` (window length and size of the learned positional embedding), ``width`` ``D``,
    ``depth`` (blocks), ``heads``, ``batch_size`` ``B``, ``token_range`` (the fraction range of the
    token array that batches come from) and ``mlp_ratio``.

    ``normalized_loss`` is ``clip(loss, 0, 1.5 ln V)``, non-finite -> max: ``ln V`` is the loss of
    the uniform predictor (and ≈ the loss at initialisation).

    Example::

        task = CharLMTask("lm", vocab_size=65, context=64, width=64, depth=2, heads=4, batch_size=32)
        data = TokenData(jnp.asarray(prepared["train_tokens"]))
        loss = task.loss(task.init(k1), task.batch(data, k2))  # ≈ ln 65 = 4.17 at init
    """

    name: str
    vocab_size: int
    context: int
    width: int
    depth: int
    heads: int
    batch_size: int
    token_range: tuple[float, float] = (0.0, 1.0)
    mlp_ratio: int = 4

    has_accuracy = True
    head_key = "unembed"

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if min(self.vocab_size, self.context, self.width, self.depth, self.heads, self.batch_size) < 1:
            raise ValueError(f"CharLMTask sizes must be >= 1, got {self}")
        lo, hi = self.token_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"token_range must satisfy 0 <= lo < hi <= 1, got {self.token_range}")

    def tree_flatten(self):
        return (), dataclasses.astuple(self)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*aux)

    def init(self, key: jax.Array) -> dict:
        return transformer.init_transformer(
            key, self.vocab_size, self.context, self.width, self.depth, self.heads, self.mlp_ratio
        )

    def logits(self, params: dict, inputs: jax.Array) -> jax.Array:
        """``[B, T, V]`` next-token logits."""
        return transformer.apply_transformer(params, inputs, self.heads)

    def loss(self, params: dict, batch: tuple[jax.Array, jax.Array], key: jax.Array | None = None) -> jax.Array:
        """Mean next-character cross-entropy (nats) over every position of ``batch = (inputs, targets)``."""
        del key
        inputs, targets = batch
        logp = jax.nn.log_softmax(self.logits(params, inputs))
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    def accuracy(self, params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        inputs, targets = batch
        return jnp.mean(jnp.argmax(self.logits(params, inputs), axis=-1) == targets)

    def normalized_loss(self, loss: jax.Array) -> jax.Array:
        return normalize_loss(loss, self.vocab_size)

    def batch(self, data: TokenData, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``batch_size`` random windows (with replacement) from this task's range of ``data.tokens``."""
        lo, hi = token_bounds(data.tokens.shape[-1], self.token_range, self.context)
        return sample_windows(data.tokens[lo:hi], key, self.batch_size, self.context)
