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
* fractional step embedding (VeLO / Celo): ``tanh(10·(t/T − s))`` for the 9 shifts in
  :data:`FRACTION_SHIFTS`.
* loss-buffer features (VeLO / Celo, ``BufferLossAccumulators``): 10 bias-corrected loss EMAs with
  half-lives ``logspace(1, log10(T), 10)`` and their running minima, summarised as 9 features
  ``clip((ĉ_i − min_i) / max(1e-8, ĉ_{i+1} − min_i) − 1, −1, 1)`` (0 for the first 2 steps); see
  :func:`update_loss_buffer`.
* gradient clipping: elementwise to ``±1000`` before anything else (VeLO / Celo).
* decay reparametrisation: ``θ = log(1−β)/10`` and ``β = 1 − exp(10·θ)``.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "leaf_path",
    "FRACTION_SHIFTS",
    "pair_decays",
    "Accumulators",
    "init_accumulators",
    "update_accumulators",
    "GRAD_CLIP",
    "TANH_TIMESCALES",
    "LossBufferState",
    "clip_gradient",
    "fractional_tanh_embedding",
    "init_loss_buffer",
    "loss_buffer_features",
    "param_scale",
    "update_loss_buffer",
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

FRACTION_SHIFTS: tuple[float, ...] = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
"""Shifts ``s`` of the fractional step embedding ``tanh(10·(t/T − s))`` (VeLO / Celo)."""

GRAD_CLIP = 1000.0
"""Elementwise gradient clip applied first by VeLO and Celo."""

NUM_LOSS_EMAS = 10
"""Number of loss EMAs in the loss buffer (half-lives log-spaced from 10 to ``num_steps``)."""

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


def fractional_tanh_embedding(step: jax.Array, num_steps: jax.Array) -> jax.Array:
    """Training-progress features ``tanh(10·(t/T − s))`` for s in :data:`FRACTION_SHIFTS`, shape ``[9]``.

    ``t`` and ``T`` may be traced; ``T`` is floored at 1.
    """
    frac = jnp.asarray(step, jnp.float32) / jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    return jnp.tanh(10.0 * (frac - jnp.asarray(FRACTION_SHIFTS, jnp.float32)))


class LossBufferState(NamedTuple):
    """Loss EMAs of :func:`init_loss_buffer` (VeLO / Celo's ``BufferLossAccumulators``).

    Attributes:
      means: ``[10]`` EMAs of the (clipped) loss, not bias-corrected.
      running_min: ``[10]`` running minima of the bias-corrected EMAs (1e12 at start).
      decays: ``[10]`` EMA decays ``exp(−1/halflife)``.
      iteration: int32 number of losses seen.
    """

    means: jax.Array
    running_min: jax.Array
    decays: jax.Array
    iteration: jax.Array


def init_loss_buffer(num_steps) -> LossBufferState:
    """Empty loss buffer for a run of ``num_steps`` (a Python int or a traced scalar).

    Half-lives are ``logspace(1, log10(num_steps), 10)`` (as the reference, also below 10 steps, where
    they decrease from 10 to ``num_steps``; ``num_steps`` is floored at 1) and decays
    ``exp(−1/halflife)``.
    """
    log_t = jnp.log10(jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0))
    halflife = 10.0 ** jnp.linspace(1.0, log_t, NUM_LOSS_EMAS)
    return LossBufferState(
        means=jnp.zeros((NUM_LOSS_EMAS,), jnp.float32),
        running_min=jnp.full((NUM_LOSS_EMAS,), 999999999999.0, jnp.float32),
        decays=jnp.exp(-1.0 / halflife).astype(jnp.float32),
        iteration=jnp.zeros([], jnp.int32),
    )


def update_loss_buffer(state: LossBufferState, loss: jax.Array) -> LossBufferState:
    """Adds one loss to the buffer.

    With ``k`` the iteration before the update and ``ĉ = means / (1 − β^(k+1))``:
    the loss is clipped to ``min(2·|max(ĉ)|, ℓ)`` (``max(ĉ)`` replaced by ``ℓ`` on the first
    step), ``means ← β·means + (1−β)·ℓ``, ``running_min ← min(running_min, means/(1 − β^(k+1)))``
    and ``k ← k + 1``.
    """
    loss = jnp.asarray(loss, jnp.float32)
    decays = state.decays
    correction = 1.0 - decays ** (state.iteration + 1).astype(jnp.float32)
    approx_max = jnp.max(state.means / correction)
    approx_max = jnp.where(state.iteration == 0, loss, approx_max)
    loss = jnp.minimum(2.0 * jnp.abs(approx_max), loss)
    means = decays * state.means + (1.0 - decays) * loss
    running_min = jnp.minimum(state.running_min, means / correction)
    return LossBufferState(means, running_min, decays, state.iteration + 1)


def loss_buffer_features(state: LossBufferState) -> jax.Array:
    """The 9 loss features of the buffer, ``[9]``.

    With ``ĉ = means / (1 − β^k)`` (``k`` the number of losses seen):
    ``f_i = clip((ĉ_i − min_i) / max(1e-8, ĉ_{i+1} − min_i) − 1, −1, 1)`` for i = 0..8, all 0 while
    ``k ≤ 2``.
    """
    corrected = state.means / (1.0 - state.decays ** state.iteration.astype(jnp.float32))
    running_min = state.running_min[:-1]
    denom = jnp.maximum(1e-8, corrected[1:] - running_min)
    feats = jnp.clip((corrected[:-1] - running_min) / denom - 1.0, -1.0, 1.0)
    return jnp.where(state.iteration <= 2, jnp.zeros_like(feats), feats)


def clip_gradient(grad: jax.Array, limit: float = GRAD_CLIP) -> jax.Array:
    """Elementwise clip to ``[−limit, limit]``."""
    return jnp.clip(grad, -limit, limit)


def param_scale(param: jax.Array) -> jax.Array:
    """Per-tensor parameter scale ``sqrt(mean(p²) + 1e-9)`` (VeLO / Celo's ``param_scale_mult``)."""
    p = param.astype(accumulator_dtype(param.dtype))
    return jnp.sqrt(jnp.mean(jnp.square(p)) + 1e-9)


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


class Accumulators(NamedTuple):
    """The accumulators of one tensor of the Adafactor-feature optimizers (small_fc_lopt, STAR, Celo, VeLO).

    Attributes:
      momentum: tuple of momentum accumulators, one per momentum decay.
      rms: tuple of second-moment accumulators, one per RMS decay.
      factored: the :class:`FactoredAccumulator` of the Adafactor decays.
    """

    momentum: tuple
    rms: tuple
    factored: FactoredAccumulator


def init_accumulators(param: jax.Array, num_momentum: int, num_rms: int, num_adafactor: int) -> Accumulators:
    """Fresh :class:`Accumulators` of ``param`` for the given numbers of decays."""
    return Accumulators(
        momentum=init_momentum(param, num_momentum),
        rms=init_rms(param, num_rms),
        factored=init_factored(param, num_adafactor),
    )


def update_accumulators(
    acc: Accumulators, grad: jax.Array, momentum_decays: jax.Array, rms_decays: jax.Array, adafactor_decays: jax.Array
) -> tuple[Accumulators, tuple[jax.Array, ...]]:
    """``(accumulators, fac_g)``: every accumulator updated with ``grad``, and the preconditioned gradients."""
    momentum = update_momentum(acc.momentum, grad, momentum_decays)
    rms = update_rms(acc.rms, grad, rms_decays)
    factored, fac_g = update_factored(acc.factored, grad, adafactor_decays)
    return Accumulators(momentum, rms, factored), fac_g


def pair_decays(a: Sequence, b: Sequence, what: str) -> list[tuple]:
    """Pairs two per-decay tuples like NumPy broadcasting of their trailing decay axes.

    Equal lengths pair entry by entry; a length of 1 pairs with every entry of the other.

    Raises:
      ValueError: for other lengths; ``what`` names the two tuples in the message.
    """
    if len(a) == len(b):
        return list(zip(a, b, strict=True))
    if len(b) == 1:
        return [(x, b[0]) for x in a]
    if len(a) == 1:
        return [(a[0], y) for y in b]
    raise ValueError(
        f"The learned optimizer's features combine {what}; their numbers of decays must be equal or one of "
        f"them 1, got {len(a)} and {len(b)}. Change the initial_*_decays so that they are compatible."
    )


def leaf_path(path) -> str:
    """A key path (``jax.tree_util.tree_flatten_with_path``) as ``/``-joined names: dict keys, attribute
    names and sequence indices (as numbers), e.g. ``"dense0/w"`` or ``"layers/0/b"``."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)
