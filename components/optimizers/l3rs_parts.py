"""The parts of :mod:`.l3rs`: its base directions, its per-layer status features and its coefficient MLP.

See :mod:`.l3rs` for the maths; everything here is a pure function of arrays (the directions read
their hyperparameters from the :class:`~.l3rs.L3RS` object they are given).
"""

import math
from collections.abc import Callable
from numbers import Real
from typing import NamedTuple

import jax
import jax.numpy as jnp

from components.optimizers import features as F
from components.optimizers.per_parameter import check_int

__all__ = [
    "BASE_DIRECTIONS",
    "DEFAULT_LEARNING_RATES",
    "DIRECTIONS",
    "FRACTION_SHIFTS",
    "Direction",
    "check_decay",
    "check_directions",
    "check_hidden_sizes",
    "float_tuple",
    "layer_coefficients",
    "fractional_tanh_embedding",
    "l3rs_status_features",
    "layer_rms",
    "layer_status",
    "loss_arg",
    "safe_sqrt",
]

FRACTION_SHIFTS: tuple[float, ...] = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
"""Shifts ``s`` of the progress features ``tanh(10·(t/T − s))`` (VeLO / Celo)."""

_LOG_FLOOR = 1e-12  # floor of the norms and losses inside the log features
_EXP_SOFT_CAP = 10.0  # exp transform: c = c0 · exp(cap · tanh(o / cap))


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
"""Names of the available base directions (see the module docstring for their maths)."""

DEFAULT_LEARNING_RATES: dict[str, float] = {"sgd": 1e-2, "momentum": 1e-2, "adam": 1e-3, "lion": 1e-4}
"""Initial base learning rate ``η_k`` of each direction (module docstring: why these)."""


# --------------------------------------------------------------------------- features


def fractional_tanh_embedding(fraction: jax.Array) -> jax.Array:
    """Progress features ``tanh(10·(t/T − s))`` for ``s`` in :data:`FRACTION_SHIFTS`, shape ``[9]``."""
    fraction = jnp.asarray(fraction, jnp.float32)
    return jnp.tanh(10.0 * (fraction - jnp.asarray(FRACTION_SHIFTS, jnp.float32)))


def log_floor(x: jax.Array) -> jax.Array:
    return jnp.log(jnp.maximum(x, _LOG_FLOOR))


def l3rs_status_features(
    fraction: jax.Array, loss_ema: jax.Array, first_loss: jax.Array, grad_rms: jax.Array, weight_rms: jax.Array
) -> jax.Array:
    """Training-status features, one row per layer.

    Args:
      fraction: progress ``t/T`` (scalar).
      loss_ema: bias-corrected EMA of the loss (scalar).
      first_loss: the loss at the first update (scalar).
      grad_rms: bias-corrected EMAs of the per-layer gradient RMS, shape ``[L]``.
      weight_rms: bias-corrected EMAs of the per-layer weight RMS, shape ``[L]``.

    Returns:
      ``[L, S]`` float32 rows ``[tanh(10(t/T − s)) (9), log(|L̂|/|ℓ_0|), log Ĝ_l, log Ŵ_l]``.
    """
    num_layers = grad_rms.shape[0]
    time = jnp.broadcast_to(fractional_tanh_embedding(fraction), (num_layers, len(FRACTION_SHIFTS)))
    loss = log_floor(jnp.abs(loss_ema)) - log_floor(jnp.abs(first_loss))
    columns = [
        time,
        jnp.broadcast_to(loss.astype(jnp.float32), (num_layers, 1)),
        log_floor(grad_rms)[:, None],
        log_floor(weight_rms)[:, None],
    ]
    return jnp.concatenate([c.astype(jnp.float32) for c in columns], axis=1)


def layer_rms(x: jax.Array) -> jax.Array:
    x = x.astype(F.accumulator_dtype(x.dtype))
    return safe_sqrt(jnp.mean(x * x)).astype(jnp.float32)


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


def layer_status(beta: float, state, loss, grads, param_leaves, horizon) -> tuple[tuple, jax.Array]:
    """``((count, first_loss, loss_ema, grad_rms_ema, weight_rms_ema), [L, S] status features)``."""
    count = state.iteration + 1
    correction = 1.0 - jnp.power(jnp.float32(beta), count.astype(jnp.float32))
    first_loss = jnp.where(state.iteration == 0, loss, state.first_loss)
    loss_ema = beta * state.loss_ema + (1.0 - beta) * loss
    grad_rms_ema = beta * state.grad_rms_ema + (1.0 - beta) * jnp.stack([layer_rms(g) for g in grads])
    weight_rms_ema = beta * state.weight_rms_ema + (1.0 - beta) * jnp.stack([layer_rms(p) for p in param_leaves])
    status = l3rs_status_features(
        state.iteration.astype(jnp.float32) / horizon,
        loss_ema / correction,
        first_loss,
        grad_rms_ema / correction,
        weight_rms_ema / correction,
    )
    return (count, first_loss, loss_ema, grad_rms_ema, weight_rms_ema), status


def layer_coefficients(meta_params: dict, status: jax.Array, c0: jax.Array, transform: str, num_mlp_layers: int):
    """The shared MLP on ``[e_l, status_l]``: the ``[L, K]`` coefficients."""
    mlp = meta_params["mlp"]
    x = jnp.concatenate([meta_params["embeddings"].astype(jnp.float32), status], axis=1)
    for i in range(num_mlp_layers):
        x = x @ mlp[f"w{i}"] + mlp[f"b{i}"]
        if i < num_mlp_layers - 1:
            x = jax.nn.relu(x)
    if transform == "exp":
        return c0 * jnp.exp(_EXP_SOFT_CAP * jnp.tanh(x / _EXP_SOFT_CAP))
    return c0 + x


# --------------------------------------------------------------------------- checks of L3RS's fields


def check_decay(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"L3RS.{field} must be a decay in [0, 1), got {value!r}.")
    return float(value)


def float_tuple(field: str, values, length: int, names: tuple[str, ...]) -> tuple[float, ...]:
    if isinstance(values, str) or not hasattr(values, "__len__"):
        raise TypeError(f"L3RS.{field} must be a sequence of floats (one per base direction) or None, got {values!r}.")
    out = tuple(float(v) for v in values)
    if len(out) != length:
        raise ValueError(
            f"L3RS.{field} needs one value per base direction {names}, got {len(out)} values {values!r}. "
            f"Pass {length} values in the order of base_directions, or None for the defaults."
        )
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"L3RS.{field} must be finite, got {values!r}.")
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
