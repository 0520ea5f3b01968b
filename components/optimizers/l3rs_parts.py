"""The parts of :mod:`.l3rs`: its base directions, its multi-timescale status features, its head, its state.

See :mod:`.l3rs` for the maths; everything here is a pure function of arrays (the directions read
their hyperparameters from the :class:`~.l3rs.L3RS` object they are given). The progress features
are :func:`.features.fractional_tanh_embedding`, shared with VeLO / Celo.
"""

import math
from collections.abc import Callable, Sequence
from numbers import Real
from typing import NamedTuple

import jax
import jax.numpy as jnp

from components.optimizers import features as F
from components.optimizers.per_parameter import check_int

__all__ = [
    "BASE_DIRECTIONS",
    "DEFAULT_EMA_DECAYS",
    "DIRECTIONS",
    "NORM_EPS",
    "RATE_SOFT_CAP",
    "Direction",
    "L3RSState",
    "check_decay",
    "check_directions",
    "check_ema_decays",
    "check_hidden_sizes",
    "check_mixing",
    "direction_rms",
    "l3rs_status_features",
    "layer_rms",
    "layer_status",
    "loss_arg",
    "mixing_and_rates",
    "safe_sqrt",
]

DEFAULT_EMA_DECAYS: tuple[float, ...] = (0.9, 0.99, 0.999)
"""Decays ``β_i = 1 − 10^{−i}`` of the status EMAs: timescales of 10, 100 and 1000 steps."""

NORM_EPS = 1e-12
"""``ε`` of the direction normalisation ``d̂ = d / (RMS(d) + ε)`` (module docstring of :mod:`.l3rs`)."""

_LOG_FLOOR = 1e-12  # floor of the norms and losses inside the log features
RATE_SOFT_CAP = 10.0
"""Soft cap of the rate output: ``λ = λ₀ · exp(cap · tanh(o / cap))``."""


# --------------------------------------------------------------------------- base directions


def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` for ``x ≥ 0`` whose derivative is 0 (not inf/NaN) at ``x = 0``."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def direction_sgd(lopt, g: jax.Array, buffers: tuple, count: jax.Array) -> tuple[jax.Array, tuple]:
    del lopt, count
    return g, buffers


def direction_momentum(lopt, g: jax.Array, buffers: tuple, count: jax.Array) -> tuple[jax.Array, tuple]:
    del count
    (trace,) = buffers
    trace = g + lopt.momentum_decay * trace
    return trace, (trace,)


def direction_adam(lopt, g: jax.Array, buffers: tuple, count: jax.Array) -> tuple[jax.Array, tuple]:
    mu, nu = buffers
    b1, b2 = lopt.adam_b1, lopt.adam_b2
    mu = b1 * mu + (1.0 - b1) * g
    nu = b2 * nu + (1.0 - b2) * (g * g)
    t = count.astype(g.dtype)
    mu_hat = mu / (1.0 - jnp.power(jnp.asarray(b1, g.dtype), t))
    nu_hat = nu / (1.0 - jnp.power(jnp.asarray(b2, g.dtype), t))
    return mu_hat / (safe_sqrt(nu_hat) + lopt.adam_eps), (mu, nu)


def direction_lion(lopt, g: jax.Array, buffers: tuple, count: jax.Array) -> tuple[jax.Array, tuple]:
    del count
    (m,) = buffers
    direction = jnp.sign(lopt.lion_b1 * m + (1.0 - lopt.lion_b1) * g)
    m = lopt.lion_b2 * m + (1.0 - lopt.lion_b2) * g
    return direction, (m,)


class Direction(NamedTuple):
    num_buffers: int  # param-shaped accumulators it keeps
    step: Callable  # (lopt, g, buffers, count) -> (direction, new buffers); count = t + 1


DIRECTIONS: dict[str, Direction] = {
    "sgd": Direction(0, direction_sgd),
    "momentum": Direction(1, direction_momentum),
    "adam": Direction(2, direction_adam),
    "lion": Direction(1, direction_lion),
}

BASE_DIRECTIONS: tuple[str, ...] = tuple(DIRECTIONS)
"""Names of the available base directions (see the :mod:`.l3rs` docstring for their maths)."""


def layer_rms(x: jax.Array) -> jax.Array:
    """``‖x‖ / sqrt(size)`` in at least float32, zero-safe (its derivative at ``x = 0`` is 0)."""
    x = x.astype(F.accumulator_dtype(x.dtype))
    return safe_sqrt(jnp.mean(x * x))


def direction_rms(d: jax.Array) -> jax.Array:
    """The normaliser ``RMS(d) + ε`` of a base direction (:data:`NORM_EPS`), float32 scalar."""
    return (layer_rms(d) + NORM_EPS).astype(jnp.float32)


# --------------------------------------------------------------------------- status features


def log_floor(x: jax.Array) -> jax.Array:
    return jnp.log(jnp.maximum(x, _LOG_FLOOR))


def l3rs_status_features(
    step: jax.Array,
    num_steps: jax.Array,
    loss_ema: jax.Array,
    first_loss: jax.Array,
    grad_rms: jax.Array,
    weight_rms: jax.Array,
) -> jax.Array:
    """Training-status features, one row per layer.

    Args:
      step: pre-update step ``t`` (scalar).
      num_steps: horizon ``T`` (scalar, floored at 1).
      loss_ema: bias-corrected loss EMAs, one per timescale, shape ``[M]``.
      first_loss: the loss at the first update (scalar).
      grad_rms: bias-corrected EMAs of the per-layer gradient RMS, shape ``[L, M]``.
      weight_rms: bias-corrected EMAs of the per-layer weight RMS, shape ``[L, M]``.

    Returns:
      ``[L, 9 + 3M]`` float32 rows ``[tanh(10(t/T − s)) (9), log(|L̂_i|/|ℓ_0|) (M), log Ĝ_{l,i} (M),
      log Ŵ_{l,i} (M)]``.
    """
    num_layers = grad_rms.shape[0]
    time = F.fractional_tanh_embedding(step, num_steps)
    loss = log_floor(jnp.abs(loss_ema)) - log_floor(jnp.abs(first_loss))
    columns = [
        jnp.broadcast_to(time, (num_layers, time.shape[0])),
        jnp.broadcast_to(loss.astype(jnp.float32), (num_layers, loss.shape[0])),
        log_floor(grad_rms),
        log_floor(weight_rms),
    ]
    return jnp.concatenate([c.astype(jnp.float32) for c in columns], axis=1)


def loss_arg(params, extra_args: dict) -> jax.Array:
    if params is None:
        raise ValueError("l3rs uses the weight norms as features: call opt.update(grads, state, params, loss=loss).")
    if "loss" not in extra_args:
        raise TypeError(
            "l3rs reads the training loss as a feature, but update() got no loss extra arg "
            f"(got {sorted(extra_args)}). Call opt.update(grads, state, params, loss=loss) with the "
            "scalar loss at params."
        )
    loss = jnp.asarray(extra_args["loss"])
    if loss.shape != ():
        raise ValueError(
            f"l3rs: loss must be a scalar, got shape {loss.shape}. Pass the mean loss, e.g. loss=jnp.mean(l)."
        )
    return loss.astype(jnp.float32)


def layer_status(decays: Sequence[float], state, loss, grads, param_leaves, num_steps) -> tuple[tuple, jax.Array]:
    """``((count, first_loss, loss_ema, grad_rms_ema, weight_rms_ema), [L, S] status features)``.

    Every EMA runs at each decay in ``decays`` (the last axis, ``M``) and is bias-corrected by
    ``1 − β_i^{t+1}`` for the features (the state keeps the uncorrected sums).
    """
    beta = jnp.asarray(decays, jnp.float32)  # [M]
    count = state.iteration + 1
    correction = 1.0 - jnp.power(beta, count.astype(jnp.float32))  # [M]
    first_loss = jnp.where(state.iteration == 0, loss, state.first_loss)
    grad_rms = jnp.stack([layer_rms(g).astype(jnp.float32) for g in grads])[:, None]  # [L, 1]
    weight_rms = jnp.stack([layer_rms(p).astype(jnp.float32) for p in param_leaves])[:, None]
    loss_ema = beta * state.loss_ema + (1.0 - beta) * loss
    grad_rms_ema = beta * state.grad_rms_ema + (1.0 - beta) * grad_rms
    weight_rms_ema = beta * state.weight_rms_ema + (1.0 - beta) * weight_rms
    status = l3rs_status_features(
        state.iteration,
        num_steps,
        loss_ema / correction,
        first_loss,
        grad_rms_ema / correction,
        weight_rms_ema / correction,
    )
    return (count, first_loss, loss_ema, grad_rms_ema, weight_rms_ema), status


# --------------------------------------------------------------------------- the head


def mixing_and_rates(meta_params: dict, status: jax.Array, log_mixing0: jax.Array, num_mlp_layers: int):
    """The shared MLP on ``[e_l, status_l]``: mixing weights ``μ`` ``[L, K]`` and rates ``λ`` ``[L]``.

    The MLP's ``K + 1`` outputs per layer are ``K`` mixing logits ``z_l`` and one rate output ``o_l``:
    ``μ_l = softmax(z_l + log μ⁰)`` and ``λ_l = exp(log_rate) · exp(cap·tanh(o_l/cap))`` (``log_rate``
    has shape ``[1]``: checkpoints store no 0-d arrays).
    """
    mlp = meta_params["mlp"]
    x = jnp.concatenate([meta_params["embeddings"].astype(jnp.float32), status], axis=1)
    for i in range(num_mlp_layers):
        x = x @ mlp[f"w{i}"] + mlp[f"b{i}"]
        if i < num_mlp_layers - 1:
            x = jax.nn.relu(x)
    mixing = jax.nn.softmax(x[:, :-1] + log_mixing0, axis=-1)
    log_rate = meta_params["log_rate"][0] + RATE_SOFT_CAP * jnp.tanh(x[:, -1] / RATE_SOFT_CAP)
    return mixing, jnp.exp(log_rate)


# --------------------------------------------------------------------------- checks of L3RS's fields


def check_decay(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"L3RS.{field} must be a decay in [0, 1), got {value!r}.")
    return float(value)


def check_ema_decays(values) -> tuple[float, ...]:
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        raise TypeError(f"L3RS.ema_decays must be a sequence of decays, e.g. (0.9, 0.99, 0.999), got {values!r}.")
    out = tuple(check_decay("ema_decays[]", v) for v in values)
    if not out:
        raise ValueError("L3RS.ema_decays must hold at least one decay, e.g. (0.9, 0.99, 0.999).")
    return out


def check_mixing(values, names: tuple[str, ...]) -> tuple[float, ...]:
    """``initial_mixing``: one positive weight per base direction, summing to 1."""
    if isinstance(values, str) or not hasattr(values, "__len__"):
        raise TypeError(
            f"L3RS.initial_mixing must be a sequence of floats (one per base direction) or None, got {values!r}."
        )
    out = tuple(float(v) for v in values)
    if len(out) != len(names):
        raise ValueError(
            f"L3RS.initial_mixing needs one weight per base direction {names}, got {len(out)} values {values!r}. "
            f"Pass {len(names)} values in the order of base_directions, or None for the default."
        )
    if not all(math.isfinite(v) and v > 0 for v in out) or abs(sum(out) - 1.0) > 1e-6:
        raise ValueError(
            f"L3RS.initial_mixing must be positive weights summing to 1 (a softmax can only produce those), "
            f"got {values!r} (sum {sum(out)!r}). Divide them by their sum."
        )
    return out


def check_hidden_sizes(sizes) -> tuple[int, ...]:
    if isinstance(sizes, int | str) or not hasattr(sizes, "__iter__"):
        raise TypeError(f"L3RS.hidden_sizes must be a sequence of ints, e.g. (32, 32), got {sizes!r}.")
    return tuple(check_int("L3RS", "hidden_sizes[]", s, 1) for s in sizes)


def check_directions(names) -> tuple[str, ...]:
    if isinstance(names, str) or not hasattr(names, "__iter__"):
        raise TypeError(
            f"L3RS.base_directions must be a sequence of names, e.g. ('sgd', 'adam'), got {names!r}. "
            f"Allowed names: {BASE_DIRECTIONS}."
        )
    names = tuple(names)
    unknown = [n for n in names if n not in DIRECTIONS]
    if unknown or not names:
        raise ValueError(
            f"L3RS.base_directions: unknown or missing base directions {unknown or names!r}; "
            f"expected a non-empty tuple of names from {BASE_DIRECTIONS}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"L3RS.base_directions must not repeat a name, got {names}.")
    return names


class L3RSState(NamedTuple):
    """State of an ``l3rs`` transformation (``M`` = number of EMA decays, ``K`` = base directions).

    Attributes:
      iteration: int32 step counter ``t`` (0 before the first update).
      first_loss: float32 loss at the first update (0 before it).
      loss_ema: float32 ``[M]`` EMAs of the loss (not bias-corrected).
      grad_rms_ema: float32 ``[L, M]`` EMAs of the per-layer gradient RMS (not bias-corrected).
      weight_rms_ema: float32 ``[L, M]`` EMAs of the per-layer weight RMS (not bias-corrected).
      mixing: float32 ``[L, K]`` mixing weights ``μ`` of the last update (``μ⁰`` before the first).
      rates: float32 ``[L]`` rates ``λ`` of the last update (θ's ``exp(log_rate)`` before the
        first). Kept with ``mixing`` for logging the learned per-layer schedules.
      buffers: ``{direction name: tuple of params-shaped trees}`` — the accumulators of the base
        directions that have any (``sgd`` has none).
    """

    iteration: jax.Array
    first_loss: jax.Array
    loss_ema: jax.Array
    grad_rms_ema: jax.Array
    weight_rms_ema: jax.Array
    mixing: jax.Array
    rates: jax.Array
    buffers: dict
