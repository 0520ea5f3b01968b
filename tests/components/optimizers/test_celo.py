"""Celo and Celo-Adam: layout, updates against a NumPy re-implementation, vmap, meta-gradients, errors.

Compiling is the slow part on CPU, so every check reuses one of a few jitted functions.
"""

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import features as F
from components.optimizers import velo_mlp as V
from components.optimizers.celo import Celo
from components.optimizers.celo_adam import CeloAdam
from components.optimizers.celo_scheduler import (
    apply_scheduler,
    init_scheduler,
    num_scheduler_features,
    scheduler_features,
)
from components.optimizers.lstm import LSTMState

SHIFTS = np.array([0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1])
LOSSES = np.array([2.0, 1.0, 1.5], np.float32)  # loss features ≈ −0.2 at step 3 (0 before)
NUM_STEPS = 37

# ----------------------------------------------------------------------------- NumPy reference
# Written from research/algorithms.md §0.2 and §1.1 in the reference's layout: decay index as a
# trailing axis, row/column statistics tiled to the full tensor, the 30 channels stacked and the MLP
# a stacked matmul, one scheduler row *per tensor* (as the reference batches the LSTM).


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_tree(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


class NpLossBuffer:
    def __init__(self, num_steps):
        self.decays = np.exp(-1.0 / np.logspace(1, np.log10(num_steps), 10))
        self.means = np.zeros(10)
        self.running_min = np.full(10, 999999999999.0)
        self.it = 0

    def update(self, loss):
        corr = 1.0 - self.decays ** (self.it + 1)
        approx_max = loss if self.it == 0 else np.max(self.means / corr)
        loss = min(2.0 * abs(approx_max), loss)
        self.means = self.decays * self.means + (1.0 - self.decays) * loss
        self.running_min = np.minimum(self.running_min, self.means / corr)
        self.it += 1

    def features(self):
        if self.it <= 2:
            return np.zeros(9)
        cor = self.means / (1.0 - self.decays**self.it)
        rmin = self.running_min[:-1]
        return np.clip((cor[:-1] - rmin) / np.maximum(1e-8, cor[1:] - rmin) - 1.0, -1.0, 1.0)


def np_scheduler(rnn, rows, h, c):
    """Mixing block, haiku LSTM (forget bias +1) and heads on ``rows`` [n, 18]."""
    x = rows
    if "mix" in rnn:
        mix = rnn["mix"]
        pooled = np.max(np.maximum(x @ mix["mix"]["w"] + mix["mix"]["b"], 0.0), axis=0, keepdims=True)
        x = x @ mix["input"]["w"] + mix["input"]["b"] + pooled
    z = np.concatenate([x, h], axis=-1) @ rnn["lstm"]["w"] + rnn["lstm"]["b"]
    i, g, f, o = np.split(z, 4, axis=-1)
    c = sigmoid(f + 1.0) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    lam = 0.1 * np.exp(h @ rnn["step_size"]["w"] + rnn["step_size"]["b"])[:, 0]
    return lam, h, c


class NpScheduler:
    def __init__(self, theta, num_rows, num_steps):
        self.rnn = theta["rnn_params"]
        self.h = np.tile(theta["lstm_init_state"]["hidden"], (num_rows, 1))
        self.c = np.tile(theta["lstm_init_state"]["cell"], (num_rows, 1))
        self.buffer = NpLossBuffer(num_steps)
        self.num_rows, self.num_steps, self.t = num_rows, num_steps, 0

    def step(self, loss):
        self.buffer.update(float(loss))
        row = np.concatenate([np.tanh(10.0 * (self.t / self.num_steps - SHIFTS)), self.buffer.features()])
        lam, self.h, self.c = np_scheduler(self.rnn, np.tile(row, (self.num_rows, 1)), self.h, self.c)
        self.t += 1
        return lam


def np_factored_dims(shape):
    if len(shape) < 2:
        return None
    by_size = sorted(range(len(shape)), key=lambda axis: shape[axis])
    return by_size[-2], by_size[-1]


class NpCeloTensor:
    """Accumulators and the 30 features of one tensor (scalars reshaped to [1], as the reference)."""

    def __init__(self, shape):
        self.shape = shape if shape else (1,)
        self.bm, self.br, self.bf = np.array([0.9, 0.99, 0.999]), np.array([0.999]), np.array([0.9, 0.99, 0.999])
        self.m = np.zeros(self.shape + (3,))
        self.v = np.zeros(self.shape + (1,))
        self.dims = np_factored_dims(self.shape)
        if self.dims is None:
            self.v_full = np.zeros(self.shape + (3,))
        else:
            d1, d0 = self.dims
            self.v_row = np.zeros(tuple(np.delete(self.shape, d0)) + (3,))
            self.v_col = np.zeros(tuple(np.delete(self.shape, d1)) + (3,))

    def features(self, p, g):
        p, g = p.reshape(self.shape)[..., None], g.reshape(self.shape)[..., None]
        self.m = self.bm * self.m + (1 - self.bm) * g
        self.v = self.br * self.v + (1 - self.br) * g**2
        g_sq = g**2 + 1e-30
        rsqrt_v = 1.0 / np.sqrt(self.v + 1e-6)
        full = self.shape + (3,)
        feats = [g, np.clip(g, -0.1, 0.1), p, self.m, self.v, self.m * rsqrt_v, rsqrt_v]
        if self.dims is None:
            self.v_full = self.bf * self.v_full + (1 - self.bf) * g_sq
            fac_g = g / np.sqrt(np.maximum(self.v_full + 1e-9, 1e-9))
            v = self.v_full
            feats += [fac_g, g * rsqrt_v, v, v, 1 / np.sqrt(v + 1e-8), 1 / np.sqrt(v + 1e-8), self.m * v**-0.5]
        else:
            d1, d0 = self.dims
            self.v_row = self.bf * self.v_row + (1 - self.bf) * g_sq.mean(axis=d0)
            self.v_col = self.bf * self.v_col + (1 - self.bf) * g_sq.mean(axis=d1)
            d1_in_row = d1 - 1 if d1 > d0 else d1
            row_mean = self.v_row.mean(axis=d1_in_row, keepdims=True)
            row_f = np.expand_dims(1 / np.sqrt(np.maximum(self.v_row / (row_mean + 1e-9), 1e-9)), d0)
            col_f = np.expand_dims(1 / np.sqrt(np.maximum(self.v_col, 1e-9)), d1)
            row = np.broadcast_to(np.expand_dims(self.v_row, d0), full)
            col = np.broadcast_to(np.expand_dims(self.v_col, d1), full)
            feats += [g * row_f * col_f, g * rsqrt_v, row, col, 1 / np.sqrt(row + 1e-8), 1 / np.sqrt(col + 1e-8)]
            feats += [self.m * row_f * col_f]
        x = np.concatenate([np.broadcast_to(f, self.shape + (f.shape[-1],)) for f in feats], axis=-1)
        axes = tuple(range(len(self.shape)))
        return x / np.sqrt(1e-5 + np.mean(x**2, axis=axes, keepdims=True))


def np_celo_run(theta, params, grads, losses, num_steps, *, phase):
    """Updates of every step (list of dicts) of Celo with ``param_inits = 1``."""
    theta = np_tree(theta)
    ff = {k: v[0] for k, v in theta["ff_mod_stack"].items()}
    w0 = np.concatenate([ff[f"w0__{i}"] for i in range(14)], axis=0)
    names = sorted(params)  # dict leaves flatten in sorted-key order: one scheduler row each
    sched = NpScheduler(theta, len(names), num_steps)
    tensors = {k: NpCeloTensor(np.shape(params[k])) for k in names}
    p = {k: np.asarray(params[k], np.float64) for k in names}
    out = []
    for t, loss in enumerate(losses):
        lam = sched.step(loss)
        updates = {}
        for row, k in enumerate(names):
            g = np.clip(np.asarray(grads[k][t], np.float64), -1000, 1000)
            x = tensors[k].features(p[k], g)
            h = np.maximum(x @ w0 + ff["b0"], 0)
            h = np.maximum(h @ ff["w1"] + ff["b1"], 0)
            o = h @ ff["w2"] + ff["b2"]
            step = o[..., 0] * np.exp(0.001 * o[..., 1]) * 0.001 * np.sqrt(np.mean(p[k] ** 2) + 1e-9)
            if phase == 2:
                step = lam[row] * step
            updates[k] = -step.reshape(np.shape(p[k]))
            p[k] = p[k] + updates[k]
        out.append(updates)
    return out


# ----------------------------------------------------------------------------- fixtures


def _params():
    rng = np.random.default_rng(0)
    shapes = {"scalar": (), "bias": (5,), "kernel": (4, 3), "conv": (3, 3, 2, 4)}
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    params["half"] = jnp.asarray(rng.normal(size=(3,)), jnp.bfloat16)
    return params


def _grads(params, num):
    rng = np.random.default_rng(1)
    return {k: jnp.asarray(rng.normal(size=(num,) + p.shape), p.dtype) for k, p in params.items()}


def _perturbed(theta, seed, scale):
    """θ plus Gaussian noise, drawn with NumPy (eager JAX ops would each compile on first use)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + scale * rng.normal(size=x.shape), jnp.float32), theta)


@functools.cache
def _theta(cls, seed, scale=0.0):
    """Default θ of ``cls`` (jitted init: one compile instead of dozens of eager ones), optionally perturbed.

    Every configuration used here shares the pytree of the default one (phase 1 and phase 2 alike).
    """
    theta = jax.jit(cls().init_meta_params)(jax.random.key(seed))
    return _perturbed(theta, seed + 100, scale) if scale else theta


def _unroll(lopt, theta, params, grads, losses, num_steps):
    """Applies the optimizer with the given gradient/loss sequence; returns per-step updates and states."""
    opt = lopt.make(theta, num_steps=num_steps)

    def body(carry, inputs):
        params, state = carry
        g, loss = inputs
        updates, state = opt.update(g, state, params, loss=loss)
        return (optax.apply_updates(params, updates), state), (updates, state)

    state0 = opt.init(params)
    _, (updates, states) = jax.lax.scan(body, (params, state0), (grads, losses))
    return updates, states, state0


def _compile(fn, *args):
    """Jit-compiles ``fn`` for ``args`` with XLA's cheap CPU code generation (these tests are compile-bound)."""
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    return jax.jit(fn).lower(*args).compile(compiler_options=options)


@functools.cache
def _celo_batched_run():
    """Celo phase 2, vmapped over two θ, traced num_steps, 0/1/2/4-D and bfloat16 leaves, 3 steps."""
    lopt = Celo()
    theta0, theta1 = _theta(Celo, 0), _theta(Celo, 1, 0.3)
    thetas = jax.tree.map(lambda a, b: jnp.stack([a, b]), theta0, theta1)
    params = _params()
    grads = _grads(params, len(LOSSES))
    run = jax.vmap(functools.partial(_unroll, lopt), in_axes=(0, None, None, None, None))
    args = (thetas, params, grads, jnp.asarray(LOSSES), jnp.int32(NUM_STEPS))
    updates, states, state0 = _compile(run, *args)(*args)
    return (theta0, theta1), params, grads, updates, states, state0


def _shapes_and_dtypes(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


# ----------------------------------------------------------------------------- layout and sizes


def test_feature_and_scheduler_counts_come_from_the_code():
    lopt = Celo()
    assert lopt.num_features == 30
    assert lopt.feature_groups == (1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)
    assert num_scheduler_features() == 18
    for shape in [(), (5,), (4, 3), (3, 3, 2, 4)]:  # same channel count for every rank
        param = jax.ShapeDtypeStruct(shape, jnp.float32)

        def channels(p):
            g = jnp.zeros_like(p)
            fac = F.init_factored(p, 3)
            return V.hyper_features(p, g, F.init_momentum(p, 3), F.init_rms(p, 1), (g,) * 3, fac)

        assert len(jax.eval_shape(channels, param)) == lopt.num_features


def test_meta_params_layout_matches_the_reference_shapes():
    lopt = Celo()

    def layout(lopt):
        return jax.eval_shape(lopt.init_meta_params, jax.random.key(0))

    theta = layout(lopt)
    assert set(theta) == {"lstm_init_state", "rnn_params", "ff_mod_stack"}
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(theta))
    ff = theta["ff_mod_stack"]
    for i, width in enumerate(lopt.feature_groups):
        assert ff[f"w0__{i}"].shape == (1, width, 4)  # bank axis of size param_inits first
    assert ff["w1"].shape == (1, 4, 4) and ff["w2"].shape == (1, 4, 3) and ff["b2"].shape == (1, 3)
    assert sum(x.size for x in jax.tree.leaves(ff)) == 159  # 30·4+4 + 4·4+4 + 4·3+3
    rnn = theta["rnn_params"]
    assert set(rnn) == {"mix", "lstm", "controls", "step_size"}
    assert set(rnn["mix"]) == {"mix_unused", "mix", "input"} and rnn["mix"]["mix"]["w"].shape == (18, 64)
    assert rnn["lstm"]["w"].shape == (64 + 64, 4 * 64)
    assert rnn["controls"]["w"].shape == (64, 1) and rnn["step_size"]["w"].shape == (64, 1)
    assert theta["lstm_init_state"]["hidden"].shape == theta["lstm_init_state"]["cell"].shape == (1, 64)
    np.testing.assert_array_equal(_theta(Celo, 0)["lstm_init_state"]["cell"], np.zeros((1, 64)))
    # phase 1 and phase 2 share the pytree; a bank of 3 MLPs only widens the bank axis
    assert layout(Celo(train_phase=1)) == theta
    assert layout(Celo(param_inits=3))["ff_mod_stack"]["w1"].shape == (3, 4, 4)
    adam_theta = layout(CeloAdam())
    assert set(adam_theta) == {"lstm_init_state", "rnn_params"}
    assert set(adam_theta["rnn_params"]) == {"mix", "lstm", "step_size"}


def test_config_round_trip_phases_and_frozen_keys():
    lopt = Celo(train_phase=1, initial_rms_decays=[0.99])
    assert Celo(**lopt.config()) == lopt
    assert lopt.config()["initial_rms_decays"] == [0.99]
    assert lopt.frozen_keys() == ("lstm_init_state", "rnn_params")
    assert lopt.with_phase(2) == Celo(train_phase=2, initial_rms_decays=(0.99,))
    assert lopt.with_phase(2).frozen_keys() == ("ff_mod_stack",)
    assert Celo().train_phase == 2 and Celo.name == "celo" and CeloAdam.name == "celo_adam"
    adam = CeloAdam(b1=0.8)
    assert CeloAdam(**adam.config()) == adam and adam.frozen_keys() == ()


# ----------------------------------------------------------------------------- updates


def test_celo_matches_numpy_reference_under_vmap_with_traced_num_steps():
    thetas, params, grads, updates, _, _ = _celo_batched_run()
    for b, theta in enumerate(thetas):
        expected = np_celo_run(theta, params, grads, LOSSES, NUM_STEPS, phase=2)
        for t, exp in enumerate(expected):
            for k, p in params.items():
                got = np.asarray(updates[k][b, t], np.float64)
                # float32 (bfloat16 for "half") against float64; atol for entries where d ≈ 0
                rtol = 1e-2 if p.dtype == jnp.bfloat16 else 2e-4
                atol = rtol * np.max(np.abs(exp[k]))
                np.testing.assert_allclose(got, exp[k], rtol=rtol, atol=atol, err_msg=f"theta {b} step {t} {k}")


def test_updates_shapes_dtypes_finite_and_state_dtypes_stable():
    _, params, _, updates, states, state0 = _celo_batched_run()
    for k, p in params.items():
        assert updates[k].shape == (2, len(LOSSES)) + p.shape and updates[k].dtype == p.dtype
        assert np.all(np.isfinite(np.asarray(updates[k], np.float32)))
        assert np.any(np.asarray(updates[k], np.float32) != 0)
    per_step = jax.tree.map(lambda x: (x.shape[2:], x.dtype), states)  # [batch, step, ...]
    assert per_step == jax.tree.map(lambda x: (x.shape[1:], x.dtype), state0)
    assert states.context.lstm.hidden.shape == (2, len(LOSSES), 1, 64)  # one shared scheduler row
    np.testing.assert_array_equal(states.iteration[0], np.arange(1, len(LOSSES) + 1))
    np.testing.assert_array_equal(states.context.num_steps, NUM_STEPS)


def test_phase_one_applies_no_scheduler():
    lopt = Celo(train_phase=1)
    theta = _theta(Celo, 3, 0.2)  # phase-2 layout, used unchanged in phase 1
    params = {"kernel": _params()["kernel"]}
    grads = _grads(params, 2)
    args = (theta, params, grads, LOSSES[:2], NUM_STEPS)
    updates, states, _ = _compile(functools.partial(_unroll, lopt), *args)(*args)
    expected = np_celo_run(theta, params, grads, LOSSES[:2], NUM_STEPS, phase=1)
    for t in range(2):
        exp = expected[t]["kernel"]
        np.testing.assert_allclose(np.asarray(updates["kernel"][t]), exp, rtol=2e-4, atol=2e-4 * np.max(np.abs(exp)))
    # the scheduler is not evaluated: its LSTM state stays at θ's initial state
    np.testing.assert_array_equal(states.context.lstm.hidden[-1], theta["lstm_init_state"]["hidden"])


def test_one_scheduler_row_equals_one_row_per_tensor():
    shapes = jax.eval_shape(
        functools.partial(init_scheduler, input_size=18, hidden_size=64, num_controls=3, mix_layers=True),
        jax.random.key(5),
    )
    rnn = _perturbed(jax.tree.map(lambda x: np.zeros(x.shape), shapes), 6, 0.2)
    init = _perturbed({"hidden": np.zeros((1, 64)), "cell": np.zeros((1, 64))}, 7, 0.5)
    num_tensors = 5

    def both(rnn, init, losses):
        def body(carry, inputs):
            buffer, one, many = carry
            t, loss = inputs
            buffer = F.update_loss_buffer(buffer, loss)
            row = scheduler_features(t, NUM_STEPS, F.loss_buffer_features(buffer))[None]
            lam1, ctl1, one = apply_scheduler(rnn, row, one)
            lam_n, ctl_n, many = apply_scheduler(rnn, jnp.tile(row, (num_tensors, 1)), many)
            return (buffer, one, many), (lam1, ctl1, lam_n, ctl_n)

        one = LSTMState(init["hidden"], init["cell"])
        many = jax.tree.map(lambda x: jnp.tile(x, (num_tensors, 1)), one)
        carry = (F.init_loss_buffer(NUM_STEPS), one, many)
        return jax.lax.scan(body, carry, (jnp.arange(len(losses)), losses))[1]

    args = (rnn, init, jnp.asarray(LOSSES))
    lam1, ctl1, lam_n, ctl_n = _compile(both, *args)(*args)
    np.testing.assert_allclose(lam_n, jnp.broadcast_to(lam1, lam_n.shape), rtol=1e-6)
    np.testing.assert_allclose(ctl_n, jnp.broadcast_to(ctl1, ctl_n.shape), rtol=1e-6)
    np.testing.assert_allclose(ctl1.sum(-1), 1.0, rtol=1e-6)
    assert len(np.unique(np.asarray(lam1))) == len(LOSSES)  # λ moves with the step and the loss


def test_scheduler_value_at_init_by_hand():
    # step 0: progress features tanh(10·(0 − s)), loss features 0 (≤ 2 losses seen), zero state
    theta = _theta(Celo, 0)
    rnn = np_tree(theta)["rnn_params"]
    x = np.concatenate([np.tanh(-10.0 * SHIFTS), np.zeros(9)])
    mixed = np.maximum(x @ rnn["mix"]["mix"]["w"] + rnn["mix"]["mix"]["b"], 0.0)
    x = x @ rnn["mix"]["input"]["w"] + rnn["mix"]["input"]["b"] + mixed
    z = np.concatenate([x, np.zeros(64)]) @ rnn["lstm"]["w"] + rnn["lstm"]["b"]
    i, g, _, o = np.split(z, 4)
    h = sigmoid(o) * np.tanh(sigmoid(i) * np.tanh(g))  # c₀ = 0, so the forget gate drops out
    lam_by_hand = 0.1 * np.exp(h @ rnn["step_size"]["w"][:, 0] + rnn["step_size"]["b"][0])

    @jax.jit
    def first_step(theta):
        buffer = F.update_loss_buffer(F.init_loss_buffer(100), 2.0)
        row = scheduler_features(0, 100, F.loss_buffer_features(buffer))[None]
        init = LSTMState(theta["lstm_init_state"]["hidden"], theta["lstm_init_state"]["cell"])
        return apply_scheduler(theta["rnn_params"], row, init)

    lam, controls, _ = first_step(theta)
    np.testing.assert_allclose(float(lam[0]), lam_by_hand, rtol=1e-5)
    assert 0.05 < lam_by_hand < 0.2  # of order 0.1 at init
    np.testing.assert_allclose(controls, [[1.0]])  # softmax over a bank of one


def test_a_bank_of_mlps_is_interpolated_by_the_controls_in_both_phases():
    for phase in (1, 2):
        lopt = Celo(param_inits=3, train_phase=phase)
        assert lopt.uses_scheduler  # the controls pick the MLP even in phase 1 (as the reference)
        params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}

        def one_update(theta, params, lopt=lopt):
            opt = lopt.make(theta, num_steps=10)
            return opt.update(params, opt.init(params), params, loss=1.0)

        theta = jax.eval_shape(lopt.init_meta_params, jax.random.key(0))
        updates, _ = jax.eval_shape(one_update, theta, params)  # traces without compiling
        assert _shapes_and_dtypes(updates) == _shapes_and_dtypes(params)
    assert not Celo(train_phase=1).uses_scheduler and Celo(train_phase=2).uses_scheduler


# ----------------------------------------------------------------------------- meta-gradients


def _regression_meta_grad(lopt, theta):
    """jax.grad of the mean training loss of a 20-step unroll on a small MLP regression problem.

    The MLP 2 → 8 → 1 (tanh) keeps both weight matrices in one [3, 8] leaf (rows 0–1: first layer,
    row 2: second layer): the backward pass through the optimizer is compiled once per leaf, and
    compiling is what this test spends its time on.
    """
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)
    y = jnp.sin(2.0 * x[:, :1]) + x[:, 1:]
    params = {"w": jnp.asarray(rng.normal(size=(3, 8)) / np.sqrt([[2.0], [2.0], [8.0]]), jnp.float32)}

    def loss_fn(p):
        hidden = jnp.tanh(x @ p["w"][:2])
        return jnp.mean(jnp.square(hidden @ p["w"][2][:, None] - y))

    def meta_loss(theta):
        opt = lopt.make(theta, num_steps=20)

        def body(carry, _):
            p, state = carry
            loss, g = jax.value_and_grad(loss_fn)(p)
            updates, state = opt.update(g, state, p, loss=loss)
            return (optax.apply_updates(p, updates), state), loss

        _, losses = jax.lax.scan(body, (params, opt.init(params)), None, length=20)
        return jnp.mean(losses)

    return _compile(jax.grad(meta_loss), theta)(theta)


def _norm(tree):
    return float(optax.global_norm(tree))


def test_phase_two_meta_gradient_is_zero_on_the_mlp_and_not_on_the_scheduler():
    grad = _regression_meta_grad(Celo(train_phase=2), _theta(Celo, 0))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(grad))
    assert all(np.all(np.asarray(x) == 0.0) for x in jax.tree.leaves(grad["ff_mod_stack"]))
    rnn = grad["rnn_params"]
    for part in ("step_size", "lstm"):
        assert _norm(rnn[part]) > 0.0, part
    assert _norm(rnn["mix"]["mix"]) > 0.0 and _norm(rnn["mix"]["input"]) > 0.0
    assert _norm(grad["lstm_init_state"]) > 0.0
    assert _norm(rnn["mix"]["mix_unused"]) == 0.0  # kept for the checkpoint layout, never used


def test_phase_one_meta_gradient_is_zero_on_the_scheduler_and_not_on_the_mlp():
    grad = _regression_meta_grad(Celo(train_phase=1), _theta(Celo, 0))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(grad))
    assert _norm(grad["rnn_params"]) == 0.0 and _norm(grad["lstm_init_state"]) == 0.0
    ff = grad["ff_mod_stack"]
    assert _norm(ff["w2"]) > 0.0 and _norm(ff["w0__0"]) > 0.0 and _norm(ff) > 0.0


# ----------------------------------------------------------------------------- Celo-Adam


def test_celo_adam_is_adam_with_the_scheduled_learning_rate():
    lopt = CeloAdam()
    theta = _theta(CeloAdam, 9, 0.1)
    params = {"kernel": jnp.ones((4, 3)), "scalar": jnp.float32(2.0)}
    grads = _grads(params, len(LOSSES))

    def both(theta):
        opt, adam = lopt.make(theta, num_steps=NUM_STEPS), optax.adam(1e-4, b1=0.9, b2=0.999, eps=1e-8)
        state, adam_state = opt.init(params), adam.init(params)
        outs = []
        for t in range(len(LOSSES)):
            g = jax.tree.map(operator.itemgetter(t), grads)
            ours, state = opt.update(g, state, None, loss=LOSSES[t], loss_fn=None)  # params not needed
            ref, adam_state = adam.update(g, adam_state, params)
            outs.append((ours, ref))
        return outs

    sched = NpScheduler(np_tree(theta), 1, NUM_STEPS)
    for t, (ours, ref) in enumerate(_compile(both, theta)(theta)):
        lam = sched.step(LOSSES[t])[0]  # Adam lr 1e-4 ↔ λ = 0.1: the ratio is λ_t / 0.1 everywhere
        for k in params:
            np.testing.assert_allclose(np.asarray(ours[k]) / np.asarray(ref[k]), lam / 0.1, rtol=1e-4)


# ----------------------------------------------------------------------------- errors


def _tiny_update(opt, **kwargs):
    """Traces one update (no compile) on a single 2×2 leaf."""
    return jax.eval_shape(lambda p: opt.update(p, opt.init(p), **kwargs), {"w": jnp.ones((2, 2))})


@pytest.mark.parametrize("lopt", [Celo(), CeloAdam()], ids=["celo", "celo_adam"])
def test_update_without_loss_is_a_type_error(lopt):
    opt = lopt.make(_theta(type(lopt), 0), num_steps=10)
    params = {"w": jnp.ones((2, 2))}
    with pytest.raises(TypeError, match=r"loss=loss"):
        _tiny_update(opt, params=params)
    with pytest.raises(TypeError, match="scalar"):
        _tiny_update(opt, params=params, loss=jnp.ones(3))


def test_celo_update_without_params_raises():
    opt = Celo().make(_theta(Celo, 0), num_steps=10)
    with pytest.raises(ValueError, match=r"opt.update\(grads, state, params"):
        _tiny_update(opt, loss=1.0)
    adam = CeloAdam(param_scale_mult=True)
    with pytest.raises(ValueError, match="param_scale_mult"):
        _tiny_update(adam.make(_theta(CeloAdam, 0), num_steps=10), loss=1.0)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Celo(train_phase=3), ValueError, r"train_phase must be one of \[1, 2\]"),
        (lambda: Celo(param_inits=0), ValueError, "param_inits must be >= 1"),
        (lambda: Celo(lstm_hidden_size=2.5), TypeError, "lstm_hidden_size must be an int"),
        (lambda: Celo(mix_layers="yes"), TypeError, "mix_layers must be a bool"),
        (lambda: Celo(initial_rms_decays=(1.0,)), ValueError, r"decays in \[0, 1\)"),
        (lambda: Celo(initial_momentum_decays=(0.9, 0.99)), ValueError, "numbers of decays"),
        (lambda: CeloAdam(b2=1.5), ValueError, "b2"),
        (lambda: CeloAdam(eps=-1.0), ValueError, "eps must be >= 0"),
    ],
)
def test_invalid_construction(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_invalid_make_arguments():
    lopt = Celo()
    theta = _theta(Celo, 0)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        lopt.make(theta, num_steps=0)
    with pytest.raises(ValueError, match="needs num_steps"):
        lopt.make(theta, num_steps=None)
    with pytest.raises(ValueError, match=r"missing leaves: \[\], unexpected leaves: \['ff_mod_stack/b0'"):
        CeloAdam().make(theta, num_steps=10)
    with pytest.raises(ValueError, match=r"unexpected leaves: \['rnn_params/mix/input/b'"):
        Celo(mix_layers=False).make(theta, num_steps=10)
