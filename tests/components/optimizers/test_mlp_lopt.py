"""mlp_lopt (LOLv2): sizes, init, a hand-computed step, the stacked-MLP reference, jit/vmap, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.optimizers import features as F
from components.optimizers.mlp_lopt import MLPLOpt, MomentumAccumulators, mlp_lopt_features
from components.optimizers.per_parameter import PerParameterState

TIMESCALES = np.array([1, 3, 10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5])
LOPT = MLPLOpt()
SHAPES = [(), (7,), (5, 3), (2, 6, 3, 5)]

# ----------------------------------------------------------------------------- NumPy reference
# The reference's formulation (learned_optimization mlp_lopt.py, research/algorithms.md §2.3): the
# decay index as a trailing axis, the 8 channels concatenated and normalised per channel, the step
# features tiled to every element, then a stacked "features @ weights" MLP, all in float64.


def np_mlp(nn, x):
    n_layers = len(nn) // 2
    for layer in range(n_layers):
        x = x @ np.asarray(nn[f"w{layer}"], np.float64) + np.asarray(nn[f"b{layer}"], np.float64)
        if layer < n_layers - 1:
            x = np.maximum(x, 0.0)
    return x


def np_mlp_lopt_step(nn, p, g, m_prev, decays, step, exp_mult=1e-3, step_mult=1e-3):
    """One update of one tensor; ``m_prev`` has the decays on a trailing axis. Returns (Δp, m)."""
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    decays = np.asarray(decays, np.float64)
    m = decays * np.asarray(m_prev, np.float64) + (1.0 - decays) * g[..., None]
    x = np.concatenate([g[..., None], p[..., None], m], axis=-1)
    axes = tuple(range(p.ndim))
    x = x / np.sqrt(1e-5 + np.mean(x**2, axis=axes, keepdims=True))
    t = np.tanh(step / TIMESCALES - 1.0)
    x = np.concatenate([x, np.broadcast_to(t, p.shape + (11,))], axis=-1)
    out = np_mlp(nn, x)
    return -out[..., 0] * np.exp(exp_mult * out[..., 1]) * step_mult, m


def random_meta_params(lopt, key, scale=0.3):
    base = lopt.init_meta_params(jax.random.key(0))
    leaves, treedef = jax.tree.flatten(base)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def random_tree(seed, shapes, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {f"leaf{i}": jnp.asarray(rng.normal(size=s), dtype) for i, s in enumerate(shapes)}


@jax.jit
def _one_update(meta_params, grads, state, params):
    return LOPT.make(meta_params, num_steps=10).update(grads, state, params, loss=jnp.float32(0.0))


# ----------------------------------------------------------------------------- sizes and init


def test_default_sizes_come_from_the_features():
    assert LOPT.num_features == len(jax.eval_shape(LOPT.fresh_channels, jnp.zeros((4, 2))))
    assert LOPT.num_features == 2 + len(LOPT.decays) == 8  # g, p and one momentum per decay
    assert LOPT.num_inputs == LOPT.num_features + len(F.TANH_TIMESCALES) == 19
    assert LOPT.layer_sizes == (19, 32, 32, 2)
    meta_params = LOPT.init_meta_params(jax.random.key(0))
    assert {k: v.shape for k, v in meta_params["nn"].items()} == {
        "w0": (19, 32),
        "b0": (32,),
        "w1": (32, 32),
        "b1": (32,),
        "w2": (32, 2),
        "b2": (2,),
    }
    assert sum(x.size for x in jax.tree.leaves(meta_params)) == 19 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2 == 1762
    assert {x.dtype for x in jax.tree.leaves(meta_params)} == {jnp.dtype(jnp.float32)}


def test_feature_count_follows_the_decays():
    lopt = MLPLOpt(decays=(0.5, 0.9), hidden_size=3, hidden_layers=1)
    assert lopt.num_features == 4
    assert lopt.layer_sizes == (15, 3, 2)


@pytest.mark.parametrize("shape", SHAPES)
def test_feature_shapes_for_every_rank(shape):
    param = jnp.zeros(shape)
    feats = mlp_lopt_features(param, param, F.init_momentum(param, 6))
    assert [f.shape for f in feats] == [shape] * 8


def test_init_follows_haiku_mlp_defaults():
    meta_params = LOPT.init_meta_params(jax.random.key(3))
    for layer, fan_in in enumerate(LOPT.layer_sizes[:-1]):
        w = np.asarray(meta_params["nn"][f"w{layer}"])
        assert np.all(np.abs(w) <= 2.0 / np.sqrt(fan_in) + 1e-7)  # truncated at 2 stddev
        # haiku's TruncatedNormal does not rescale for the truncation: std ≈ 0.88 / sqrt(fan_in)
        assert 0.75 / np.sqrt(fan_in) < np.std(w) < 1.0 / np.sqrt(fan_in)
        assert not np.any(meta_params["nn"][f"b{layer}"])


def test_config_round_trip():
    lopt = MLPLOpt(hidden_size=8, hidden_layers=1, exp_mult=0.01, decays=(0.9, 0.99))
    config = json.loads(json.dumps(lopt.config()))
    assert MLPLOpt(**config) == lopt
    assert MLPLOpt.name == "mlp_lopt"


# ----------------------------------------------------------------------------- errors


def test_invalid_hyperparameters_raise():
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        MLPLOpt(hidden_size=0)
    with pytest.raises(TypeError, match="hidden_layers must be an int"):
        MLPLOpt(hidden_layers=2.5)
    with pytest.raises(ValueError, match=r"decays in \[0, 1\)"):
        MLPLOpt(decays=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"decays in \[0, 1\)"):
        MLPLOpt(decays=())
    with pytest.raises(TypeError, match="decays must be a sequence of floats"):
        MLPLOpt(decays=0.9)
    with pytest.raises(ValueError, match="exp_mult must be a finite float"):
        MLPLOpt(exp_mult=float("nan"))
    with pytest.raises(TypeError, match="step_mult must be a float"):
        MLPLOpt(step_mult="0.001")


def test_make_and_update_reject_bad_arguments():
    meta_params = LOPT.init_meta_params(jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        LOPT.make(meta_params, num_steps=0)
    with pytest.raises(ValueError, match="needs num_steps"):
        LOPT.make(meta_params, num_steps=None)
    with pytest.raises(ValueError, match="must be a dict with an 'nn' entry"):
        LOPT.make({"w0": meta_params["nn"]["w0"]}, num_steps=10)
    small = MLPLOpt(hidden_size=4).init_meta_params(jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected .*'w0': \(19, 32\)"):
        LOPT.make(small, num_steps=10)
    opt = LOPT.make(meta_params, num_steps=10)
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="uses the parameters as a feature"):
        opt.update(params, opt.init(params), None)


# ----------------------------------------------------------------------------- the update


def test_single_step_by_hand():
    """One step on a 2-element tensor with a linear network (no hidden layer), worked out by hand.

    ``p = (1, −2)``, ``g = (0.5, 1.5)``, one decay ``β = 0.5`` and ``t = 0``: the momentum is
    ``m = 0.5·g = (0.25, 0.75)``; the normalised channels are ``ĝ = g/sqrt(1.25 + 1e-5)``,
    ``p̂ = p/sqrt(2.5 + 1e-5)``, ``m̂ = m/sqrt(0.3125 + 1e-5)``; every step feature is
    ``tanh(−1)``. With direction weights (g: 1, p: 0.5, m: −2, bias 0.1) and magnitude weights
    (step features: 0.2 each, bias 3) the outputs are ``d = ĝ + 0.5·p̂ − 2·m̂ + 0.1`` and
    ``s = 3 + 11·0.2·tanh(−1)``, and the update is ``−d·exp(0.001·s)·0.001``.
    """
    lopt = MLPLOpt(hidden_layers=0, decays=(0.5,))
    assert lopt.layer_sizes == (14, 2)
    w0 = np.zeros((14, 2), np.float32)
    w0[0, 0], w0[1, 0], w0[2, 0] = 1.0, 0.5, -2.0
    w0[3:, 1] = 0.2
    meta_params = {"nn": {"w0": jnp.asarray(w0), "b0": jnp.asarray([0.1, 3.0])}}
    p, g = np.array([1.0, -2.0]), np.array([0.5, 1.5])

    opt = lopt.make(meta_params, num_steps=1)
    state = opt.init({"p": jnp.asarray(p, jnp.float32)})
    updates, state = opt.update({"p": jnp.asarray(g, jnp.float32)}, state, {"p": jnp.asarray(p, jnp.float32)})

    g_hat = g / np.sqrt(1.25 + 1e-5)
    p_hat = p / np.sqrt(2.5 + 1e-5)
    m_hat = np.array([0.25, 0.75]) / np.sqrt(0.3125 + 1e-5)
    d = g_hat + 0.5 * p_hat - 2.0 * m_hat + 0.1
    s = 3.0 + 11 * 0.2 * np.tanh(-1.0)
    np.testing.assert_allclose(updates["p"], -d * np.exp(0.001 * s) * 0.001, rtol=1e-5)
    np.testing.assert_allclose(state.accumulators["p"].momentum[0], [0.25, 0.75], rtol=1e-6)
    assert int(state.iteration) == 1


def test_matches_the_stacked_mlp_on_random_states():
    """The implementation equals the reference's stacked ``[g, p, m…, tanh(t)] @ W`` MLP.

    Random meta-parameters, random momentum states and a random step count, on 0-D, 1-D, 2-D and
    4-D tensors; the new momentum must match too.
    """
    rng = np.random.default_rng(0)
    meta_params = random_meta_params(LOPT, jax.random.key(1))
    params, grads = random_tree(1, SHAPES), random_tree(2, SHAPES)
    momentum = {
        k: tuple(jnp.asarray(rng.normal(size=p.shape), jnp.float32) for _ in LOPT.decays) for k, p in params.items()
    }
    state = PerParameterState(
        iteration=jnp.asarray(37, jnp.int32), accumulators={k: MomentumAccumulators(m) for k, m in momentum.items()}
    )
    updates, new_state = _one_update(meta_params, grads, state, params)

    nn = {k: np.asarray(v) for k, v in meta_params["nn"].items()}
    for name, p in params.items():
        m_prev = np.stack([np.asarray(m) for m in momentum[name]], axis=-1)
        want, want_m = np_mlp_lopt_step(nn, p, grads[name], m_prev, LOPT.decays, step=37)
        got = updates[name]
        assert got.shape == p.shape and got.dtype == p.dtype and np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.max(np.abs(want)), err_msg=name)
        np.testing.assert_allclose(np.stack(new_state.accumulators[name].momentum, -1), want_m, rtol=1e-5, atol=1e-7)
    assert int(new_state.iteration) == 38


def test_three_steps_match_numpy():
    meta_params = random_meta_params(LOPT, jax.random.key(2))
    params = random_tree(3, [(4, 3)])
    state = LOPT.make(meta_params, num_steps=10).init(params)
    m = np.zeros((4, 3, 6))
    nn = {k: np.asarray(v) for k, v in meta_params["nn"].items()}
    for step in range(3):
        grads = random_tree(10 + step, [(4, 3)])
        updates, state = _one_update(meta_params, grads, state, params)
        want, m = np_mlp_lopt_step(nn, params["leaf0"], grads["leaf0"], m, LOPT.decays, step=step)
        np.testing.assert_allclose(updates["leaf0"], want, rtol=1e-4, atol=1e-4 * np.max(np.abs(want)))


def test_jit_vmap_dtypes_and_no_recompilation():
    """vmap over perturbed meta-params and over params, a traced ``num_steps``, bfloat16 leaves.

    (0-D/1-D/2-D/4-D float32 leaves under jit: test_matches_the_stacked_mlp_on_random_states.)
    """
    base = LOPT.init_meta_params(jax.random.key(0))
    eps = jax.tree.map(lambda x: 0.1 * jax.random.normal(jax.random.key(x.size), x.shape), base)
    batch = jax.tree.map(lambda b, e: jnp.stack([b + e, b - e]), base, eps)
    params = {**random_tree(4, [(), (5, 3)]), "half": jnp.ones((3, 2), jnp.bfloat16)}
    grads = {**random_tree(5, [(), (5, 3)]), "half": jnp.full((3, 2), 0.5, jnp.bfloat16)}
    state = PerParameterState(
        iteration=jnp.asarray(3, jnp.int32),
        accumulators=jax.tree.map(
            lambda p: MomentumAccumulators(tuple(jnp.full(p.shape, 0.1, jnp.float32) for _ in LOPT.decays)), params
        ),
    )
    traces = []

    def one_step(meta_params, params, grads, state, num_steps):
        traces.append(1)
        opt = LOPT.make(meta_params, num_steps=num_steps)
        return opt.update(grads, state, params, loss=jnp.float32(1.0), loss_fn=None)

    step = jax.jit(one_step)
    batched, _ = jax.jit(jax.vmap(one_step, in_axes=(0, None, None, None, None)))(
        batch, params, grads, state, jnp.int32(50)
    )
    for i in range(2):
        one, new_state = step(jax.tree.map(lambda x, i=i: x[i], batch), params, grads, state, jnp.int32(50))
        for name, p in params.items():
            got, want = np.asarray(batched[name][i], np.float32), np.asarray(one[name], np.float32)
            assert one[name].shape == p.shape and one[name].dtype == p.dtype
            assert np.all(np.isfinite(want))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))
    assert not np.allclose(batched["leaf1"][0], batched["leaf1"][1])  # θ ± ε give different updates
    same = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype), state, new_state)
    assert all(jax.tree.leaves(same))  # the state's dtypes never change (bfloat16 leaf included)
    assert init_state_matches(params, new_state)
    n = len(traces)
    step(base, params, grads, new_state, jnp.int32(7))  # the returned state, new values: no retrace
    assert len(traces) == n

    two = jax.tree.map(lambda x: jnp.stack([x, -x]), params)
    two_grads = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), grads)
    two_states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    out = jax.jit(jax.vmap(one_step, in_axes=(None, 0, 0, 0, None)))(base, two, two_grads, two_states, jnp.int32(7))
    second = step(base, jax.tree.map(lambda x: -x, params), jax.tree.map(lambda x: 2 * x, grads), state, jnp.int32(7))
    want = np.asarray(second[0]["leaf1"])
    np.testing.assert_allclose(out[0]["leaf1"][1], want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))


def init_state_matches(params, state):
    """``init`` builds the same structure, shapes and dtypes as ``update`` returns."""
    fresh = LOPT.make(LOPT.init_meta_params(jax.random.key(0)), num_steps=1).init(params)
    same = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype), fresh, state)
    return jax.tree.structure(fresh) == jax.tree.structure(state) and all(jax.tree.leaves(same))
