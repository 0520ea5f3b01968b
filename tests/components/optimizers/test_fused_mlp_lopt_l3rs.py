"""The ``impl`` forms of mlp_lopt and l3rs: reference == fused on every tensor rank, single_pass semantics
and training outcome, no per-parameter stacks in the fused jaxprs, validation and config round trips.

mlp_lopt's fused forms run at ``hidden_size=8`` here: XLA:CPU cannot compile the fused loop of the
default 32-wide network over tensors of more than a few dozen elements (see the mlp_lopt module
docstring), and the equivalence does not depend on the width.
"""

import dataclasses
import functools
import json

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import features as F
from components.optimizers import fused
from components.optimizers.l3rs import L3RS
from components.optimizers.mlp_lopt import MLPLOpt, mlp_lopt_features

SHAPES = {"a": (), "b": (5,), "c": (6, 4), "d": (3, 4, 5), "e": (2, 3, 4, 5)}  # ranks 0..4, tree order
NUM_STEPS = 3
MLP = MLPLOpt(hidden_size=8)  # 19 -> 8 -> 8 -> 2


def random_tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {n: jnp.asarray(scale * rng.normal(size=s), jnp.float32) for n, s in SHAPES.items()}


def perturbed_meta_params(lopt, seed, scale=0.3):
    """Random meta-parameters of ``lopt``'s layout (the same for every ``impl``), drawn with NumPy.

    Weights ``N(0, 1)/sqrt(fan_in)``, every other leaf ``scale``·N(0, 1) (around the initial log
    rate for L3RS); the layout comes from tracing ``init_meta_params``, which is not compiled
    (its truncated-normal draws would cost seconds to compile on two cores).
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lopt.init_meta_params, jax.random.key(0))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        noise = rng.normal(size=leaf.shape)
        if "'w" in name:
            return noise / np.sqrt(leaf.shape[0])
        if "log_rate" in name:
            return np.log(lopt.initial_rate) + scale * noise
        return scale * noise

    return jax.tree_util.tree_map_with_path(lambda path, leaf: jnp.asarray(draw(path, leaf), leaf.dtype), shapes)


@functools.cache
def run_steps(lopt, meta_seed, num_steps=NUM_STEPS):
    """``num_steps`` jitted updates on random gradients and losses from ``perturbed_meta_params(lopt,
    meta_seed)``; the updates and states of every step (cached: several tests read the same run)."""
    opt = lopt.make(perturbed_meta_params(lopt, meta_seed), num_steps=10)
    step = jax.jit(lambda grads, state, params, loss: opt.update(grads, state, params, loss=loss))
    params = random_tree(0)
    state = opt.init(params)
    updates_seen, states_seen = [], []
    for t in range(num_steps):
        grads = random_tree(100 + t, scale=0.5 / (t + 1))
        updates, state = step(grads, state, params, jnp.float32(2.0 - 0.3 * t))
        updates_seen.append(updates)
        states_seen.append(state)
        params = optax.apply_updates(params, updates)
    return updates_seen, states_seen


def momenta(state):
    """The params-shaped tree of momentum tuples of an mlp_lopt state."""
    return {k: a.momentum for k, a in state.accumulators.items()}


def assert_trees_close(got, want, rtol, atol_rel, what):
    """Leafwise ``|got − want| ≤ atol_rel·max|want| + rtol·|want|`` (a scale-aware absolute floor)."""
    leaves_got, leaves_want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    for i, (a, b) in enumerate(zip(leaves_got, leaves_want, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, (what, i)
        assert np.all(np.isfinite(a)), (what, i)
        atol = atol_rel * float(np.max(np.abs(b))) if b.size else 0.0
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{what}, leaf {i}")


def jaxpr_shapes(fn, *args):
    """Every intermediate shape of ``fn``'s jaxpr, sub-jaxprs (jit, scan) included."""
    shapes = set()

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            shapes.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return shapes


def update_jaxpr_shapes(lopt, meta_params):
    opt = lopt.make(meta_params, num_steps=10)
    params = random_tree(0)
    state = opt.init(params)
    return jaxpr_shapes(lambda g, s, p: opt.update(g, s, p, loss=jnp.float32(1.0)), params, state, params)


# ----------------------------------------------------------------------------- mlp_lopt


MLP_SEED = 1  # meta-parameter perturbation shared by the mlp_lopt runs (cached by run_steps)


@pytest.mark.parametrize("impl", ["fused", "single_pass"])
def test_mlp_lopt_forms_match_the_reference(impl):
    """fused == reference for 3 steps on every rank; single_pass equals them at its first step (exact
    norms for tensors of at most fused.SUBSAMPLE elements), then differs through its stale norms."""
    ref_updates, ref_states = run_steps(dataclasses.replace(MLP, impl="reference"), MLP_SEED)
    updates, states = run_steps(dataclasses.replace(MLP, impl=impl), MLP_SEED)
    for t in range(NUM_STEPS if impl == "fused" else 1):
        assert_trees_close(updates[t], ref_updates[t], 2e-5, 2e-6, f"{impl} updates, step {t}")
        assert_trees_close(momenta(states[t]), momenta(ref_states[t]), 1e-6, 1e-7, f"{impl} momentum, step {t}")
        assert int(states[t].iteration) == int(ref_states[t].iteration) == t + 1
    assert ref_states[-1].norms is None
    if impl == "fused":
        assert states[-1].norms is None
    else:
        assert not np.allclose(updates[1]["e"], ref_updates[1]["e"], rtol=1e-5, atol=0)


def test_mlp_lopt_single_pass_keeps_exact_norms_and_uses_them_one_step_later():
    """single_pass stores each step's exact channel norms (every rank), and step 2 is the reference
    MLP on step 2's channels normalised with step 1's norms."""
    updates, states = run_steps(dataclasses.replace(MLP, impl="single_pass"), MLP_SEED)
    params, grads = random_tree(0), random_tree(100, scale=0.5)
    for name in SHAPES:
        channels = mlp_lopt_features(params[name], grads[name], states[0].accumulators[name].momentum)
        want = [1.0 / np.sqrt(1e-5 + np.mean(np.square(np.asarray(c, np.float64)))) for c in channels]
        assert states[0].norms[name].shape == (MLP.num_features,) and states[0].norms[name].dtype == jnp.float32
        np.testing.assert_allclose(states[0].norms[name], want, rtol=1e-5, err_msg=name)

    @jax.jit  # one compile instead of an eager dispatch per op and shape
    def second_step(params, grads, momentum, stale_norms):
        nn, nf = perturbed_meta_params(MLP, MLP_SEED)["nn"], MLP.num_features
        first_bias = nn["b0"] + F.tanh_step_embedding(jnp.int32(1)) @ nn["w0"][nf:]
        layers = [(nn["w0"][:nf], first_bias), (nn["w1"], nn["b1"]), (nn["w2"], nn["b2"])]
        out = {}
        for name in SHAPES:
            channels = mlp_lopt_features(params[name], grads[name], momentum[name])
            direction, magnitude = fused.mlp_reference(channels, layers, inv_rms=stale_norms[name])
            out[name] = -direction * jnp.exp(MLP.exp_mult * magnitude) * MLP.step_mult
        return out

    params, grads = optax.apply_updates(params, updates[0]), random_tree(101, scale=0.25)
    want = second_step(params, grads, momenta(states[1]), states[0].norms)
    assert_trees_close(updates[1], want, 2e-5, 2e-6, "single_pass step 2")


def test_mlp_lopt_fused_jaxpr_has_no_per_parameter_stack():
    meta_params = perturbed_meta_params(MLP, 0)
    widths = {MLP.num_features, MLP.hidden_size, 2}
    stacks = {s + (w,) for s in SHAPES.values() if s for w in widths}
    assert stacks & update_jaxpr_shapes(dataclasses.replace(MLP, impl="reference"), meta_params)
    for impl in ("fused", "single_pass"):
        assert not stacks & update_jaxpr_shapes(dataclasses.replace(MLP, impl=impl), meta_params), impl


def _regression():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    w_true = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    y = x @ w_true + 0.1 * jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
    params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros((4,))}
    return params, lambda p: jnp.mean(jnp.square(x @ p["w"] + p["b"] - y))


def descent_meta_params(lopt, seed):
    """A network whose direction is ``g + m_0.9`` (two mirrored ReLU units), plus random noise."""
    nn = jax.tree.map(jnp.zeros_like, perturbed_meta_params(lopt, 0)["nn"])
    g, m = 0, 2 + lopt.decays.index(0.9)  # channel order g, p, m_1..m_k
    nn["w0"] = nn["w0"].at[jnp.array([g, m]), 0].set(1.0).at[jnp.array([g, m]), 1].set(-1.0)
    nn["w1"] = nn["w1"].at[0, 0].set(1.0).at[1, 1].set(1.0)
    nn["w2"] = nn["w2"].at[0, 0].set(1.0).at[1, 0].set(-1.0)
    rng = np.random.default_rng(seed)
    return {"nn": jax.tree.map(lambda x: x + jnp.asarray(0.05 * rng.normal(size=x.shape), x.dtype), nn)}


def train(lopt, meta_params, num_steps=200):
    params, loss_fn = _regression()
    opt = lopt.make(meta_params, num_steps=num_steps)

    def body(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params, loss=loss)
        return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(body, (params, opt.init(params)), None, length=num_steps)
    return losses[0], loss_fn(params)


def test_mlp_lopt_single_pass_trains_like_fused_and_vmaps():
    base = dataclasses.replace(MLP, step_mult=0.01)
    meta = [descent_meta_params(base, s) for s in (3, 4)]
    finals = {}
    for impl in ("fused", "single_pass"):
        first, final = jax.jit(lambda m, impl=impl: train(dataclasses.replace(base, impl=impl), m))(meta[0])
        assert float(final) < 0.1 * float(first), (impl, float(first), float(final))
        finals[impl] = float(final)
    assert abs(finals["single_pass"] - finals["fused"]) <= 0.05 * finals["fused"], finals

    # jit + vmap over two perturbed copies of the meta-parameters, single_pass state in the carry
    batch = jax.tree.map(lambda a, b: jnp.stack([a, b]), *meta)
    lopt = dataclasses.replace(base, impl="single_pass")
    firsts, batched = jax.jit(jax.vmap(lambda m: train(lopt, m)))(batch)
    assert batched.shape == (2,) and np.all(np.isfinite(batched)) and np.all(batched < 0.1 * firsts)
    np.testing.assert_allclose(batched[0], finals["single_pass"], rtol=1e-3)
    assert not np.isclose(batched[0], batched[1], rtol=1e-6, atol=0)


def test_mlp_lopt_auto_impl_state_and_warning():
    overrides = MLPLOpt.auto_impl
    assert fused.resolve_impl("auto", "cpu", overrides) == "reference"  # the fused 32-wide loop does not compile
    assert fused.resolve_impl("auto", "gpu", overrides) == fused.resolve_impl("auto", "gpu")
    assert fused.resolve_impl("single_pass", "cpu", overrides) == "single_pass"
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(())}
    meta_params = perturbed_meta_params(MLP, 0)
    state = dataclasses.replace(MLP, impl="single_pass").make(meta_params, num_steps=5).init(params)
    assert jax.tree.map(jnp.shape, state.norms) == {"w": (MLP.num_features,), "b": (MLP.num_features,)}
    plain = dataclasses.replace(MLP, impl="fused").make(meta_params, num_steps=5)
    assert plain.init(params).norms is None
    single = dataclasses.replace(MLP, impl="single_pass").make(meta_params, num_steps=5)
    with pytest.raises(ValueError, match="single_pass' needs the norms in its state"):
        single.update(params, plain.init(params), params)
    if jax.default_backend() == "cpu":
        wide = MLPLOpt(impl="fused")
        with pytest.warns(UserWarning, match="impl='reference'"):
            wide.make(perturbed_meta_params(wide, 0), num_steps=5)


# ----------------------------------------------------------------------------- l3rs


def test_l3rs_fused_matches_the_stacked_reference():
    lopt = L3RS(num_layers=len(SHAPES))  # all four base directions
    ref_updates, ref_states = run_steps(dataclasses.replace(lopt, impl="reference"), 5)
    fused_updates, fused_states = run_steps(dataclasses.replace(lopt, impl="fused"), 5)
    for t in range(NUM_STEPS):
        assert_trees_close(fused_updates[t], ref_updates[t], 1e-5, 1e-6, f"updates, step {t}")
        assert_trees_close(fused_states[t], ref_states[t], 1e-5, 1e-6, f"state, step {t}")
        assert float(jnp.max(jnp.abs(fused_updates[t]["e"]))) > 0
    # single_pass is the fused form for L3RS (exact: stale direction norms would also need stale
    # status features, see the l3rs module docstring): bit for bit
    single = run_steps(dataclasses.replace(lopt, impl="single_pass"), 5)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves((fused_updates, fused_states)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_l3rs_fused_jaxpr_has_no_stack_of_directions():
    lopt = L3RS(num_layers=len(SHAPES))
    meta_params = perturbed_meta_params(lopt, 0)
    # rank >= 2 only: a [5] or [5, K] array is per-layer (one row per tensor), not per-parameter
    stacks = {s + (len(lopt.base_directions),) for s in SHAPES.values() if len(s) >= 2}
    assert stacks & update_jaxpr_shapes(dataclasses.replace(lopt, impl="reference"), meta_params)
    assert not stacks & update_jaxpr_shapes(dataclasses.replace(lopt, impl="fused"), meta_params)


# ----------------------------------------------------------------------------- validation, config


@pytest.mark.parametrize("make", [lambda impl: MLPLOpt(impl=impl), lambda impl: L3RS(num_layers=2, impl=impl)])
def test_bad_impl_names_the_allowed_values(make):
    with pytest.raises(ValueError, match=r"impl must be one of \['auto', 'reference', 'fused', 'single_pass'\]"):
        make("pallas")


@pytest.mark.parametrize("impl", fused.IMPLS)
def test_config_round_trip_keeps_impl(impl):
    for lopt, cls in ((MLPLOpt(hidden_size=8, impl=impl), MLPLOpt), (L3RS(num_layers=3, impl=impl), L3RS)):
        config = json.loads(json.dumps(lopt.config()))
        assert config["impl"] == impl
        assert cls(**config) == lopt
    assert MLPLOpt().impl == L3RS(num_layers=1).impl == "auto"
