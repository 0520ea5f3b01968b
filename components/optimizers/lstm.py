"""A plain LSTM cell and the cross-tensor mixing layer of VeLO / Celo's per-tensor networks.

Both follow haiku's conventions so released weights map one to one (research/algorithms.md §1.1,
§2.1):

* ``lstm_step``: haiku's ``hk.LSTM``. With ``z = [x, h] @ W + b`` split into ``(i, g, f, o)``:
  ``c' = σ(f + 1)·c + σ(i)·tanh(g)`` (forget-gate bias +1 added in the cell, not stored in ``b``)
  and ``h' = σ(o)·tanh(c')``. ``W`` is ``[input + hidden, 4·hidden]``.
* ``mix_tensors``: ``x ← x @ W_in + b_in + max_over_rows(relu(x @ W_mix + b_mix))`` — every row
  (one row per parameter tensor) sees a max-pooled summary of all rows. The references create a
  first mixing ``Linear`` whose output is overwritten; its weights exist in their checkpoints and
  are kept in ours (``mix_unused``) but never used.
* ``linear_init``: haiku's default ``Linear`` initialisation, ``TruncNormal(−2, 2) / sqrt(fan_in)``
  (not rescaled for the truncation) and zero biases.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LSTMState", "init_lstm", "init_mix", "linear_init", "lstm_step", "mix_tensors"]


class LSTMState(NamedTuple):
    """Hidden and cell state, each ``[batch, hidden]``."""

    hidden: jax.Array
    cell: jax.Array


def linear_init(key: jax.Array, fan_in: int, fan_out: int, *, stddev: float | None = None) -> dict:
    """``{"w": [fan_in, fan_out], "b": [fan_out]}`` with haiku's default ``Linear`` initialisation.

    ``stddev`` defaults to ``1/sqrt(fan_in)``; ``stddev=0`` gives zero weights.
    """
    std = 1.0 / np.sqrt(fan_in) if stddev is None else stddev
    w = jax.random.truncated_normal(key, -2.0, 2.0, (fan_in, fan_out), jnp.float32) * np.float32(std)
    return {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}


def init_lstm(key: jax.Array, input_size: int, hidden_size: int) -> dict:
    """LSTM weights ``{"w": [input + hidden, 4·hidden], "b": [4·hidden]}``."""
    return linear_init(key, input_size + hidden_size, 4 * hidden_size)


def lstm_step(weights: dict, x: jax.Array, state: LSTMState) -> tuple[jax.Array, LSTMState]:
    """One LSTM step on a batch ``x`` of shape ``[batch, input]``; returns ``(h', state')``."""
    z = jnp.concatenate([x, state.hidden], axis=-1) @ weights["w"] + weights["b"]
    i, g, f, o = jnp.split(z, 4, axis=-1)
    cell = jax.nn.sigmoid(f + 1.0) * state.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    return hidden, LSTMState(hidden, cell)


def init_mix(key: jax.Array, input_size: int, hidden_size: int) -> dict:
    """Weights of :func:`mix_tensors`: ``mix_unused``, ``mix`` and ``input`` linear layers."""
    k0, k1, k2 = jax.random.split(key, 3)
    return {
        "mix_unused": linear_init(k0, input_size, hidden_size),
        "mix": linear_init(k1, input_size, hidden_size),
        "input": linear_init(k2, input_size, hidden_size),
    }


def mix_tensors(weights: dict, x: jax.Array) -> jax.Array:
    """``x @ W_in + b_in + max_rows(relu(x @ W_mix + b_mix))`` for ``x`` of shape ``[rows, input]``."""
    mixed = jax.nn.relu(x @ weights["mix"]["w"] + weights["mix"]["b"])
    pooled = jnp.max(mixed, axis=0, keepdims=True)
    return x @ weights["input"]["w"] + weights["input"]["b"] + pooled
