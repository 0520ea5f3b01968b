"""l3rs (L3RS as published): validation, shapes, the update against an independent NumPy
implementation (one and several steps), the rule's properties, jit/vmap, meta-gradients, a fresh run."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import l3rs_parts
from components.optimizers.features import FRACTION_SHIFTS
from components.optimizers.l3rs import L3RS, L3RSState
from components.optimizers.l3rs_parts import BASE_DIRECTIONS, Direction

SHAPES = {"a_scalar": (), "b_bias": (7,), "c_kernel": (5, 3), "d_conv": (2, 3, 2, 4)}  # tree.leaves order
SMALL = {"a_scalar": (), "b_bias": (3,), "c_kernel": (2, 3)}  # the small tree of the NumPy reference


def random_tree(seed, shapes=SHAPES, dtypes=None, scale=1.0):
    rng = np.random.default_rng(seed)
    dtypes = dtypes or {}
    return {n: jnp.asarray(scale * rng.normal(size=s), dtypes.get(n, jnp.float32)) for n, s in shapes.items()}


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
    assert lopt.ema_decays == (0.9, 0.99, 0.999)
    assert lopt.num_status_features == len(FRACTION_SHIFTS) + 3 * 3 == 18
    assert lopt.layer_sizes == (8 + 18, 32, 32, 4 + 1)  # K mixing logits and one rate output
    assert lopt.initial_rate == 1e-3
    np.testing.assert_allclose(lopt.initial_mixing, (0.01, 0.01, 0.97, 0.01), rtol=1e-12)
    config = json.loads(json.dumps(lopt.config()))
    assert L3RS(**config) == lopt
    assert L3RS.name == "l3rs"

    custom = L3RS(num_layers=2, base_directions=["lion", "sgd"], hidden_sizes=[16], ema_decays=[0.5])
    assert custom.initial_mixing == (0.99, 0.01)  # no adam: the first direction leads
    assert custom.num_status_features == 9 + 3
    assert L3RS(**json.loads(json.dumps(custom.config()))) == custom

    meta_params = lopt.init_meta_params(jax.random.key(1))
    shapes = jax.tree.map(jnp.shape, meta_params)
    assert shapes["embeddings"] == (4, 8)
    assert shapes["log_rate"] == (1,)
    assert shapes["mlp"] == {"w0": (26, 32), "b0": (32,), "w1": (32, 32), "b1": (32,), "w2": (32, 5), "b2": (5,)}
    assert {x.dtype for x in jax.tree.leaves(meta_params)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(np.exp(meta_params["log_rate"]), 1e-3, rtol=1e-6)
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
        ({"initial_mixing": (0.5, 0.5)}, ValueError, "one weight per base direction"),
        ({"initial_mixing": (0.5, 0.0, 0.25, 0.25)}, ValueError, r"positive weights summing to 1"),
        ({"initial_mixing": (1.0, 1.0, 1.0, 1.0)}, ValueError, r"summing to 1.*sum 4.0.*Divide them by their sum"),
        ({"initial_mixing": "adam"}, TypeError, "sequence of floats"),
        ({"initial_rate": 0.0}, ValueError, r"initial_rate must be a finite number > 0"),
        ({"initial_rate": float("inf")}, ValueError, r"initial_rate must be a finite number > 0"),
        ({"num_layers": 0}, ValueError, "num_layers must be >= 1"),
        ({"num_layers": 2.0}, TypeError, "num_layers must be an int"),
        ({"hidden_sizes": 32}, TypeError, "hidden_sizes must be a sequence"),
        ({"ema_decays": (0.9, 1.0)}, ValueError, r"ema_decays\[\] must be a decay in \[0, 1\)"),
        ({"ema_decays": ()}, ValueError, "at least one decay"),
        ({"ema_decays": 0.9}, TypeError, "ema_decays must be a sequence"),
        ({"adam_eps": -1.0}, ValueError, "adam_eps must be a number >= 0"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        L3RS(**{"num_layers": 2, **kwargs})


def test_make_rejects_bad_arguments():
    lopt = L3RS(num_layers=2)
    meta_params = lopt.init_meta_params(jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        lopt.make(meta_params, num_steps=0)
    with pytest.raises(ValueError, match=r"lacks \['embeddings'\]"):
        lopt.make({k: v for k, v in meta_params.items() if k != "embeddings"}, num_steps=10)
    with pytest.raises(ValueError, match=r"lacks \['log_rate'\].*made by this version"):
        lopt.make({k: v for k, v in meta_params.items() if k != "log_rate"}, num_steps=10)
    with pytest.raises(ValueError, match=r"'embeddings'\] has shape \(3, 8\), expected \(2, 8\)"):
        lopt.make(L3RS(num_layers=3).init_meta_params(jax.random.key(0)), num_steps=10)
    with pytest.raises(ValueError, match=r"'log_rate'\] has shape \(2,\), expected \(1,\)"):
        lopt.make(dict(meta_params, log_rate=jnp.zeros(2)), num_steps=10)
    two = L3RS(num_layers=2, base_directions=("sgd", "adam")).init_meta_params(jax.random.key(0))
    with pytest.raises(ValueError, match=r"last bias has shape \(3,\), expected \(5,\): 4 mixing logits"):
        lopt.make(dict(two, embeddings=meta_params["embeddings"]), num_steps=10)


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
    assert state0.loss_ema.shape == (3,) and state0.grad_rms_ema.shape == (5, 3)
    assert state0.mixing.shape == (5, 4) and state0.rates.shape == (5,)
    params1, state1, updates = step(params, state0)
    params2, state2, updates2 = step(params1, state1)
    assert len(traces) == 1
    assert sig(updates) == sig(params) == sig(updates2)
    assert sig(state1) == sig(state0) == sig(state2)
    assert int(state2.iteration) == 2
    for u in jax.tree.leaves(updates2):
        assert np.all(np.isfinite(np.asarray(u, np.float32))) and np.any(np.asarray(u, np.float32) != 0)


# ----------------------------------------------------------------------------- independent NumPy reference


class NumpyL3RS:
    """L3RS written again in float64 NumPy from the module docstring (no JAX, no optax, no project code)."""

    def __init__(self, lopt, meta_params, num_steps, shapes):
        self.lopt, self.num_steps, self.names = lopt, num_steps, list(shapes)
        self.theta = jax.tree.map(lambda x: np.asarray(x, np.float64), meta_params)
        self.betas = np.asarray(lopt.ema_decays)
        zeros = {n: np.zeros(s) for n, s in shapes.items()}
        self.m = dict(zeros)  # heavy ball
        self.adam_m, self.adam_v = dict(zeros), dict(zeros)
        self.lion_m = dict(zeros)
        self.t, self.first_loss = 0, None
        self.loss_ema = np.zeros(len(self.betas))
        self.grad_ema = np.zeros((len(shapes), len(self.betas)))
        self.weight_ema = np.zeros((len(shapes), len(self.betas)))

    def directions(self, name, g):
        lo = self.lopt
        out = {}
        out["sgd"] = g
        self.m[name] = lo.momentum_decay * self.m[name] + g
        out["momentum"] = self.m[name]
        self.adam_m[name] = lo.adam_b1 * self.adam_m[name] + (1 - lo.adam_b1) * g
        self.adam_v[name] = lo.adam_b2 * self.adam_v[name] + (1 - lo.adam_b2) * g**2
        m_hat = self.adam_m[name] / (1 - lo.adam_b1 ** (self.t + 1))
        v_hat = self.adam_v[name] / (1 - lo.adam_b2 ** (self.t + 1))
        out["adam"] = m_hat / (np.sqrt(v_hat) + lo.adam_eps)
        out["lion"] = np.sign(lo.lion_b1 * self.lion_m[name] + (1 - lo.lion_b1) * g)
        self.lion_m[name] = lo.lion_b2 * self.lion_m[name] + (1 - lo.lion_b2) * g
        return [out[p] for p in lo.base_directions]

    def step(self, grads, params, loss):
        rms = lambda x: np.sqrt(np.mean(np.square(x)))
        log = lambda x: np.log(np.maximum(x, 1e-12))
        if self.first_loss is None:
            self.first_loss = loss
        b = self.betas
        self.loss_ema = b * self.loss_ema + (1 - b) * loss
        self.grad_ema = b * self.grad_ema + (1 - b) * np.array(
            [[rms(np.asarray(grads[n], np.float64))] for n in self.names]
        )
        self.weight_ema = b * self.weight_ema + (1 - b) * np.array(
            [[rms(np.asarray(params[n], np.float64))] for n in self.names]
        )
        corr = 1 - b ** (self.t + 1)
        num_layers = len(self.names)
        time = np.tanh(10.0 * (self.t / self.num_steps - np.asarray(FRACTION_SHIFTS)))
        loss_feat = log(np.abs(self.loss_ema / corr)) - log(abs(self.first_loss))
        status = np.concatenate(
            [
                np.tile(time, (num_layers, 1)),
                np.tile(loss_feat, (num_layers, 1)),
                log(self.grad_ema / corr),
                log(self.weight_ema / corr),
            ],
            axis=1,
        )
        x = np.concatenate([self.theta["embeddings"], status], axis=1)
        n_mlp = len(self.theta["mlp"]) // 2
        for i in range(n_mlp):
            x = x @ self.theta["mlp"][f"w{i}"] + self.theta["mlp"][f"b{i}"]
            if i < n_mlp - 1:
                x = np.maximum(x, 0.0)
        logits = x[:, :-1] + np.log(np.asarray(self.lopt.initial_mixing))
        mixing = np.exp(logits - logits.max(axis=1, keepdims=True))
        mixing /= mixing.sum(axis=1, keepdims=True)
        rates = np.exp(self.theta["log_rate"][0] + 10.0 * np.tanh(x[:, -1] / 10.0))
        updates = {}
        for layer, name in enumerate(self.names):
            g = np.asarray(grads[name], np.float64)
            dirs = self.directions(name, g)
            unit = [d / (rms(d) + 1e-12) for d in dirs]
            updates[name] = -rates[layer] * sum(mixing[layer, k] * unit[k] for k in range(len(unit)))
        self.t += 1
        return updates, mixing, rates


def _reference_lopt(**overrides):
    # non-default decays and ε, so that a mix-up of hyperparameters shows within a few steps
    settings = dict(
        num_layers=len(SMALL),
        ema_decays=(0.5, 0.8),
        initial_rate=3e-3,
        initial_mixing=(0.1, 0.2, 0.4, 0.3),
        momentum_decay=0.7,
        adam_b1=0.8,
        adam_b2=0.9,
        adam_eps=1e-3,
        lion_b1=0.7,
        lion_b2=0.5,
    )
    return L3RS(**{**settings, **overrides})


def _run_jax(lopt, meta_params, num_steps, params_seq, grads_seq, losses):
    opt = lopt.make(meta_params, num_steps=num_steps)
    step = jax.jit(lambda g, s, p, loss: opt.update(g, s, p, loss=loss))
    state = opt.init(params_seq[0])
    out = []
    for params, grads, loss in zip(params_seq, grads_seq, losses, strict=True):
        updates, state = step(grads, state, params, jnp.float32(loss))
        out.append((updates, np.asarray(state.mixing), np.asarray(state.rates)))
    return out


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("num_updates", [1, 4])
def test_update_matches_an_independent_numpy_implementation(impl, num_updates):
    lopt = _reference_lopt(impl=impl)
    meta_params = perturbed_meta_params(lopt, jax.random.key(3), scale=0.1)
    num_steps = 6
    params_seq = [random_tree(100 + i, SMALL) for i in range(num_updates)]
    grads_seq = [random_tree(200 + i, SMALL, scale=10.0 ** (i - 2)) for i in range(num_updates)]
    losses = [2.0, 1.5, 1.7, 0.9][:num_updates]
    got = _run_jax(lopt, meta_params, num_steps, params_seq, grads_seq, losses)

    ref = NumpyL3RS(lopt, meta_params, num_steps, SMALL)
    for t, (params, grads, loss) in enumerate(zip(params_seq, grads_seq, losses, strict=True)):
        want, mixing, rates = ref.step(grads, params, loss)
        assert np.std(rates) > 1e-2 * np.mean(rates)  # the rates really differ per layer
        assert np.min(mixing) > 1e-3  # every direction contributes visibly
        updates, got_mixing, got_rates = got[t]
        np.testing.assert_allclose(got_mixing, mixing, rtol=1e-4, atol=1e-7, err_msg=f"mixing, step {t}")
        np.testing.assert_allclose(got_rates, rates, rtol=1e-4, err_msg=f"rates, step {t}")
        for name, shape in SMALL.items():
            assert updates[name].shape == shape and updates[name].dtype == jnp.float32
            atol = 1e-5 * np.max(np.abs(want[name]))
            np.testing.assert_allclose(updates[name], want[name], rtol=2e-4, atol=atol, err_msg=f"{name} step {t}")


# ----------------------------------------------------------------------------- properties of the rule


def test_mixing_weights_are_positive_and_sum_to_one_per_layer():
    lopt = L3RS(num_layers=len(SHAPES))
    meta_params = perturbed_meta_params(lopt, jax.random.key(5))  # away from μ⁰
    opt = lopt.make(meta_params, num_steps=10)
    state = opt.init(random_tree(0))
    for t in range(3):
        _, state = opt.update(random_tree(10 + t), state, random_tree(20 + t), loss=jnp.float32(1.0 + t))
        mixing = np.asarray(state.mixing, np.float64)
        assert np.all(mixing >= 0)  # a softmax (entries may underflow to 0, never below)
        np.testing.assert_allclose(mixing.sum(axis=1), 1.0, rtol=1e-6)
        assert np.max(np.abs(mixing - np.asarray(lopt.initial_mixing))) > 0.05  # the MLP moved them


def test_step_rms_is_at_most_the_layer_rate():
    """Σ_p μ_p = 1 and RMS(d̂) = 1, so RMS(Δθ_l) ≤ λ_l by the triangle inequality."""
    lopt = L3RS(num_layers=len(SHAPES))
    opt = lopt.make(perturbed_meta_params(lopt, jax.random.key(6)), num_steps=10)
    params = random_tree(0)
    state = opt.init(params)
    for t in range(3):
        updates, state = opt.update(random_tree(30 + t), state, params, loss=jnp.float32(1.0))
        for layer, name in enumerate(SHAPES):
            rms = float(jnp.sqrt(jnp.mean(jnp.square(updates[name]))))
            assert 0 < rms <= float(state.rates[layer]) * (1 + 1e-5), (name, t)


@pytest.mark.parametrize("c", [1e-4, 0.3, 7.0, 1e5])
def test_scaling_a_base_direction_leaves_the_step_unchanged(monkeypatch, c):
    """A direction ``c·g`` gives the same step as ``g``: directions are normalised (c > 0)."""
    scaled = Direction(0, lambda lopt, g, buffers, count: (c * g, buffers))
    monkeypatch.setitem(l3rs_parts.DIRECTIONS, "scaled_sgd", scaled)
    plain = L3RS(num_layers=len(SHAPES), base_directions=("sgd", "adam"), initial_mixing=(0.5, 0.5))
    other = dataclasses.replace(plain, base_directions=("scaled_sgd", "adam"))
    meta_params = perturbed_meta_params(plain, jax.random.key(7))
    params_seq = [random_tree(40 + i) for i in range(3)]
    grads_seq = [random_tree(50 + i) for i in range(3)]
    losses = [1.0, 0.8, 0.7]
    want = _run_jax(plain, meta_params, 10, params_seq, grads_seq, losses)
    got = _run_jax(other, meta_params, 10, params_seq, grads_seq, losses)
    for t in range(3):
        for name in SHAPES:
            np.testing.assert_allclose(got[t][0][name], want[t][0][name], rtol=2e-5, atol=1e-9, err_msg=name)
    # without the normalisation the raw sgd direction would dominate (c = 1e5) or vanish (c = 1e-4)
    raw = {name: np.asarray(g, np.float64) for name, g in grads_seq[0].items()}
    assert not np.allclose(c * raw["c_kernel"], raw["c_kernel"])


def test_the_rate_scales_the_step_and_leaves_the_mixing_alone():
    lopt = L3RS(num_layers=len(SHAPES))
    meta_params = perturbed_meta_params(lopt, jax.random.key(8))
    params_seq = [random_tree(60 + i) for i in range(3)]
    grads_seq = [random_tree(70 + i) for i in range(3)]
    losses = [1.0, 0.9, 0.8]
    base = _run_jax(lopt, meta_params, 10, params_seq, grads_seq, losses)
    for s in (0.1, 5.0):
        shifted = dict(meta_params, log_rate=meta_params["log_rate"] + np.float32(np.log(s)))
        got = _run_jax(lopt, shifted, 10, params_seq, grads_seq, losses)
        for t in range(3):
            np.testing.assert_allclose(got[t][1], base[t][1], rtol=1e-6)  # μ unchanged
            np.testing.assert_allclose(got[t][2], s * base[t][2], rtol=1e-5)  # λ scaled
            for name in SHAPES:
                np.testing.assert_allclose(got[t][0][name], s * np.asarray(base[t][0][name]), rtol=1e-5, atol=1e-12)


def test_a_layer_with_zero_gradient_gets_a_zero_step_and_finite_meta_gradients():
    lopt = L3RS(num_layers=2)
    params = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}
    grads = {"a": jnp.zeros(3), "b": jnp.full((2, 2), 0.5)}

    def first_update(meta_params):
        opt = lopt.make(meta_params, num_steps=10)
        updates, _ = opt.update(grads, opt.init(params), params, loss=jnp.float32(1.0))
        return updates

    meta_params = lopt.init_meta_params(jax.random.key(0))
    updates = first_update(meta_params)
    np.testing.assert_array_equal(updates["a"], 0.0)
    assert np.all(np.asarray(updates["b"]) < 0)
    meta_grads = jax.grad(lambda th: jnp.sum(first_update(th)["b"]))(meta_params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(meta_grads))


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
    assert np.all(grads["mlp"]["b2"] != 0)  # every mixing logit and the rate output
    assert grads["log_rate"][0] < 0  # a larger step lowers the loss early on


# ----------------------------------------------------------------------------- fresh optimizer


def test_fresh_l3rs_trains_a_network():
    params, loss_fn = _regression_problem()
    lopt = L3RS(num_layers=4)
    opt = lopt.make(lopt.init_meta_params(jax.random.key(0)), num_steps=300)
    _, state, losses = jax.jit(lambda p: _unroll(opt, p, loss_fn, 300))(params)
    _, _, adam_losses = jax.jit(lambda p: _unroll(optax.adam(1e-3), p, loss_fn, 300))(params)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < 2.0 * adam_losses[-1]  # normalised Adam at 1e-3 is at least in Adam's league
    # μ and λ are still close to their initial values μ⁰ = (0.01, 0.01, 0.97, 0.01), λ₀ = 1e-3
    np.testing.assert_allclose(state.mixing, np.tile(lopt.initial_mixing, (4, 1)), rtol=0.05)
    np.testing.assert_allclose(state.rates, 1e-3, rtol=0.05)
