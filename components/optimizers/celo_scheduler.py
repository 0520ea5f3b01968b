"""Celo's learned learning-rate scheduler, shared by ``celo`` and ``celo_adam``.

One shared row of global features (fractional-progress embedding and loss-buffer features, see
:mod:`.features`) goes through an optional mixing block and an LSTM; heads give the learning-rate
multiplier ``λ = LR_MULT_SCALE · exp(logit)`` and, for Celo's MLP bank, softmax controls. See
:mod:`.celo` for the maths and the reference.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from components.optimizers import features as F
from components.optimizers import lstm as L

__all__ = [
    "LR_MULT_SCALE",
    "apply_scheduler",
    "check_structure",
    "init_scheduler",
    "initial_lstm_state",
    "loss_from",
    "num_scheduler_features",
    "scheduler_features",
    "scheduler_step",
    "structure_of_init",
]

LR_MULT_SCALE = 0.1
"""``λ = LR_MULT_SCALE · exp(logit)``: the scheduler's output scale."""

# --------------------------------------------------------------------------- scheduler


def scheduler_features(iteration: jax.Array, num_steps: jax.Array, loss_features: jax.Array) -> jax.Array:
    """The scheduler's input row ``[tanh(10·(t/T − s_i)) (9), loss features (9)]``, shape ``[18]``.

    The reference builds it per tensor from a dict sorted by key (``fraction_left`` before
    ``loss_features``); every tensor's row is this one.
    """
    fraction = F.fractional_tanh_embedding(iteration, num_steps)
    return jnp.concatenate([fraction, jnp.asarray(loss_features, jnp.float32)])


@functools.cache
def num_scheduler_features() -> int:
    """Input width of the scheduler (18), counted by tracing :func:`scheduler_features`."""

    def row():
        feats = F.loss_buffer_features(F.init_loss_buffer(10))
        return scheduler_features(jnp.zeros([], jnp.int32), jnp.full([], 10, jnp.int32), feats)

    return int(jax.eval_shape(row).shape[0])


def init_scheduler(key: jax.Array, *, input_size: int, hidden_size: int, num_controls: int, mix_layers: bool) -> dict:
    """Initial weights of the scheduler network (``rnn_params``).

    Args:
      key: PRNG key.
      input_size: width of an input row (:func:`num_scheduler_features`).
      hidden_size: width of the mixing layers and of the LSTM.
      num_controls: width of the bank-controls head (``param_inits``); 0 leaves the head out.
      mix_layers: whether to include the cross-tensor mixing block.

    Returns:
      ``{"mix": {"mix_unused", "mix", "input"}, "lstm", "controls", "step_size"}``, each linear layer
      ``{"w": [fan_in, fan_out], "b": [fan_out]}`` with haiku's default init (``mix`` only with
      ``mix_layers``, ``controls`` only with ``num_controls > 0``).
    """
    k_mix, k_lstm, k_controls, k_step = jax.random.split(key, 4)
    params = {}
    lstm_input = input_size
    if mix_layers:
        params["mix"] = L.init_mix(k_mix, input_size, hidden_size)
        lstm_input = hidden_size
    params["lstm"] = L.init_lstm(k_lstm, lstm_input, hidden_size)
    if num_controls:
        params["controls"] = L.linear_init(k_controls, hidden_size, num_controls)
    params["step_size"] = L.linear_init(k_step, hidden_size, 1)
    return params


def apply_scheduler(
    rnn_params: dict, inputs: jax.Array, state: L.LSTMState
) -> tuple[jax.Array, jax.Array | None, L.LSTMState]:
    """One scheduler step on a batch of rows.

    Args:
      rnn_params: weights from :func:`init_scheduler` (the mixing block is applied iff ``"mix"`` is
        present, the controls head iff ``"controls"`` is).
      inputs: ``[rows, input_size]``; the reference uses one (identical) row per parameter tensor,
        the optimizers here a single row.
      state: LSTM state, each ``[rows, hidden]``.

    Returns:
      ``(λ [rows], controls [rows, param_inits] or None, next state)`` with
      ``λ = 0.1·exp(h·w_λ + b_λ)`` and ``controls = softmax(h·W_c + b_c)``.
    """
    x = inputs
    if "mix" in rnn_params:
        x = L.mix_tensors(rnn_params["mix"], x)
    hidden, state = L.lstm_step(rnn_params["lstm"], x, state)
    head = rnn_params["step_size"]
    lr_mult = LR_MULT_SCALE * jnp.exp((hidden @ head["w"] + head["b"])[:, 0])
    controls = None
    if "controls" in rnn_params:
        ctl = rnn_params["controls"]
        controls = jax.nn.softmax(hidden @ ctl["w"] + ctl["b"], axis=-1)
    return lr_mult, controls, state


def initial_lstm_state(meta_params: dict) -> L.LSTMState:
    init = meta_params["lstm_init_state"]
    return L.LSTMState(hidden=init["hidden"], cell=init["cell"])


def scheduler_step(rnn_params, iteration, num_steps, loss_buffer, lstm_state):
    """``(λ, controls [P] or None, state)`` from the single shared row."""
    row = scheduler_features(iteration, num_steps, F.loss_buffer_features(loss_buffer))[None]
    lr_mult, controls, lstm_state = apply_scheduler(rnn_params, row, lstm_state)
    return lr_mult[0], None if controls is None else controls[0], lstm_state


# --------------------------------------------------------------------------- shared helpers


def loss_from(extra_args: dict, name: str) -> jax.Array:
    loss = extra_args.get("loss")
    if loss is None:
        raise TypeError(
            f"{name} reads the current loss (loss-buffer features of its scheduler): call "
            "opt.update(grads, state, params, loss=loss) with the scalar training loss."
        )
    if jnp.ndim(loss) != 0:
        raise TypeError(f"{name}: loss must be a scalar, got shape {jnp.shape(loss)}; pass the mean training loss.")
    return jnp.asarray(loss, jnp.float32)


def _leaf_paths(tree: Any) -> set[str]:
    """``"rnn_params/lstm/w"``-style paths of the leaves (the checkpoint's key format)."""

    def name(entry) -> str:
        return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))

    return {"/".join(name(e) for e in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_structure(name: str, meta_params: Any, expected: Any) -> None:
    if isinstance(meta_params, dict) and jax.tree.structure(meta_params) == expected:
        return
    want = _leaf_paths(jax.tree.unflatten(expected, [0] * expected.num_leaves))
    got = _leaf_paths(meta_params)
    raise ValueError(
        f"{name}.make: meta_params do not match this architecture (missing leaves: "
        f"{sorted(want - got)[:6]}, unexpected leaves: {sorted(got - want)[:6]}). Build them with "
        "lopt.init_meta_params(key) or load a checkpoint of the same config."
    )


def structure_of_init(lopt) -> Any:
    return jax.tree.structure(jax.eval_shape(lopt.init_meta_params, jax.random.key(0)))
