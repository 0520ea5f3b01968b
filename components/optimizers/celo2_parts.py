"""The parts of :mod:`.celo2`: Newton–Schulz, the per-tensor normalisation, the features, the routing, the state.

See :mod:`.celo2` for the maths and the reference; everything here is a pure function of arrays or
a state container.
"""

import functools
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from components.optimizers import velo_mlp as V
from components.optimizers.features import leaf_path

__all__ = [
    "NS_COEFFS",
    "AdamMoments",
    "Celo2State",
    "adam_leaf_mask",
    "celo2_feature_groups",
    "celo2_features",
    "newton_schulz",
    "normalize_last_two_axes",
]

NS_COEFFS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
"""Coefficients ``(a, b, c)`` of the quintic Newton–Schulz iteration (Muon's, Celo2's)."""

_HIGHEST = jax.lax.Precision.HIGHEST
_POSITIONAL_TABLE = "pos"


# --------------------------------------------------------------------------- maths


def normalize_last_two_axes(x: jax.Array, ndim: int, eps: float = 1e-9) -> jax.Array:
    """``x · rsqrt(eps + mean(x²))`` with the mean over axes ``[-2:]`` of the first ``ndim`` axes of ``x``.

    ``ndim`` is the parameter's rank: ``x`` may carry trailing channel axes after it. A scalar
    (``ndim = 0``) is normalised by itself.
    """
    axes = tuple(range(ndim))[-2:]
    return x * jax.lax.rsqrt(eps + jnp.mean(jnp.square(x), axis=axes, keepdims=True))


def newton_schulz(x: jax.Array, coeffs: Sequence[float] = NS_COEFFS, steps: int = 5, eps: float = 1e-8) -> jax.Array:
    """Quintic Newton–Schulz approximation of the polar factor of the last two axes of ``x``.

    Args:
      x: an array with at least 2 axes (leading axes are a batch of matrices).
      coeffs: ``(a, b, c)`` of ``X ← a·X + (b·A + c·A²)·X``, ``A = X Xᵀ``.
      steps: number of iterations.
      eps: added to the Frobenius norm of the initial scaling.

    Returns:
      ``U·diag(q^steps(σ/‖X‖))·Vᵀ`` for ``x = U diag(σ) Vᵀ`` (see the module docstring), shaped like ``x``.

    Raises:
      ValueError: for fewer than 2 axes or not 3 coefficients.
    """
    if x.ndim < 2:
        raise ValueError(f"newton_schulz needs an array with >= 2 axes (a matrix or a batch), got shape {x.shape}.")
    if len(coeffs) != 3:
        raise ValueError(f"newton_schulz needs 3 coefficients (a, b, c), got {coeffs!r}.")
    a, b, c = (float(v) for v in coeffs)
    wide = x.shape[-2] <= x.shape[-1]
    y = x if wide else jnp.swapaxes(x, -2, -1)
    norm = jnp.sqrt(jnp.sum(jnp.square(y), axis=(-2, -1), keepdims=True))
    y = y / (norm + eps)
    matmul = functools.partial(jnp.matmul, precision=_HIGHEST)
    for _ in range(steps):
        gram = matmul(y, jnp.swapaxes(y, -2, -1))
        y = a * y + matmul(b * gram + c * matmul(gram, gram), y)
    return y if wide else jnp.swapaxes(y, -2, -1)


# Celo2's un-normalised feature channels of one tensor, in the reference's groups (Celo's, with
# rsqrt(rms + 1e-8) and only the first 9 groups for tensors with < 2 axes): see the module docstring
celo2_feature_groups = functools.partial(V.hyper_feature_groups, rms_eps=1e-8, vector_groups=False)


def celo2_features(*args) -> list[jax.Array]:
    """:func:`celo2_feature_groups` flattened to a list of channels."""
    return [c for group in celo2_feature_groups(*args) for c in group]


# --------------------------------------------------------------------------- routing


def _is_adam_leaf(path: str, shape: tuple[int, ...], adam_regex: str | None) -> bool:
    if adam_regex is not None:
        return re.search(adam_regex, path) is not None
    last = path.rsplit("/", 1)[-1]
    return len(shape) <= 1 or "embed" in path or last == _POSITIONAL_TABLE


def adam_leaf_mask(params: Any, adam_regex: str | None = None) -> list[bool]:
    """For each leaf of ``params`` (in ``jax.tree.leaves`` order): does it take the AdamW branch?

    Args:
      params: the parameter tree (arrays or shape-carrying objects).
      adam_regex: ``None`` for the default rule, or a regex over the leaf paths (module docstring).
    """
    pairs = jax.tree_util.tree_flatten_with_path(params)[0]
    return [_is_adam_leaf(leaf_path(path), tuple(np.shape(leaf)), adam_regex) for path, leaf in pairs]


# --------------------------------------------------------------------------- state


class AdamMoments(NamedTuple):
    """The AdamW branch's accumulators of one leaf: first moment ``mu`` and second moment ``nu``."""

    mu: jax.Array
    nu: jax.Array


class Celo2State(NamedTuple):
    """State of :class:`Celo2`'s transformation.

    Attributes:
      count: int32 number of updates so far (the learning-rate schedule's argument).
      leaves: params-shaped tree; each leaf the :class:`.features.Accumulators` of a learned-branch
        leaf or the :class:`AdamMoments` of an AdamW-branch leaf.
    """

    count: jax.Array
    leaves: Any
