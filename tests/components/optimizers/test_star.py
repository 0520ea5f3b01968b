"""STAR: sizes, the update against hand and NumPy derivations, meta penalty, Theorem 1, stability."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import features as F
from components.optimizers.per_parameter import PerParameterState
from components.optimizers.small_fc_lopt import SmallFcLOpt, small_fc_features
from components.optimizers.star import NOMINAL_ESTIMATORS, STAR, theorem1_conditions

TIMESCALES = np.array([1, 3, 10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5])
LOPT = STAR()
SHAPES = [(), (7,), (5, 3), (2, 6, 3, 5)]


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


def random_state(lopt, params, seed):
    """A STAR state with random accumulators (positive second moments) and step count 37."""
    rng = np.random.default_rng(seed)
    base = lopt.make(lopt.init_meta_params(jax.random.key(0)), num_steps=1).init(params)

    def fill(x, positive):
        values = rng.uniform(0.01, 2.0, x.shape) if positive else rng.normal(size=x.shape)
        return jnp.asarray(values, x.dtype)

    accumulators = {
        k: F.Accumulators(
            momentum=jax.tree.map(lambda x: fill(x, False), a.momentum),
            rms=jax.tree.map(lambda x: fill(x, True), a.rms),
            factored=jax.tree.map(lambda x: fill(x, True), a.factored),
        )
        for k, a in base.accumulators.items()
    }
    return PerParameterState(iteration=jnp.asarray(37, jnp.int32), accumulators=accumulators)


# ----------------------------------------------------------------------------- NumPy head / MLP
# The reference's formulation (adafac_nominal.py with concat_weights=True): normalised channels
# concatenated with the tiled step features, a stacked "features @ weights" MLP, then the update.


def np_mlp(nn, x):
    n_layers = len(nn) // 2
    for layer in range(n_layers):
        x = x @ np.asarray(nn[f"w{layer}"], np.float64) + np.asarray(nn[f"b{layer}"], np.float64)
        if layer < n_layers - 1:
            x = np.maximum(x, 0.0)
    return x


def np_star_update(cfg, nn, feats, p, g, m, v, step):
    """Δp from stacked features ``[*shape, C]`` and accumulators ``m [*shape, k]``, ``v [*shape, j]``."""
    axes = tuple(range(p.ndim))
    x = feats / np.sqrt(1e-5 + np.mean(feats**2, axis=axes, keepdims=True))
    t = np.tanh(step / TIMESCALES - 1.0)
    out = np_mlp(nn, np.concatenate([x, np.broadcast_to(t, p.shape + (11,))], axis=-1))
    d, s_b, s_g, s_r = out[..., 0], out[..., 1], out[..., 2], out[..., 3]
    s_g = s_g if cfg.nominal_controller else np.ones_like(d)
    s_r = s_r if cfg.regularization_controller else np.zeros_like(d)
    s_b = np.mean(s_b) if cfg.aggregate_magnitude else s_b
    s_g = np.mean(s_g) if cfg.aggregate_nominal_magnitude else s_g
    s_r = np.mean(s_r) if cfg.aggregate_regularization_magnitude else s_r
    rsqrt = 1.0 / np.sqrt(v + 1e-6)
    blackbox = cfg.step_mult * d * np.exp(cfg.exp_mult[0] * s_b)
    if cfg.normalize_blackbox:
        blackbox = blackbox * rsqrt[..., 0]
    adam = m * rsqrt  # broadcasts one RMS decay against the momenta
    g_hat = {
        "SGD": g,
        "SGDM": m[..., -1],
        "AggMo": m.mean(-1),
        "Adam": adam[..., -1],
        "AdamAggMo": adam.mean(-1),
    }[cfg.nominal_estimator]
    nominal = cfg.nominal_stepsize * np.exp(cfg.exp_mult[1] * s_g) * g_hat
    decay = cfg.weight_decay * np.exp(cfg.exp_mult[2] * s_r) * p
    return -decay - blackbox - nominal


def star_inputs(lopt, meta_params, param, grad, state_leaves):
    """Updated accumulators and stacked un-normalised features of one tensor (library functions)."""
    momentum, rms, factored = state_leaves

    def decays(initial, name):
        return F.param_to_decay(F.decay_to_param(jnp.asarray(initial)) + meta_params[name])

    momentum = F.update_momentum(momentum, grad, decays(lopt.initial_momentum_decays, "momentum_decays"))
    rms = F.update_rms(rms, grad, decays(lopt.initial_rms_decays, "rms_decays"))
    factored, fac_g = F.update_factored(factored, grad, decays(lopt.initial_adafactor_decays, "adafactor_decays"))
    feats = small_fc_features(param, grad, momentum, rms, fac_g, factored)
    stacked = np.stack([np.broadcast_to(np.asarray(f, np.float64), param.shape) for f in feats], axis=-1)
    as_np = [np.stack([np.asarray(x, np.float64) for x in acc], axis=-1) for acc in (momentum, rms)]
    return stacked, *as_np


@jax.jit
def _one_update(meta_params, grads, state, params):
    return LOPT.make(meta_params, num_steps=10).update(grads, state, params, loss=jnp.float32(0.0))


# ----------------------------------------------------------------------------- sizes and config


def test_sizes_come_from_the_small_fc_features():
    assert LOPT.num_features == SmallFcLOpt().num_features  # the same 28 channels (traced, not a literal)
    assert LOPT.num_inputs == LOPT.num_features + len(F.TANH_TIMESCALES)
    assert LOPT.layer_sizes == (LOPT.num_inputs, 4, 4, 4)
    meta_params = LOPT.init_meta_params(jax.random.key(0))
    n_mlp = sum(x.size for x in jax.tree.leaves(meta_params["nn"]))
    assert n_mlp == 39 * 4 + 4 + 4 * 4 + 4 + 4 * 4 + 4 == 200  # small_fc_lopt's 190 + 2 extra heads
    assert sum(x.size for x in jax.tree.leaves(meta_params)) == 207
    assert STAR(initial_momentum_decays=(0.5, 0.9), initial_adafactor_decays=(0.9, 0.99)).num_features == (
        SmallFcLOpt(initial_momentum_decays=(0.5, 0.9), initial_adafactor_decays=(0.9, 0.99)).num_features
    )


def test_init_follows_the_reference_scheme():
    meta_params = LOPT.init_meta_params(jax.random.key(3))
    for layer, fan_in in enumerate(LOPT.layer_sizes[:-1]):
        w = np.asarray(meta_params["nn"][f"w{layer}"])
        assert np.all(np.abs(w) <= 2.0 / np.sqrt(fan_in) + 1e-7)
        assert not np.any(meta_params["nn"][f"b{layer}"])
    for name in ("momentum_decays", "rms_decays", "adafactor_decays"):
        assert not np.any(meta_params[name])


def test_defaults_are_the_star_configuration_and_config_round_trips():
    assert (LOPT.nominal_stepsize, LOPT.step_mult, LOPT.exp_mult) == (1e-3, 1e-3, (1e-3, 1e-3, 1e-3))
    assert LOPT.normalize_blackbox and LOPT.nominal_controller and LOPT.nominal_estimator == "AdamAggMo"
    assert LOPT.meta_weight_decay in (0.1, 0.5, 1.0) and LOPT.weight_decay == 0.0
    lopt = STAR(exp_mult=[0.01, 0.02, 0.03], nominal_estimator="Adam", weight_decay=1e-4, aggregate_magnitude=True)
    config = json.loads(json.dumps(lopt.config()))
    assert STAR(**config) == lopt
    assert lopt.exp_mult == (0.01, 0.02, 0.03)
    assert STAR.name == "star"


def test_invalid_hyperparameters_raise():
    with pytest.raises(ValueError, match=r"nominal_estimator must be one of \['SGD', 'SGDM', 'AggMo', 'Adam'"):
        STAR(nominal_estimator="adam")
    with pytest.raises(ValueError, match="exp_mult must be 3 floats"):
        STAR(exp_mult=(0.001, 0.001))
    with pytest.raises(ValueError, match="exp_mult must be 3 floats"):
        STAR(exp_mult=0.001)
    with pytest.raises(ValueError, match="nominal_stepsize must be a finite float >= 0"):
        STAR(nominal_stepsize=-1e-3)
    with pytest.raises(ValueError, match="meta_weight_decay must be a finite float >= 0"):
        STAR(meta_weight_decay=float("inf"))
    with pytest.raises(TypeError, match="normalize_blackbox must be a bool"):
        STAR(normalize_blackbox=1)
    with pytest.raises(ValueError, match="numbers of decays must be equal or one of them 1"):
        STAR(initial_momentum_decays=(0.9, 0.99), initial_rms_decays=(0.9, 0.99, 0.999))
    with pytest.raises(ValueError, match=r"decays in \[0, 1\)"):
        STAR(initial_adafactor_decays=(0.9, 1.2))
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        STAR(hidden_size=0)


def test_make_and_update_reject_bad_arguments():
    meta_params = LOPT.init_meta_params(jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        LOPT.make(meta_params, num_steps=0)
    with pytest.raises(ValueError, match="needs num_steps"):
        LOPT.make(meta_params, num_steps=None)
    with pytest.raises(ValueError, match=r"lacks \['rms_decays'\]"):
        LOPT.make({k: v for k, v in meta_params.items() if k != "rms_decays"}, num_steps=10)
    two_heads = SmallFcLOpt().init_meta_params(jax.random.key(0))  # a small_fc_lopt checkpoint
    with pytest.raises(ValueError, match=r"expected .*'w2': \(4, 4\)"):
        LOPT.make(two_heads, num_steps=10)
    opt = LOPT.make(meta_params, num_steps=10)
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="uses the parameters as a feature"):
        opt.update(params, opt.init(params), None)


# ----------------------------------------------------------------------------- meta penalty


def test_meta_penalty_is_half_lambda_sum_of_squared_mlp_weights():
    meta_params = random_meta_params(LOPT, jax.random.key(4))
    squares = sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in meta_params["nn"].values())
    np.testing.assert_allclose(LOPT.meta_penalty(meta_params), 0.5 * LOPT.meta_weight_decay * squares, rtol=1e-5)
    grads = jax.grad(LOPT.meta_penalty)(meta_params)
    for name, w in meta_params["nn"].items():
        np.testing.assert_allclose(grads["nn"][name], LOPT.meta_weight_decay * w, rtol=1e-6)
    for name in ("momentum_decays", "rms_decays", "adafactor_decays"):  # decay offsets are not penalised
        assert not np.any(grads[name])
    assert float(STAR(meta_weight_decay=0.0).meta_penalty(meta_params)) == 0.0
    with pytest.raises(ValueError, match="needs meta_params with an 'nn' entry"):
        LOPT.meta_penalty({"w0": jnp.ones(3)})


# ----------------------------------------------------------------------------- Theorem 1


def test_theorem1_conditions_against_the_spectral_radius():
    rng = np.random.default_rng(0)
    h = np.array([0.5, 1.0, 4.0])
    # commuting (diagonal) case: A = I − (αI + P)H is diagonal
    for p, alpha, stable in [
        ([0.1, 0.2, 0.3], 0.1, True),  # 0 <= α + p <= 2/4
        ([-0.05, 0.2, 0.3], 0.1, True),  # an ascent direction covered by the nominal term
        ([-0.05, 0.2, 0.3], 0.0, False),  # ... and without it: ρ > 1
        ([0.1, 0.2, 0.45], 0.1, False),  # λ_max(P) > 2/λ_max(H) − α
    ]:
        check = theorem1_conditions(p, alpha, h)
        rho = np.max(np.abs(1.0 - (alpha + np.sort(p)) * np.sort(h)))  # largest p meets largest h
        assert check.stable == stable == (rho <= 1.0 + 1e-12), (p, alpha, check, rho)
    check = theorem1_conditions([-0.05, 0.2, 0.3], 0.1, h)
    np.testing.assert_allclose([check.ascent_margin, check.step_margin], [0.05, 0.5 - 0.1 - 0.3])
    # non-commuting case: SPD H and diagonalisable P with real eigenvalues satisfying the conditions
    for _ in range(20):
        q = np.linalg.qr(rng.normal(size=(4, 4)))[0]
        big_h = q @ np.diag(rng.uniform(0.1, 3.0, 4)) @ q.T
        alpha = rng.uniform(0.0, 0.2)
        p_eigs = rng.uniform(-alpha, 2.0 / np.linalg.eigvalsh(big_h).max() - alpha, 4)
        big_p = np.diag(p_eigs)
        assert theorem1_conditions(p_eigs, alpha, np.linalg.eigvalsh(big_h)).stable
        a = np.eye(4) - (alpha * np.eye(4) + big_p) @ big_h
        assert np.max(np.abs(np.linalg.eigvals(a))) <= 1.0 + 1e-9
    with pytest.raises(ValueError, match="H must be positive definite"):
        theorem1_conditions([0.1], 0.0, [1.0, -1.0])
    with pytest.raises(ValueError, match="non-empty, finite eigenvalues"):
        theorem1_conditions([], 0.0, [1.0])
    with pytest.raises(ValueError, match="alpha must be a finite scalar"):
        theorem1_conditions([0.1], [0.1, 0.2], [1.0])


# ----------------------------------------------------------------------------- the update


def test_single_step_by_hand():
    """One step on a 2-element tensor with a linear network (no hidden layer), worked out by hand.

    ``p = (1, −2)``, ``g = (0.5, 1.5)``, ``t = 0``, all decay offsets 0. After the first update
    the momenta are ``m_k = (1−β_k)·g`` for ``β = (0.9, 0.99, 0.999)`` and the RMS is
    ``v = 0.001·g²``. The network reads only the normalised gradient channel
    ``ĝ = g / sqrt(mean(g²) + 1e-5) = g / sqrt(1.25 + 1e-5)``: direction ``d = ĝ + 0.1``,
    magnitudes from the biases ``s_b = 2``, ``s_g = 3``, ``s_r = −1``. Then

    * black box: ``1e-3 · d · e^{0.002} / sqrt(0.001·g² + 1e-6)``
    * nominal (AdamAggMo): ``1e-3 · e^{0.003} · mean_k(1−β_k) · g / sqrt(0.001·g² + 1e-6)``
    * weight decay (wd = 0.01): ``0.01 · e^{−0.001} · p``

    and ``Δp`` is minus their sum.
    """
    lopt = STAR(hidden_layers=0, weight_decay=0.01, regularization_controller=True)
    w0 = np.zeros(lopt.layer_sizes, np.float32)
    w0[0, 0] = 1.0  # channel 0 is g
    meta_params = lopt.init_meta_params(jax.random.key(0))
    meta_params["nn"] = {"w0": jnp.asarray(w0), "b0": jnp.asarray([0.1, 2.0, 3.0, -1.0])}
    p, g = np.array([1.0, -2.0]), np.array([0.5, 1.5])
    opt = lopt.make(meta_params, num_steps=1)
    params = {"p": jnp.asarray(p, jnp.float32)}
    updates, state = opt.update({"p": jnp.asarray(g, jnp.float32)}, opt.init(params), params)

    rsqrt_v = 1.0 / np.sqrt(0.001 * g**2 + 1e-6)
    blackbox = 1e-3 * (g / np.sqrt(1.25 + 1e-5) + 0.1) * np.exp(0.002) * rsqrt_v
    nominal = 1e-3 * np.exp(0.003) * np.mean([0.1, 0.01, 0.001]) * g * rsqrt_v
    decay = 0.01 * np.exp(-0.001) * p
    np.testing.assert_allclose(updates["p"], -(blackbox + nominal + decay), rtol=2e-5)
    np.testing.assert_allclose(state.accumulators["p"].rms[0], 0.001 * g**2, rtol=1e-4)  # 1 − β in float32
    assert int(state.iteration) == 1


def test_matches_the_stacked_mlp_on_random_states():
    """The elementwise network equals the stacked ``[features, tanh(t)] @ W`` MLP on random states.

    Random meta-parameters (decay offsets included), random accumulators and step 37, on 0-D, 1-D,
    2-D and 4-D tensors with the default configuration. The features come from the library
    (checked against NumPy in test_small_fc_lopt.py); the MLP and the update head are NumPy.
    """
    meta_params = random_meta_params(LOPT, jax.random.key(1))
    params, grads = random_tree(1, SHAPES), random_tree(2, SHAPES)
    state = random_state(LOPT, params, seed=3)
    updates, new_state = _one_update(meta_params, grads, state, params)
    nn = {k: np.asarray(v) for k, v in meta_params["nn"].items()}
    for name, p in params.items():
        leaves = (state.accumulators[name].momentum, state.accumulators[name].rms, state.accumulators[name].factored)
        feats, m, v = star_inputs(LOPT, meta_params, p, grads[name], leaves)
        want = np_star_update(LOPT, nn, feats, np.asarray(p), np.asarray(grads[name]), m, v, step=37)
        got = updates[name]
        assert got.shape == p.shape and got.dtype == p.dtype and np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.max(np.abs(want)), err_msg=name)
        np.testing.assert_allclose(np.stack(new_state.accumulators[name].rms, -1), v, rtol=1e-5)
    assert int(new_state.iteration) == 38


@pytest.mark.parametrize("estimator", NOMINAL_ESTIMATORS)
def test_every_option_matches_the_stacked_mlp(estimator):
    """Each nominal estimator, with the aggregation flags, both controllers and weight decay toggled.

    Run eagerly (no jit): one compile per option would cost more than the op-by-op dispatch.
    """
    flip = estimator in ("SGD", "AggMo")  # half of the cases flip every boolean option
    lopt = STAR(
        nominal_estimator=estimator,
        normalize_blackbox=not flip,
        nominal_controller=not flip,
        regularization_controller=flip,
        weight_decay=0.05 if flip else 0.0,
        aggregate_magnitude=flip,
        aggregate_nominal_magnitude=flip,
        aggregate_regularization_magnitude=flip,
        step_mult=0.01,
        exp_mult=(0.1, 0.2, 0.3),
    )
    meta_params = random_meta_params(lopt, jax.random.key(5))
    params, grads = random_tree(6, [(5, 3), ()]), random_tree(7, [(5, 3), ()])
    state = random_state(lopt, params, seed=8)
    updates, _ = lopt.make(meta_params, num_steps=10).update(grads, state, params)
    nn = {k: np.asarray(v) for k, v in meta_params["nn"].items()}
    for name, p in params.items():
        leaves = (state.accumulators[name].momentum, state.accumulators[name].rms, state.accumulators[name].factored)
        feats, m, v = star_inputs(lopt, meta_params, p, grads[name], leaves)
        want = np_star_update(lopt, nn, feats, np.asarray(p), np.asarray(grads[name]), m, v, step=37)
        np.testing.assert_allclose(updates[name], want, rtol=1e-4, atol=1e-4 * np.max(np.abs(want)), err_msg=name)


def test_zero_nominal_stepsize_removes_the_nominal_term():
    meta_params = random_meta_params(LOPT, jax.random.key(2))
    params, grads = random_tree(3, [(4, 3)]), random_tree(4, [(4, 3)])
    state = random_state(LOPT, params, seed=5)

    def update(lopt):
        return lopt.make(meta_params, num_steps=10).update(grads, state, params)[0]["leaf0"]

    total = update(LOPT)
    blackbox = update(dataclasses.replace(LOPT, nominal_stepsize=0.0))
    nominal = update(dataclasses.replace(LOPT, step_mult=0.0))
    np.testing.assert_allclose(total, blackbox + nominal, rtol=1e-5, atol=1e-9)
    assert np.all(np.abs(blackbox) > 0) and np.all(np.abs(nominal) > 0)


def test_jit_vmap_dtypes_and_no_recompilation():
    """vmap over meta-params and params together (as PES does), traced ``num_steps``, bfloat16 leaves.

    (0-D/1-D/2-D/4-D float32 leaves under jit: test_matches_the_stacked_mlp_on_random_states.)
    """
    base = LOPT.init_meta_params(jax.random.key(0))
    eps = jax.tree.map(lambda x: 0.1 * jax.random.normal(jax.random.key(x.size), x.shape), base)
    thetas = jax.tree.map(lambda b, e: jnp.stack([b + e, b - e]), base, eps)
    params = {**random_tree(4, [(), (5, 3)]), "half": jnp.ones((3, 2), jnp.bfloat16)}
    grads = {**random_tree(5, [(), (5, 3)]), "half": jnp.full((3, 2), 0.5, jnp.bfloat16)}
    state = random_state(LOPT, params, seed=6)
    traces = []

    def one_step(meta_params, params, grads, state, num_steps):
        traces.append(1)
        opt = LOPT.make(meta_params, num_steps=num_steps)
        return opt.update(grads, state, params, loss=jnp.float32(1.0), loss_fn=None)

    step = jax.jit(one_step)
    # batch element i: θ ± ε, params (−1)^i·p, grads (i+1)·g, the same state
    two_params = jax.tree.map(lambda x: jnp.stack([x, -x]), params)
    two_grads = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), grads)
    two_states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    batched, _ = jax.jit(jax.vmap(one_step, in_axes=(0, 0, 0, 0, None)))(
        thetas, two_params, two_grads, two_states, jnp.int32(50)
    )
    for i in range(2):
        pick = lambda tree, i=i: jax.tree.map(lambda x: x[i], tree)  # noqa: E731
        one, new_state = step(pick(thetas), pick(two_params), pick(two_grads), state, jnp.int32(50))
        for name, p in params.items():
            got, want = np.asarray(batched[name][i], np.float32), np.asarray(one[name], np.float32)
            assert one[name].shape == p.shape and one[name].dtype == p.dtype
            assert np.all(np.isfinite(want))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))
    same = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype), state, new_state)
    assert all(jax.tree.leaves(same))  # the state's dtypes never change (bfloat16 leaf included)
    n = len(traces)
    step(base, params, grads, new_state, jnp.int32(7))  # the returned state, new values: no retrace
    assert len(traces) == n
    # the perturbation alone changes the update: θ + ε vs θ − ε on the same inputs
    minus = step(jax.tree.map(lambda x: x[1], thetas), params, grads, state, jnp.int32(50))[0]
    assert not np.allclose(batched["leaf1"][0], minus["leaf1"])


# ----------------------------------------------------------------------------- noisy quadratic (§4.1)

NQM_DIM = 32
NQM_H = np.logspace(-1.0, 1.0, NQM_DIM)  # eigenvalues of the (diagonal) Hessian
NQM_SIGMA = 1.0  # ξ_t ~ N(0, σ²·I)


def nqm_step(opt, phi, state, key, t):
    """One step on ``ℓ_t(φ) = ½(φ−ξ_t)ᵀH(φ−ξ_t)``; returns (update, state, gradient)."""
    h = jnp.asarray(NQM_H, jnp.float32)
    xi = NQM_SIGMA * jax.random.normal(jax.random.fold_in(key, t), (NQM_DIM,))
    grad = h * (phi - xi)
    loss = 0.5 * jnp.sum(h * (phi - xi) ** 2)
    updates, state = opt.update({"phi": grad}, state, {"phi": phi}, loss=loss)
    return updates["phi"], state, grad


def nqm_excess_loss(phi):
    """``E_ξ ℓ(φ) − ½tr(HΣ) = ½φᵀHφ``."""
    return 0.5 * jnp.sum(jnp.asarray(NQM_H, jnp.float32) * phi**2)


def nqm_meta_train(lopt, meta_params, *, outer_steps, horizon, learning_rate, with_penalty):
    """Brief meta-training by backpropagation through ``horizon`` inner steps from ``φ_0 = 1``.

    Meta-objective: ``log mean_t ½φ_tᵀHφ_t`` over the unroll (one fresh noise key per outer step),
    plus :meth:`STAR.meta_penalty` when ``with_penalty``; Adam on θ.
    """
    outer = optax.adam(learning_rate)

    def meta_loss(theta, key):
        opt = lopt.make(theta, num_steps=horizon)

        def body(carry, t):
            phi, state = carry
            update, state, _ = nqm_step(opt, phi, state, key, t)
            return (phi + update, state), nqm_excess_loss(phi)

        phi0 = jnp.ones(NQM_DIM, jnp.float32)
        _, excess = jax.lax.scan(body, (phi0, opt.init({"phi": phi0})), jnp.arange(horizon))
        objective = jnp.log(jnp.mean(excess))
        return objective + lopt.meta_penalty(theta) if with_penalty else objective

    @jax.jit
    def outer_step(theta, outer_state, key):
        grads = jax.grad(meta_loss)(theta, key)
        updates, outer_state = outer.update(grads, outer_state, theta)
        return optax.apply_updates(theta, updates), outer_state

    outer_state = outer.init(meta_params)
    for key in jax.random.split(jax.random.key(100), outer_steps):
        meta_params, outer_state = outer_step(meta_params, outer_state, key)
    return meta_params


def nqm_long_run(lopt, meta_params, *, num_steps, key, delta):
    """Runs ``lopt`` from ``φ_0 = 1`` and from ``φ_0 + δ`` on the same noise (twin trajectories).

    Returns per step: the excess loss, gradient and update of the first trajectory, the update the
    same network gives without its nominal term (same state), and ``‖φ'_t − φ_t‖``.
    """
    opt = lopt.make(meta_params, num_steps=num_steps)
    blackbox = dataclasses.replace(lopt, nominal_stepsize=0.0).make(meta_params, num_steps=num_steps)
    phi0 = jnp.ones(NQM_DIM, jnp.float32)
    phis = jnp.stack([phi0, phi0 + delta])
    states = jax.vmap(lambda phi: opt.init({"phi": phi}))(phis)

    def body(carry, t):
        phis, states = carry
        updates, new_states, grads = jax.vmap(lambda phi, s: nqm_step(opt, phi, s, key, t))(phis, states)
        first = jax.tree.map(lambda x: x[0], states)
        bb_update, _ = blackbox.update({"phi": grads[0]}, first, {"phi": phis[0]})
        out = (nqm_excess_loss(phis[0]), grads[0], updates[0], bb_update["phi"], jnp.linalg.norm(phis[1] - phis[0]))
        return (phis + updates, new_states), out

    _, out = jax.jit(lambda phis, states: jax.lax.scan(body, (phis, states), jnp.arange(num_steps)))(phis, states)
    return [np.asarray(x, np.float64) for x in out]


def effective_preconditioner(updates, grads):
    """Per-coordinate least-squares fit of ``Δ_i ≈ −π_i·g_i`` (the diagonal of ``αI + P``)."""
    return -np.sum(updates * grads, axis=0) / np.sum(grads * grads, axis=0)


NQM_STEPS, NQM_WINDOW = 4000, slice(2000, 4000)


def nqm_stability_statistics(seed: int) -> dict:
    """Meta-trains STAR and the bare network from ``init_meta_params(key(seed))``, runs both long.

    Returns, per optimizer (``"star"``, ``"bare"``): the excess-loss curve, the fitted ``π``, the
    black box's ``P``, the nominal share ``α = max(min_i(π_i − P_i), 0)``, ``ρ(A)``, Theorem 1's
    check, the twin-trajectory contraction rate over the first 200 steps, and ``‖θ_nn‖²``.
    """
    theta0 = STAR().init_meta_params(jax.random.key(seed))
    star = STAR()  # nominal term + meta weight decay (λ = 0.1)
    bare = STAR(nominal_stepsize=0.0, meta_weight_decay=0.0)
    meta_training = dict(outer_steps=30, horizon=100, learning_rate=0.03)
    squared_norm = STAR(meta_weight_decay=2.0).meta_penalty  # = ‖θ_nn‖²
    delta = 0.01 * jax.random.normal(jax.random.key(3), (NQM_DIM,)) / np.sqrt(NQM_DIM)
    stats = {"theta0_norm": float(squared_norm(theta0))}
    for name, lopt, with_penalty in [("star", star, True), ("bare", bare, False)]:
        theta = nqm_meta_train(lopt, theta0, with_penalty=with_penalty, **meta_training)
        excess, grads, updates, bb_updates, gap = nqm_long_run(
            lopt, theta, num_steps=NQM_STEPS, key=jax.random.key(7), delta=delta
        )
        pi = effective_preconditioner(updates[NQM_WINDOW], grads[NQM_WINDOW])
        p_bb = effective_preconditioner(bb_updates[NQM_WINDOW], grads[NQM_WINDOW])
        alpha = max(float(np.min(pi - p_bb)), 0.0)
        stats[name] = dict(
            excess=excess,
            pi=pi,
            p_bb=p_bb,
            alpha=alpha,
            rho=float(np.max(np.abs(1.0 - pi * NQM_H))),
            theorem1=theorem1_conditions(pi - alpha, alpha, NQM_H),
            contraction=float((gap[200] / gap[0]) ** (1 / 200)),
            theta_norm=float(squared_norm(theta)),
        )
    return stats


def check_stability_claims(stats: dict) -> None:
    """The assertions of the test below (they held for θ_0 seeds 0, 1 and 2)."""
    star, bare = stats["star"], stats["bare"]
    initial = float(star["excess"][0])
    # the penalty shrank STAR's weights; without it they grew
    assert star["theta_norm"] < stats["theta0_norm"] < bare["theta_norm"]

    # (a) STAR: Theorem 1 holds with margin, mostly supplied by the nominal term; ρ(A) < 1
    check = star["theorem1"]
    assert check.stable and check.ascent_margin > 2e-4 and check.step_margin > 0.05, check
    assert star["alpha"] > 2e-4 and star["alpha"] > 5.0 * max(float(np.min(star["p_bb"])), 0.0)
    assert star["rho"] < 1.0 - 2e-3
    assert star["contraction"] < 0.98  # twin trajectories converge (drift-free estimate of ρ < 1)
    assert np.all(np.isfinite(star["excess"]))
    assert np.max(star["excess"][NQM_WINDOW]) < 0.05 * initial

    # (b) the bare network: (almost) no ascent margin, ρ(A) ≈ 1, and its loss climbs back up
    assert bare["alpha"] == 0.0  # no nominal term
    assert bare["theorem1"].ascent_margin < 0.25 * check.ascent_margin, bare["theorem1"]
    assert bare["rho"] > 1.0 - 1e-3
    excess = bare["excess"]
    best = float(np.min(excess))
    assert best < 0.05 * initial  # it did learn to descend ...
    assert excess[-1] > 2.5 * best and excess[-1] > 1.1 * excess[NQM_WINDOW.start]  # ... then degrades
    assert np.min(excess[NQM_WINDOW]) > 3.0 * np.max(star["excess"][NQM_WINDOW])


def test_star_is_stable_on_the_noisy_quadratic_where_the_unregularised_network_is_not():
    """§4.1: STAR keeps Theorem 1's stability margin on the noisy quadratic; the bare black box does not.

    Construction (deterministic: explicit keys, CPU):

    * Problem: ``ℓ_t(φ) = ½(φ−ξ_t)ᵀH(φ−ξ_t)``, 32 coordinates, ``H = diag(logspace(−1, 1))``,
      ``ξ_t ~ N(0, I)`` drawn with ``fold_in(key, t)``, ``φ_0 = 1`` (initial excess loss 35.9).
    * Both optimizers start from the same random θ_0 and are meta-trained identically: 30 Adam
      steps (lr 0.03) on ``log mean_t ½φ_tᵀHφ_t`` over a 100-step unroll, by backpropagation.
      (a) STAR (nominal AdamAggMo term, ``meta_penalty`` with λ = 0.1 added to the objective);
      (b) the same network with ``nominal_stepsize = 0`` and no penalty (normalize_blackbox kept).
    * Both then run 4000 steps (40× the meta-training horizon) on one fixed noise sequence.

    Statistics, over steps 2000–4000:

    * ``π_i = −Σ_t Δ_i g_i / Σ_t g_i²``: the least-squares diagonal effective preconditioner
      ``αI + P`` (``H`` is diagonal, so the fitted ``A = I − diag(π)H`` is too) and
      ``ρ(A) = max_i |1 − π_i h_i|``. The same fit on the update without the nominal term (same
      state) gives the black box's ``P``, and ``α_i = π_i − P_i`` is the nominal share. Theorem 1
      is checked with the scalar ``α = min_i α_i`` and ``P = diag(π) − αI`` (every split of
      ``diag(π)`` gives the same verdict; this one credits the nominal term with the margin it
      guarantees on every coordinate).
    * Twin trajectories from ``φ_0`` and ``φ_0 + δ`` (‖δ‖ = 0.01) on the same noise: the decay rate
      of ``‖φ'_t − φ_t‖`` over the first 200 steps estimates the spectral radius of the full
      (momentum-carrying) dynamics without the fit's sensitivity to state-independent drift.

    Results for θ_0 seeds 0 / 1 / 2 (seed 0 is the one tested; the assertions hold for all three):

    * STAR: Theorem 1 margins (ascent; step) = 4.4 / 4.3 / 6.0 e-4; 0.15 / 0.13 / 0.13,
      ``ρ(A) = 1 − (4.3 / 4.1 / 5.7)e-3``, nominal share ``min α ≈ 4–6e-4`` vs the black box's own
      ``min P ≈ 2–4e-5``, twins contract by 0.967–0.972 per step, and the excess loss falls from 35.9
      to 0.14 / 0.14 / 0.05 at 4000 steps and stays there (0.10 / 0.06 / 0.02 at 30000).
      ``‖θ_nn‖²`` shrinks from 11.3 / 9.7 / 11.2 to 4.0 / 4.2 / 4.7.
    * Bare network (``‖θ_nn‖²`` grows to 23 / 25 / 26): it learns to descend (best excess ≈ 0.55,
      slower than STAR's 0.58 at step 100) but has no margin: ascent margin −1.2e-3 / +7e-6 / +9e-5
      (seed 2 also violates the step condition, −0.014), ``ρ(A) = 1 + 1.3e-4 / 1 − 7e-5 / 1 − 8e-4``;
      its loss climbs back to 34.8 / 5.8 / 1.6 at 4000 steps and 127 / 7.4 / 2.2 at 30000 (seed 0
      grows about linearly without bound; seeds 1 and 2 keep rising slowly). Twins: 1.0008 / 0.995
      / 0.977 per step.

    So what holds robustly is the margin: STAR satisfies both conditions of Theorem 1 with room to
    spare, supplied by the nominal term, while the bare network sits at ``ρ(A) ≈ 1`` and degrades
    over long horizons. A strict ``ρ(A) > 1`` (and unbounded growth) appears for seed 0 only, and
    even there it exceeds 1 by ~1e-4: the inputs are normalised and the steps bounded, so the
    divergence is a slow uncorrected drift, not the exponential blow-up of the linear model.
    """
    check_stability_claims(nqm_stability_statistics(seed=0))
