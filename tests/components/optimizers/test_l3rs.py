"""l3rs: validation, shapes, the update against NumPy + optax, jit/vmap, meta-gradients, a fresh run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers.l3rs import L3RS, L3RSState
from components.optimizers.l3rs_parts import (
    BASE_DIRECTIONS,
    DEFAULT_LEARNING_RATES,
    FRACTION_SHIFTS,
    fractional_tanh_embedding,
)

SHAPES = {"a_scalar": (), "b_bias": (7,), "c_kernel": (5, 3), "d_conv": (2, 3, 2, 4)}  # tree.leaves order


def random_tree(seed, shapes=SHAPES, dtypes=None):
    rng = np.random.default_rng(seed)
    dtypes = dtypes or {}
    return {n: jnp.asarray(rng.normal(size=s), dtypes.get(n, jnp.float32)) for n, s in shapes.items()}


def perturbed_meta_params(lopt, key, scale=0.3):
    base = lopt.init_meta_params(jax.random.key(0))
    leaves, treedef = jax.tree.flatten(base)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


# ----------------------------------------------------------------------------- construction


def test_defaults_sizes_and_config_round_trip():
    lopt = L3RS(num_layers=4)
    assert lopt.base_directions == BASE_DIRECTIONS == ("sgd", "momentum", "adam", "lion")
    assert lopt.num_status_features == len(FRACTION_SHIFTS) + 3 == 12
    assert lopt.layer_sizes == (8 + 12, 32, 32, 4)
    assert lopt.initial_learning_rates == (1e-2, 1e-2, 1e-3, 1e-4)
    assert lopt.initial_coefficients == (0.01, 0.01, 1.0, 0.01)
    config = json.loads(json.dumps(lopt.config()))
    assert L3RS(**config) == lopt
    assert L3RS.name == "l3rs"

    custom = L3RS(num_layers=2, base_directions=["lion", "sgd"], hidden_sizes=[16], coefficient_transform="linear")
    assert custom.initial_coefficients == (1.0, 0.01)  # no adam: the first direction leads
    assert custom.initial_learning_rates == (DEFAULT_LEARNING_RATES["lion"], DEFAULT_LEARNING_RATES["sgd"])
    assert L3RS(**json.loads(json.dumps(custom.config()))) == custom

    meta_params = lopt.init_meta_params(jax.random.key(1))
    shapes = jax.tree.map(jnp.shape, meta_params)
    assert shapes["embeddings"] == (4, 8)
    assert shapes["log_learning_rates"] == (4,)
    assert shapes["mlp"] == {"w0": (20, 32), "b0": (32,), "w1": (32, 32), "b1": (32,), "w2": (32, 4), "b2": (4,)}
    assert {x.dtype for x in jax.tree.leaves(meta_params)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(np.exp(meta_params["log_learning_rates"]), lopt.initial_learning_rates, rtol=1e-6)
    assert np.max(np.abs(meta_params["mlp"]["w2"])) <= 2e-3 / np.sqrt(32)  # small last layer


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"base_directions": ("adam", "adagrad")},
            ValueError,
            r"unknown or missing base directions \['adagrad'\].*\('sgd', 'momentum', 'adam', 'lion'\)",
        ),
        ({"base_directions": ()}, ValueError, "non-empty tuple of names from"),
        ({"base_directions": "adam"}, TypeError, r"sequence of names.*Allowed names"),
        ({"base_directions": ("adam", "adam")}, ValueError, "must not repeat"),
        ({"coefficient_transform": "softplus"}, ValueError, r"one of \('exp', 'linear'\), got 'softplus'"),
        (
            {"initial_coefficients": (1.0, 0.0, 1.0, 1.0)},
            ValueError,
            "must all be > 0 with coefficient_transform='exp'",
        ),
        ({"initial_learning_rates": (1e-3,)}, ValueError, "one value per base direction"),
        ({"initial_learning_rates": (1e-3, 0.0, 1e-3, 1e-3)}, ValueError, "must all be > 0"),
        ({"num_layers": 0}, ValueError, "num_layers must be >= 1"),
        ({"num_layers": 2.0}, TypeError, "num_layers must be an int"),
        ({"hidden_sizes": 32}, TypeError, "hidden_sizes must be a sequence"),
        ({"ema_decay": 1.0}, ValueError, r"ema_decay must be a decay in \[0, 1\)"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        L3RS(**{"num_layers": 2, **kwargs})


def test_linear_transform_allows_zero_coefficients():
    lopt = L3RS(num_layers=1, coefficient_transform="linear", initial_coefficients=(0.0, 0.0, 1.0, -0.1))
    assert lopt.initial_coefficients == (0.0, 0.0, 1.0, -0.1)


def test_make_rejects_bad_arguments():
    lopt = L3RS(num_layers=2)
    meta_params = lopt.init_meta_params(jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        lopt.make(meta_params, num_steps=0)
    with pytest.raises(ValueError, match=r"lacks \['embeddings'\]"):
        lopt.make({k: v for k, v in meta_params.items() if k != "embeddings"}, num_steps=10)
    with pytest.raises(ValueError, match=r"'embeddings'\] has shape \(3, 8\), expected \(2, 8\)"):
        L3RS(num_layers=2).make(L3RS(num_layers=3).init_meta_params(jax.random.key(0)), num_steps=10)


# ----------------------------------------------------------------------------- call errors


def test_mismatched_num_layers_raises():
    lopt = L3RS(num_layers=3)
    opt = lopt.make(lopt.init_meta_params(jax.random.key(0)), num_steps=10)
    params = {"b": jnp.zeros(3), "w": jnp.ones((2, 3))}
    with pytest.raises(ValueError, match=r"num_layers=3.*has 2 leaves.*\[\(3,\), \(2, 3\)\].*L3RS\(num_layers=2"):
        opt.init(params)
    state = opt.init({"a": jnp.ones(()), **params})
    with pytest.raises(ValueError, match=r"L3RS.update: .*has 2 leaves"):
        opt.update(params, state, params, loss=jnp.float32(1.0))


def test_missing_loss_params_or_scalar_loss_raise():
    lopt = L3RS(num_layers=1)
    opt = lopt.make(lopt.init_meta_params(jax.random.key(0)), num_steps=10)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    with pytest.raises(
        TypeError, match=r"no loss extra arg \(got \['loss_fn'\]\).*opt.update\(grads, state, params, loss=loss\)"
    ):
        opt.update(params, state, params, loss_fn=lambda p: 0.0)
    with pytest.raises(ValueError, match="uses the weight norms as features"):
        opt.update(params, state, None, loss=jnp.float32(1.0))
    with pytest.raises(ValueError, match=r"loss must be a scalar, got shape \(3,\)"):
        opt.update(params, state, params, loss=jnp.ones(3))


# ----------------------------------------------------------------------------- shapes, dtypes, jit


def test_shapes_dtypes_state_stability_and_no_recompilation():
    shapes = {**SHAPES, "e_half": (3, 2)}
    params = random_tree(0, shapes, dtypes={"e_half": jnp.bfloat16})
    lopt = L3RS(num_layers=len(shapes))
    opt = lopt.make(lopt.init_meta_params(jax.random.key(0)), num_steps=50)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        loss_fn = lambda p: sum(jnp.sum(jnp.square(x.astype(jnp.float32) - 0.5)) for x in jax.tree.leaves(p))
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params, loss=loss, loss_fn=loss_fn, unused=jnp.ones(2))
        return optax.apply_updates(params, updates), state, updates

    sig = lambda tree: jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)
    state0 = opt.init(params)
    assert isinstance(state0, L3RSState)
    assert {x.dtype for x in jax.tree.leaves(state0.buffers)} == {jnp.dtype(jnp.float32)}
    assert sorted(state0.buffers) == ["adam", "lion", "momentum"]  # sgd keeps no accumulator
    params1, state1, updates = step(params, state0)
    params2, state2, updates2 = step(params1, state1)
    assert len(traces) == 1
    assert sig(updates) == sig(params) == sig(updates2)
    assert sig(state1) == sig(state0) == sig(state2)
    assert int(state2.iteration) == 2
    for u in jax.tree.leaves(updates2):
        assert np.all(np.isfinite(np.asarray(u, np.float32))) and np.any(np.asarray(u, np.float32) != 0)


# ----------------------------------------------------------------------------- the update, by hand


def np_coefficients(lopt, meta_params, fraction, loss_hat, first_loss, grad_hat, weight_hat):
    """Features and shared MLP in float64 NumPy, straight from the module docstring."""
    num_layers = len(grad_hat)
    log = lambda x: np.log(np.maximum(x, 1e-12))
    time = np.tanh(10.0 * (fraction - np.asarray(FRACTION_SHIFTS)))
    status = np.concatenate(
        [
            np.tile(time, (num_layers, 1)),
            np.full((num_layers, 1), log(abs(loss_hat)) - log(abs(first_loss))),
            log(np.asarray(grad_hat))[:, None],
            log(np.asarray(weight_hat))[:, None],
        ],
        axis=1,
    )
    x = np.concatenate([np.asarray(meta_params["embeddings"], np.float64), status], axis=1)
    n = len(meta_params["mlp"]) // 2
    for i in range(n):
        x = x @ np.asarray(meta_params["mlp"][f"w{i}"], np.float64) + np.asarray(meta_params["mlp"][f"b{i}"])
        if i < n - 1:
            x = np.maximum(x, 0.0)
    c0 = np.asarray(lopt.initial_coefficients)
    if lopt.coefficient_transform == "exp":
        return c0 * np.exp(10.0 * np.tanh(x / 10.0))
    return c0 + x


@pytest.mark.parametrize("transform", ["exp", "linear"])
def test_update_is_the_mlp_weighted_sum_of_optax_base_steps(transform):
    # every direction contributes visibly: comparable base steps and coefficients
    lopt = L3RS(
        num_layers=len(SHAPES),
        coefficient_transform=transform,
        ema_decay=0.8,
        initial_learning_rates=(1e-2, 1e-3, 1e-2, 1e-2),
        initial_coefficients=(0.5, 1.0, 1.0, 0.5),
        momentum_decay=0.7,  # non-default decays, so that a mix-up shows within 3 steps
        adam_b1=0.8,
        adam_b2=0.9,
        adam_eps=1e-3,
        lion_b1=0.7,
        lion_b2=0.5,
    )
    meta_params = perturbed_meta_params(lopt, jax.random.key(3))
    num_steps = 5
    params_seq = [random_tree(100 + i) for i in range(3)]
    grads_seq = [random_tree(200 + i) for i in range(3)]
    losses = [2.0, 1.5, 1.7]

    @jax.jit
    def step(grads, state, params, loss):
        return lopt.make(meta_params, num_steps=num_steps).update(grads, state, params, loss=loss)

    state = lopt.make(meta_params, num_steps=num_steps).init(params_seq[0])
    got = []
    for params, grads, loss in zip(params_seq, grads_seq, losses, strict=True):
        updates, state = step(grads, state, params, jnp.float32(loss))
        got.append((updates, np.asarray(state.coefficients)))

    # base directions from optax, in the order of lopt.base_directions
    base = [
        optax.identity(),
        optax.trace(decay=0.7),
        optax.scale_by_adam(b1=0.8, b2=0.9, eps=1e-3),
        optax.scale_by_lion(b1=0.7, b2=0.5),
    ]
    base_states = [b.init(params_seq[0]) for b in base]
    lrs = np.exp(np.asarray(meta_params["log_learning_rates"], np.float64))
    beta, names = 0.8, list(SHAPES)
    loss_ema, grad_ema, weight_ema = 0.0, np.zeros(len(names)), np.zeros(len(names))
    for t, (params, grads, loss) in enumerate(zip(params_seq, grads_seq, losses, strict=True)):
        directions = []
        for k, b in enumerate(base):
            d, base_states[k] = b.update(grads, base_states[k], params)
            directions.append(d)
        rms = lambda tree: np.array([np.sqrt(np.mean(np.square(np.asarray(tree[n], np.float64)))) for n in names])
        loss_ema = beta * loss_ema + (1 - beta) * loss
        grad_ema = beta * grad_ema + (1 - beta) * rms(grads)
        weight_ema = beta * weight_ema + (1 - beta) * rms(params)
        corr = 1 - beta ** (t + 1)
        c = np_coefficients(
            lopt, meta_params, t / num_steps, loss_ema / corr, losses[0], grad_ema / corr, weight_ema / corr
        )
        assert np.std(c[:, 2]) > 1e-3  # the coefficients really differ per layer
        updates, coefficients = got[t]
        np.testing.assert_allclose(coefficients, c, rtol=2e-4, atol=1e-6, err_msg=f"step {t}")
        for layer, name in enumerate(names):
            want = -sum(c[layer, k] * lrs[k] * np.asarray(directions[k][name], np.float64) for k in range(len(base)))
            assert updates[name].shape == SHAPES[name] and updates[name].dtype == jnp.float32
            atol = 1e-5 * np.max(np.abs(want))
            np.testing.assert_allclose(updates[name], want, rtol=2e-4, atol=atol, err_msg=f"{name} step {t}")


def test_progress_embedding():
    np.testing.assert_allclose(
        fractional_tanh_embedding(jnp.float32(0.25)), np.tanh(10 * (0.25 - np.asarray(FRACTION_SHIFTS))), rtol=1e-6
    )


# ----------------------------------------------------------------------------- vmap, traced num_steps


def test_vmap_over_meta_params_and_params_with_traced_num_steps():
    lopt = L3RS(num_layers=len(SHAPES))
    base = lopt.init_meta_params(jax.random.key(0))
    batch = jax.tree.map(lambda x: jnp.stack([x, x + 0.3, x - 0.3]), base)  # θ, θ + 0.3, θ − 0.3

    def run(meta_params, params, num_steps):
        opt = lopt.make(meta_params, num_steps=num_steps)
        state = opt.init(params)
        for i in range(2):
            grads = jax.tree.map(lambda p, i=i: jnp.cos(p + i), params)
            updates, state = opt.update(grads, state, params, loss=jnp.float32(1.0 + i))
            params = optax.apply_updates(params, updates)
        return params

    params = random_tree(1)
    num_steps = jnp.int32(20)
    over_meta = jax.jit(jax.vmap(run, in_axes=(0, None, None)))(batch, params, num_steps)
    single = jax.jit(run)(jax.tree.map(lambda x: x[1], batch), params, num_steps)
    for name in SHAPES:
        assert np.all(np.isfinite(over_meta[name]))
        np.testing.assert_allclose(over_meta[name][1], single[name], rtol=1e-5, atol=1e-7)
    assert not np.allclose(over_meta["c_kernel"][1], over_meta["c_kernel"][2])

    params_batch = jax.tree.map(lambda a, b: jnp.stack([a, b]), random_tree(2), random_tree(3))
    over_params = jax.jit(jax.vmap(run, in_axes=(None, 0, None)))(base, params_batch, num_steps)
    for name in SHAPES:
        assert over_params[name].shape == (2, *SHAPES[name])
        assert np.all(np.isfinite(over_params[name]))


# ----------------------------------------------------------------------------- meta-gradient


def _regression_problem():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
    y = jnp.sin(x @ jnp.asarray(rng.normal(size=(4, 1)), jnp.float32))
    params = {
        "b1": jnp.zeros(16),  # zero-initialised biases: weight RMS 0 on the first step
        "b2": jnp.zeros(1),
        "w1": jnp.asarray(rng.normal(size=(4, 16)) / 2.0, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(16, 1)) / 4.0, jnp.float32),
    }

    def loss_fn(p):
        hidden = jnp.tanh(x @ p["w1"] + p["b1"])
        return jnp.mean(jnp.square(hidden @ p["w2"] + p["b2"] - y))

    return params, loss_fn


def _unroll(opt, params, loss_fn, num_steps):
    def body(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params, loss=loss)
        return (optax.apply_updates(params, updates), state), loss

    (params, state), losses = jax.lax.scan(body, (params, opt.init(params)), None, length=num_steps)
    return params, state, losses


def test_meta_gradient_through_a_20_step_unroll_is_finite_and_reaches_every_meta_param():
    params, loss_fn = _regression_problem()
    lopt = L3RS(num_layers=4)

    def meta_loss(meta_params):
        _, _, losses = _unroll(lopt.make(meta_params, num_steps=20), params, loss_fn, 20)
        return jnp.mean(losses)

    meta_params = lopt.init_meta_params(jax.random.key(0))
    value, grads = jax.jit(jax.value_and_grad(meta_loss))(meta_params)
    assert np.isfinite(value)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
    assert np.all(np.any(grads["embeddings"] != 0, axis=1))  # every layer's row gets a gradient
    for name in ("w0", "w1", "w2", "b2"):
        assert np.any(grads["mlp"][name] != 0), name
    assert np.all(grads["log_learning_rates"] != 0)
    assert grads["log_learning_rates"][2] < 0  # a larger Adam step lowers the loss early on


# ----------------------------------------------------------------------------- fresh optimizer


def test_fresh_l3rs_trains_like_adam():
    params, loss_fn = _regression_problem()
    lopt = L3RS(num_layers=4)
    opt = lopt.make(lopt.init_meta_params(jax.random.key(0)), num_steps=300)
    run = jax.jit(lambda p: _unroll(opt, p, loss_fn, 300))
    _, state, losses = run(params)
    _, _, adam_losses = jax.jit(lambda p: _unroll(optax.adam(1e-3), p, loss_fn, 300))(params)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]
    np.testing.assert_allclose(losses[-1], adam_losses[-1], rtol=0.1)
    # the coefficients are still close to c0 = (0.01, 0.01, 1, 0.01) for every layer
    np.testing.assert_allclose(state.coefficients, np.tile(lopt.initial_coefficients, (4, 1)), rtol=0.05)
