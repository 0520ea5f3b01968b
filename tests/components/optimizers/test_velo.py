"""velo: sizes, LSTM features by hand, the hypernetwork's wiring, jit/vmap/traced T, meta-gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.optimizers import features as F
from components.optimizers import lstm as L
from components.optimizers import velo_mlp
from components.optimizers.per_parameter import PerParameterState
from components.optimizers.velo import VeLO, mix_ff_params, tensor_lstm_features

SHIFTS = np.array([0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1])
SMALL = VeLO(lstm_hidden_size=8, param_inits=4)


@pytest.fixture(scope="module")
def meta_params():
    return SMALL.init_meta_params(jax.random.key(0))


def np_clip_log_abs(x):
    return 0.5 * np.clip(np.log(1e-8 + np.abs(10.0 * x)), -5, 5)


# ----------------------------------------------------------------------------- sizes and config


def test_sizes_derived_from_code():
    assert SMALL.num_lstm_inputs == 9 + 9 + 1 + 5 + 3 + 3  # var_rms broadcasts against the 3 momenta
    assert sum(SMALL.feature_groups) == 30
    assert VeLO(initial_momentum_decays=(0.9,)).num_lstm_inputs == 9 + 9 + 1 + 5 + 1 + 1


def test_meta_param_structure(meta_params):
    h, k = 8, 4
    shapes = jax.tree.map(lambda x: x.shape, meta_params)
    assert shapes["lstm_init_state"] == {"hidden": (1, h), "cell": (1, h)}
    rnn = shapes["rnn_params"]
    n_in = SMALL.num_lstm_inputs
    assert rnn["mix"] == {name: {"w": (n_in, h), "b": (h,)} for name in ("mix_unused", "mix", "input")}
    assert rnn["lstm"] == {"w": (2 * h, 4 * h), "b": (4 * h,)}
    assert rnn["rnn_to_controls"] == {"w": (h, k), "b": (k,)}
    assert rnn["step_size"] == {"w": (h, 1), "b": (1,)}
    groups = SMALL.feature_groups
    ff = shapes["ff_mod_stack"]
    assert ff == {f"w0__{i}": (k, w, 4) for i, w in enumerate(groups)} | {
        "w1": (k, 4, 4),
        "w2": (k, 4, 3),
        "b0": (k, 4),
        "b1": (k, 4),
        "b2": (k, 3),
    }
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(meta_params))
    np.testing.assert_array_equal(meta_params["lstm_init_state"]["hidden"], 0.0)
    # bank members are drawn independently
    assert not np.allclose(meta_params["ff_mod_stack"]["w1"][0], meta_params["ff_mod_stack"]["w1"][1])
    w = meta_params["rnn_params"]["lstm"]["w"]
    assert np.abs(w).max() <= 2.0 / np.sqrt(16) + 1e-6


def test_defaults_and_released_sizes():
    default = VeLO()
    assert (default.lstm_hidden_size, default.param_inits, default.ff_mult) == (64, 32, 1.0)
    released = VeLO.released_sizes()
    assert (released.lstm_hidden_size, released.param_inits, released.ff_mult) == (512, 256, 100.0)
    shapes = jax.eval_shape(released.init_meta_params, jax.random.key(0))
    assert shapes["ff_mod_stack"]["w0__0"].shape == (256, 1, 4)
    assert shapes["rnn_params"]["lstm"]["w"].shape == (1024, 2048)


def test_config_round_trip():
    lopt = VeLO(lstm_hidden_size=16, param_inits=2, ff_mult=100, initial_rms_decays=[0.99])
    config = lopt.config()
    assert VeLO(**config) == lopt
    assert config["initial_rms_decays"] == [0.99] and isinstance(config["ff_mult"], float)


def test_constructor_errors():
    with pytest.raises(TypeError, match="lstm_hidden_size must be an int"):
        VeLO(lstm_hidden_size=8.0)
    with pytest.raises(ValueError, match="param_inits must be >= 1"):
        VeLO(param_inits=0)
    with pytest.raises(TypeError, match="ff_mult must be a float"):
        VeLO(ff_mult="100")
    with pytest.raises(TypeError, match="param_scale_mult must be a bool"):
        VeLO(param_scale_mult=1)
    with pytest.raises(ValueError, match="decays in \\[0, 1\\)"):
        VeLO(initial_rms_decays=(1.0,))
    with pytest.raises(ValueError, match="must be equal or one of them 1"):
        VeLO(initial_momentum_decays=(0.9, 0.99), initial_rms_decays=(0.9, 0.99, 0.999))


def test_make_and_update_errors(meta_params):
    with pytest.raises(ValueError, match="needs num_steps"):
        SMALL.make(meta_params, num_steps=None)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        SMALL.make(meta_params, num_steps=0)
    with pytest.raises(ValueError, match="lacks \\['rnn_params'\\]"):
        SMALL.make({k: v for k, v in meta_params.items() if k != "rnn_params"}, num_steps=10)
    opt = SMALL.make(meta_params, num_steps=10)
    params = {"w": jnp.ones((2, 2))}
    state = opt.init(params)
    with pytest.raises(TypeError, match=r"opt.update\(grads, state, params, loss=loss\)"):
        opt.update(params, state, params)
    with pytest.raises(ValueError, match="uses the parameters as a feature"):
        opt.update(params, state, None, loss=1.0)


# ----------------------------------------------------------------------------- LSTM features by hand


def test_tensor_lstm_features_by_hand():
    p = np.array([[1.0, -2.0], [3.0, 0.5], [0.0, 1.0]])
    ms = [np.array([[0.1, 0.2], [0.3, -0.4], [0.0, 0.5]]) * s for s in (1.0, 2.0, -0.5)]
    v = np.array([[0.01, 0.04], [0.09, 0.16], [0.0, 0.25]])
    loss_feats = np.linspace(-0.8, 0.8, 9)
    got = tensor_lstm_features(
        jnp.asarray(p), [jnp.asarray(m) for m in ms], [jnp.asarray(v)], jnp.int32(3), jnp.int32(10), loss_feats
    )
    mu = 1.0 / np.sqrt(np.mean(p**2))
    ms_n = [m * mu for m in ms]
    v_n = v * mu
    expected = np.concatenate(
        [
            np.tanh(10 * (0.3 - SHIFTS)),  # fraction_left
            loss_feats,  # loss_features
            [np_clip_log_abs(v_n.mean())],  # mean_rms
            [0, 0, 1, 0, 0],  # rank: two axes of size > 1
            [np_clip_log_abs(np.mean((m - m.mean()) ** 2)) for m in ms_n],  # var_m
            [np_clip_log_abs(np.mean((v_n - m.mean()) ** 2)) for m in ms_n],  # var_rms (momentum mean)
        ]
    )
    assert got.shape == (30,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("shape", "rank"), [((), 0), ((5,), 1), ((4, 1, 3), 2), ((2, 2, 2, 2), 4), ((2,) * 5, None)])
def test_rank_one_hot(shape, rank):
    p = jnp.ones(shape)
    got = tensor_lstm_features(p, [p] * 3, [p], 0, 10, jnp.zeros(9))[19:24]
    expected = np.zeros(5) if rank is None else np.eye(5)[rank]
    np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------------------- hypernetwork


def test_mix_ff_params_direct(meta_params):
    bank = meta_params["ff_mod_stack"]
    controls = jnp.array([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 0.0, 0.0]])
    mixed = mix_ff_params(bank, controls, 100.0)
    for name, theta in bank.items():
        for i in range(2):
            c = np.asarray(controls[i]).reshape((4,) + (1,) * (theta.ndim - 1))
            expected = 100.0 * np.mean(c * np.asarray(theta), axis=0)
            np.testing.assert_allclose(mixed[name][i], expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_first_update_by_hand(meta_params):
    """The update equals the pipeline assembled from its documented pieces (one step from init)."""
    params = {"b": jnp.array([0.5, -1.0, 2.0]), "w": jnp.array([[1.0, 2.0], [-3.0, 0.5], [0.2, 0.1]])}
    grads = {"b": jnp.array([0.3, -2000.0, 0.1]), "w": jnp.array([[0.1, -0.2], [0.3, 0.0], [1.5, -0.5]])}
    num_steps, loss = 50, jnp.float32(2.5)
    lopt = VeLO(lstm_hidden_size=8, param_inits=4, ff_mult=3.0)

    def both(meta_params):
        opt = lopt.make(meta_params, num_steps=num_steps)
        updates, state = opt.update(grads, opt.init(params), params, loss=loss)
        rnn, bank = meta_params["rnn_params"], meta_params["ff_mod_stack"]
        loss_feats = F.loss_buffer_features(F.update_loss_buffer(F.init_loss_buffer(num_steps), loss))
        leaves = [params["b"], params["w"]]  # leaf order: "b", "w"
        rows = jnp.stack([tensor_lstm_features(p, [0.0 * p] * 3, [0.0 * p], 0, num_steps, loss_feats) for p in leaves])
        h0 = jnp.tile(meta_params["lstm_init_state"]["hidden"], (2, 1))
        c0 = jnp.tile(meta_params["lstm_init_state"]["cell"], (2, 1))
        hidden, lstm_state = L.lstm_step(rnn["lstm"], L.mix_tensors(rnn["mix"], rows), L.LSTMState(h0, c0))
        controls = hidden @ rnn["rnn_to_controls"]["w"] + rnn["rnn_to_controls"]["b"]
        lr = hidden @ rnn["step_size"]["w"][:, 0] + rnn["step_size"]["b"][0]
        expected, moms = {}, {}
        for i, name in enumerate(("b", "w")):
            p, g = params[name], jnp.clip(grads[name], -1000.0, 1000.0)
            c = controls[i]
            ff = {k: 3.0 * jnp.mean(c.reshape((4,) + (1,) * (v.ndim - 1)) * v, axis=0) for k, v in bank.items()}
            mom = F.update_momentum(F.init_momentum(p, 3), g, jnp.array([0.9, 0.99, 0.999]))
            rms = F.update_rms(F.init_rms(p, 1), g, jnp.array([0.999]))
            fac, fac_g = F.update_factored(F.init_factored(p, 3), g, jnp.array([0.9, 0.99, 0.999]))
            inputs = velo_mlp.normalize_channels(velo_mlp.hyper_features(p, g, mom, rms, fac_g, fac))
            d, s, _ = velo_mlp.apply_ff(ff, inputs, lopt.feature_groups)
            expected[name] = -lr[i] * d * jnp.exp(0.001 * s) * 0.001 * jnp.sqrt(jnp.mean(p**2) + 1e-9)
            moms[name] = mom[0]
        return updates, state, expected, moms, lstm_state

    updates, state, expected, moms, lstm_state = jax.jit(both)(meta_params)
    np.testing.assert_allclose(state.context.lstm.hidden, lstm_state.hidden, rtol=1e-6)
    for name in ("b", "w"):
        np.testing.assert_allclose(updates[name], expected[name], rtol=2e-5, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(state.accumulators[name].momentum[0], moms[name], rtol=1e-6)
        assert np.any(np.asarray(updates[name]) != 0)


# ----------------------------------------------------------------------------- transformation


def _run(meta_params, num_steps, params, steps=3):
    """``steps`` updates (a scan) on fixed gradient rules; returns params, last updates, state, hidden states."""
    opt = SMALL.make(meta_params, num_steps=num_steps)
    state = opt.init(params)

    def body(carry, t):
        params, state, _ = carry
        grads = jax.tree.map(lambda p: (0.3 * p + 0.05 * (t + 1)).astype(p.dtype), params)
        loss = 3.0 - t.astype(jnp.float32)
        updates, state = opt.update(grads, state, params, loss=loss, loss_fn=None, unknown_extra=1)
        return (optax_apply(params, updates), state, updates), state.context.lstm.hidden

    zero_updates = jax.tree.map(jnp.zeros_like, params)
    (params, state, updates), hidden = jax.lax.scan(body, (params, state, zero_updates), jnp.arange(steps))
    return params, updates, state, jnp.concatenate([opt.init(params).context.lstm.hidden[None], hidden])


def optax_apply(params, updates):
    return jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)


PARAMS = {
    "s": jnp.float32(0.7),
    "v": jnp.array([0.5, -1.0, 2.0]),
    "w": jnp.arange(6.0).reshape(3, 2) - 2.5,
    "k": (jnp.arange(24.0).reshape(2, 1, 3, 4) / 10 - 1).astype(jnp.bfloat16),
}


def test_shapes_dtypes_jit_traced_num_steps(meta_params):
    run = jax.jit(_run, static_argnames="steps")
    new_params, updates, state, hidden = run(meta_params, jnp.int32(40), PARAMS)
    assert isinstance(state, PerParameterState)
    for name, p in PARAMS.items():
        assert updates[name].shape == p.shape and updates[name].dtype == p.dtype
        assert new_params[name].dtype == p.dtype
        assert np.all(np.isfinite(np.asarray(updates[name], np.float32)))
        assert np.any(np.asarray(updates[name], np.float32) != 0)
    # state dtypes/shapes do not change across updates
    init_state = SMALL.make(meta_params, num_steps=40).init(PARAMS)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), init_state) == jax.tree.map(lambda x: (x.shape, x.dtype), state)
    # traced T reaches the loss buffer and the state
    assert int(state.context.num_steps) == 40 and int(state.iteration) == 3
    np.testing.assert_allclose(state.context.loss_buffer.decays, F.init_loss_buffer(40).decays, rtol=1e-6)
    # the LSTM state advances and differs per tensor (rows: leaf order k, s, v, w)
    assert hidden.shape == (4, 4, 8)
    assert not np.allclose(hidden[1], hidden[0]) and not np.allclose(hidden[3], hidden[2])
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.allclose(hidden[-1, a], hidden[-1, b])


def test_vmap_over_meta_params(meta_params):
    batch = jax.tree.map(lambda x: jnp.stack([x, 1.1 * x + 0.01]), meta_params)
    params = {"w": PARAMS["w"], "v": PARAMS["v"]}
    run = jax.jit(jax.vmap(lambda mp: _run(mp, 20, params, steps=2)[1]))
    updates = run(batch)
    assert updates["w"].shape == (2, 3, 2)
    assert np.all(np.isfinite(updates["w"])) and not np.allclose(updates["w"][0], updates["w"][1], rtol=1e-3, atol=0)


TARGET = {"w": jnp.array([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]]), "v": jnp.array([0.3, -0.2, 1.0])}


def _inner_loss(params):
    return sum(jnp.sum(jnp.square(params[k] - TARGET[k])) for k in params)


@jax.jit
@jax.value_and_grad
def _meta_value_and_grad(meta_params, v0):
    """Mean inner loss over a 20-step unroll (a scan) from ``w = 0``, ``v = v0``."""
    opt = SMALL.make(meta_params, num_steps=20)
    params = {"w": jnp.zeros((3, 2)), "v": v0}

    def body(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(_inner_loss)(params)
        updates, state = opt.update(grads, state, params, loss=loss)
        return (optax_apply(params, updates), state), loss

    _, losses = jax.lax.scan(body, (params, opt.init(params)), length=20)
    return jnp.mean(losses)


def _with_lr_bias(meta_params):
    # an LR head with bias 1 (instead of 0) so the 20 steps move the parameters visibly
    rnn = meta_params["rnn_params"]
    return dict(meta_params, rnn_params=dict(rnn, step_size={"w": rnn["step_size"]["w"], "b": jnp.ones(1)}))


def test_meta_gradient_through_unroll(meta_params):
    value, grads = _meta_value_and_grad(_with_lr_bias(meta_params), jnp.array([0.9, 0.9, 0.9]))
    assert np.isfinite(value)
    for key in ("ff_mod_stack", "rnn_params", "lstm_init_state"):
        norm = np.sqrt(sum(float(jnp.sum(jnp.square(g))) for g in jax.tree.leaves(grads[key])))
        assert np.isfinite(norm) and norm > 0, key


def test_meta_gradient_nan_after_exactly_zero_gradient(meta_params):
    """Documented hazard kept from the reference: the un-factored ``m·(v^a)^−½`` channel.

    An element of a 0-/1-D tensor with an exactly-zero gradient has ``v^a = (1−β)·1e-30``; a step
    later the channel's derivative overflows and a backprop meta-gradient is NaN, while the loss
    stays finite (``small_fc_lopt``'s ``(v^a + 1e-6)^−½`` does not have this).
    """
    v0 = jnp.array([0.9, 0.9, 1.0])  # the last element starts at its optimum: gradient exactly 0
    value, grads = _meta_value_and_grad(_with_lr_bias(meta_params), v0)
    assert np.isfinite(value)
    assert not all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads["ff_mod_stack"]))
