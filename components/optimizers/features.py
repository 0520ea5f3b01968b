"""Accumulators and feature primitives shared by the per-parameter learned optimizers.

These are the building blocks of learned_optimization's MLP learned optimizers
(``learned_optimizers/common.py`` and ``adafac_mlp_lopt.py``), re-implemented for
optax-style pure functions. See ``research/algorithms.md`` §0.2.

Every accumulator is vectorised over a vector of decays ``β = (β_1, …, β_n)``. The reference keeps
the decay index as a trailing axis (``[*shape, n]``); here one accumulator holds a *tuple* of ``n``
arrays. The maths is identical, but every array then has the parameter's own shape (or a reduced
one for the factored statistics), so XLA can fuse the accumulator updates, the features and the
learned optimizer's MLP into one elementwise kernel with same-shaped outputs instead of writing and
re-reading ``[*shape, n]`` slabs (DESIGN.md, "Performance model").

Formulas, per decay ``β`` and gradient ``g`` (all without bias correction):

* momentum:  ``m ← β·m + (1−β)·g``
* RMS:       ``v ← β̄·v + (1−β̄)·g²`` with ``β̄ = clip(β, 0, 1)``
* factored (Adafactor-style), for tensors with at least 2 axes, with ``(d1, d0)`` the second
  largest and largest axes: ``v_row ← β̄·v_row + (1−β̄)·mean_{d0}(g² + 1e-30)``,
  ``v_col ← β̄·v_col + (1−β̄)·mean_{d1}(g² + 1e-30)`` and the preconditioned gradient
  ``fac_g = g · rsqrt(v_row / mean_{d1}(v_row)) · rsqrt(v_col)`` (``rsqrt(x) = 1/sqrt(max(x, 1e-9))``);
  for tensors with fewer than 2 axes ``v ← β̄·v + (1−β̄)·(g² + 1e-30)`` and
  ``fac_g = g · rsqrt(v + 1e-9)``.
* second-moment normaliser: ``x / sqrt(1e-5 + mean(x²))`` over all tensor axes.
* step embedding: ``tanh(t/τ − 1)`` for the 11 timescales in :data:`TANH_TIMESCALES`.
* decay reparametrisation: ``θ = log(1−β)/10`` and ``β = 1 − exp(10·θ)``.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "TANH_TIMESCALES",
    "FactoredAccumulator",
    "accumulator_dtype",
    "decay_to_param",
    "factored_dims",
    "factored_preconditioner",
    "init_factored",
    "init_momentum",
    "init_rms",
    "inverse_rms",
    "param_to_decay",
    "safe_rsqrt",
    "second_moment_normalizer",
    "tanh_step_embedding",
    "update_factored",
    "update_momentum",
    "update_rms",
]

TANH_TIMESCALES: tuple[float, ...] = (
    1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5,
)  # fmt: skip
"""Timescales τ of the step-count embedding ``tanh(t/τ − 1)`` (MLPLOpt / AdafacMLPLOpt)."""

_FACTORED_EPS = 1e-30  # added to g² before the factored means (reference value)
_SAFE_RSQRT_FLOOR = 1e-9


def accumulator_dtype(dtype) -> jnp.dtype:
    """Dtype the accumulators of a parameter with ``dtype`` are kept in (at least float32)."""
    return jnp.promote_types(dtype, jnp.float32)


# --------------------------------------------------------------------------- reparametrisation


def decay_to_param(decay: jax.Array) -> jax.Array:
    """Maps a decay β in [0, 1) to the meta-learned space: ``log(1 − β) / 10``."""
    return jnp.log(1.0 - jnp.asarray(decay, jnp.float32)) / 10.0


def param_to_decay(param: jax.Array) -> jax.Array:
    """Inverse of :func:`decay_to_param`: ``1 − exp(10·θ)``."""
    return 1.0 - jnp.exp(10.0 * jnp.asarray(param, jnp.float32))


# --------------------------------------------------------------------------- global features


def tanh_step_embedding(step: jax.Array) -> jax.Array:
    """Step-count features ``tanh(t/τ − 1)`` for τ in :data:`TANH_TIMESCALES`, shape ``[11]``."""
    t = jnp.asarray(step).astype(jnp.float32)
    return jnp.tanh(t / jnp.asarray(TANH_TIMESCALES, jnp.float32) - 1.0)


# --------------------------------------------------------------------------- normalisers


def inverse_rms(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Scalar ``1 / sqrt(eps + mean(x²))`` over every axis of ``x``.

    A feature that is constant along an axis may be passed un-broadcast (with that axis of size 1):
    the mean of squares, hence the result, is the same as for the broadcast tensor.
    """
    return jax.lax.rsqrt(eps + jnp.mean(jnp.square(x)))


def second_moment_normalizer(x: jax.Array, axis=None, eps: float = 1e-5) -> jax.Array:
    """``x / sqrt(eps + mean(x², axis))`` with the reduced axes kept (``axis=None``: all axes)."""
    return x * jax.lax.rsqrt(eps + jnp.mean(jnp.square(x), axis=axis, keepdims=True))


def safe_rsqrt(x: jax.Array) -> jax.Array:
    """``1 / sqrt(max(x, 1e-9))``."""
    return jax.lax.rsqrt(jnp.maximum(x, _SAFE_RSQRT_FLOOR))


# --------------------------------------------------------------------------- accumulators


def _check_decays(num_state: int, decays: jax.Array, what: str) -> None:
    if jnp.ndim(decays) != 1 or jnp.shape(decays)[0] != num_state:
        raise ValueError(
            f"{what}: expected a vector of {num_state} decays (one per accumulator in the state), "
            f"got shape {jnp.shape(decays)}. Build the state and the update with the same decays."
        )


def init_momentum(param: jax.Array, num_decays: int) -> tuple[jax.Array, ...]:
    """Zero momentum accumulators, one per decay, shaped like ``param``."""
    dtype = accumulator_dtype(param.dtype)
    return tuple(jnp.zeros(param.shape, dtype) for _ in range(num_decays))


def update_momentum(momentum: Sequence[jax.Array], grad: jax.Array, decays: jax.Array) -> tuple[jax.Array, ...]:
    """``m_k ← β_k·m_k + (1−β_k)·g`` for every decay ``β_k`` (no clipping, as the reference)."""
    _check_decays(len(momentum), decays, "update_momentum")
    out = []
    for k, m in enumerate(momentum):
        beta = decays[k].astype(m.dtype)
        out.append((beta * m + (1.0 - beta) * grad.astype(m.dtype)).astype(m.dtype))
    return tuple(out)


def init_rms(param: jax.Array, num_decays: int) -> tuple[jax.Array, ...]:
    """Zero second-moment accumulators, one per decay, shaped like ``param``."""
    return init_momentum(param, num_decays)


def update_rms(rms: Sequence[jax.Array], grad: jax.Array, decays: jax.Array) -> tuple[jax.Array, ...]:
    """``v_k ← β̄_k·v_k + (1−β̄_k)·g²`` with ``β̄ = clip(β, 0, 1)``."""
    _check_decays(len(rms), decays, "update_rms")
    out = []
    for k, v in enumerate(rms):
        beta = jnp.clip(decays[k], 0.0, 1.0).astype(v.dtype)
        g = grad.astype(v.dtype)
        out.append((beta * v + (1.0 - beta) * (g * g)).astype(v.dtype))
    return tuple(out)


def factored_dims(shape: Sequence[int]) -> tuple[int, int] | None:
    """The axes ``(d1, d0)`` to factor over: second largest and largest; ``None`` below 2-D.

    Ties are broken by axis order (a stable sort), so among equal sizes the later axes win.
    """
    if len(shape) < 2:
        return None
    order = np.argsort(np.asarray(shape), kind="stable")
    return int(order[-2]), int(order[-1])


class FactoredAccumulator(NamedTuple):
    """Adafactor-style statistics of one tensor, one entry per decay.

    For a factored tensor (≥ 2 axes) ``v_row`` holds means over the largest axis ``d0`` (shape
    without ``d0``), ``v_col`` means over the second largest axis ``d1`` (shape without ``d1``) and
    ``v_full`` is empty. Otherwise ``v_row`` and ``v_col`` are empty and ``v_full`` is shaped like
    the tensor.
    """

    v_row: tuple[jax.Array, ...]
    v_col: tuple[jax.Array, ...]
    v_full: tuple[jax.Array, ...]


def init_factored(param: jax.Array, num_decays: int) -> FactoredAccumulator:
    """Zero factored statistics for ``param`` (see :class:`FactoredAccumulator`)."""
    dtype = accumulator_dtype(param.dtype)
    dims = factored_dims(param.shape)
    if dims is None:
        full = tuple(jnp.zeros(param.shape, dtype) for _ in range(num_decays))
        return FactoredAccumulator(v_row=(), v_col=(), v_full=full)
    d1, d0 = dims
    row_shape = tuple(s for a, s in enumerate(param.shape) if a != d0)
    col_shape = tuple(s for a, s in enumerate(param.shape) if a != d1)
    rows = tuple(jnp.zeros(row_shape, dtype) for _ in range(num_decays))
    cols = tuple(jnp.zeros(col_shape, dtype) for _ in range(num_decays))
    return FactoredAccumulator(v_row=rows, v_col=cols, v_full=())


def factored_preconditioner(v_row: jax.Array, v_col: jax.Array, dims: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Row and column factors of the Adafactor preconditioner, broadcastable to the tensor.

    Returns ``(rsqrt(v_row / mean_{d1}(v_row)), rsqrt(v_col))`` with ``d0`` re-inserted into the
    first and ``d1`` into the second; their product with a tensor ``x`` is
    ``x / sqrt(V̂)`` where ``V̂ = v_row ⊗ v_col / mean(v_row)`` is the factored second moment.
    """
    d1, d0 = dims
    d1_in_row = d1 - 1 if d1 > d0 else d1  # position of d1 once d0 has been reduced away
    row_mean = jnp.mean(v_row, axis=d1_in_row, keepdims=True)
    row_factor = safe_rsqrt(v_row / (row_mean + 1e-9))
    col_factor = safe_rsqrt(v_col)
    return jnp.expand_dims(row_factor, d0), jnp.expand_dims(col_factor, d1)


def update_factored(
    acc: FactoredAccumulator, grad: jax.Array, decays: jax.Array
) -> tuple[FactoredAccumulator, tuple[jax.Array, ...]]:
    """Updates the factored statistics and returns them with the preconditioned gradients.

    Returns:
      ``(new_acc, fac_g)`` where ``fac_g[k]`` is the gradient preconditioned with the statistics
      of decay ``k`` (shaped like ``grad``, in the accumulator dtype).
    """
    dims = factored_dims(grad.shape)
    num = len(acc.v_full) if dims is None else len(acc.v_row)
    _check_decays(num, decays, "update_factored")
    dtype = accumulator_dtype(grad.dtype)
    g = grad.astype(dtype)
    g_sq = g * g + _FACTORED_EPS
    fac_g = []
    if dims is None:
        fulls = []
        for k, v in enumerate(acc.v_full):
            beta = jnp.clip(decays[k], 0.0, 1.0).astype(dtype)
            v = (beta * v + (1.0 - beta) * g_sq).astype(dtype)
            fulls.append(v)
            fac_g.append(g * safe_rsqrt(v + 1e-9))
        return FactoredAccumulator(v_row=(), v_col=(), v_full=tuple(fulls)), tuple(fac_g)
    d1, d0 = dims
    mean_d0 = jnp.mean(g_sq, axis=d0)
    mean_d1 = jnp.mean(g_sq, axis=d1)
    rows, cols = [], []
    for k, (v_row, v_col) in enumerate(zip(acc.v_row, acc.v_col, strict=True)):
        beta = jnp.clip(decays[k], 0.0, 1.0).astype(dtype)
        v_row = (beta * v_row + (1.0 - beta) * mean_d0).astype(dtype)
        v_col = (beta * v_col + (1.0 - beta) * mean_d1).astype(dtype)
        rows.append(v_row)
        cols.append(v_col)
        row_factor, col_factor = factored_preconditioner(v_row, v_col, dims)
        fac_g.append(g * row_factor * col_factor)
    return FactoredAccumulator(v_row=tuple(rows), v_col=tuple(cols), v_full=()), tuple(fac_g)
