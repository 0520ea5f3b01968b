"""VeLO and Celo with the three forms of the per-parameter MLP (``impl``, :mod:`components.optimizers.fused`).

``"fused"`` must equal ``"reference"`` (same function, float rounding apart); ``"single_pass"`` (one
step stale norms) must equal ``"fused"`` at the first step and train to the same loss, also
vmapped over meta-parameters. Compiling is the slow part on CPU: each optimizer has two programs
(one with every impl, one training run vmapped over two θ copies), shared through
``functools.cache``.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import features as F
from components.optimizers import fused, velo_mlp
from components.optimizers.celo import Celo
from components.optimizers.per_parameter import PerParameterState
from components.optimizers.velo import VeLO

# small LSTMs and 2-wide MLPs (the default is 4): the fused forms trace a few ops per MLP weight
LOPTS = {
    "celo": Celo(lstm_hidden_size=8, ff_hidden_size=2),
    "velo": VeLO(lstm_hidden_size=8, param_inits=4, ff_hidden_size=2),
}
SHAPES = {"r0": (), "r1": (5,), "r2": (6, 4), "r3": (3, 4, 5), "r4": (2, 3, 4, 5)}  # all <= 4096 elements
LOSSES = np.linspace(2.0, 1.0, 12, dtype=np.float32)
NUM_STEPS = 50
IMPLS = ("reference", "fused", "single_pass")


def _compile(fn, *args):
    """Jit-compiles ``fn`` for ``args`` with XLA's cheap CPU code generation (these tests are compile-bound)."""
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    return jax.jit(fn).lower(*args).compile(compiler_options=options)


def _perturbed(theta, seed, scale):
    """θ plus Gaussian noise, drawn with NumPy (eager JAX ops would each compile on first use)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + scale * rng.normal(size=x.shape).astype(np.float32), theta)


def _stack(*trees):
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x, jnp.float32) for x in xs]), *trees)


def _unroll(lopt, theta, params, grads, losses):
    """Applies ``lopt`` to the given gradient / loss sequence; returns per-step updates and states."""
    opt = lopt.make(theta, num_steps=NUM_STEPS)

    def body(carry, inputs):
        params, state = carry
        g, loss = inputs
        updates, state = opt.update(g, state, params, loss=loss)
        return (optax.apply_updates(params, updates), state), (updates, state)

    return jax.lax.scan(body, (params, opt.init(params)), (grads, losses))[1]


def _impl_inputs():
    """Parameters and per-step gradients (a persistent direction plus noise, as along a training run)."""
    rng = np.random.default_rng(3)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
    grads = {k: rng.normal(size=s) + 0.5 * rng.normal(size=(len(LOSSES), *s)) for k, s in SHAPES.items()}
    return params, jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)


def _channel_norms(lopt, params, grads, updates, states):
    """``{leaf: [T, C]}`` inverse RMS of every step's feature channels, rebuilt from a run's inputs and states."""
    decays = [jnp.asarray(d, jnp.float32) for d in (lopt.initial_momentum_decays, lopt.initial_rms_decays)]
    fac_decays = jnp.asarray(lopt.initial_adafactor_decays, jnp.float32)

    def one(param, grad, momentum, rms, factored):
        momentum = F.update_momentum(momentum, grad, decays[0])
        rms = F.update_rms(rms, grad, decays[1])
        factored, fac_g = F.update_factored(factored, grad, fac_decays)
        return fused.channel_inverse_rms(velo_mlp.hyper_features(param, grad, momentum, rms, fac_g, factored))

    def before(x):  # per step t: the init value (zeros) at t = 0, else the value after step t − 1
        return jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]])

    out = {}
    for k in SHAPES:
        accumulators = jax.tree.map(before, tuple(states.accumulators[k]))
        param = params[k] + before(jnp.cumsum(updates[k], axis=0))
        out[k] = jax.vmap(one)(param, grads[k], *accumulators)
    return out


@functools.cache
def _impl_runs(name):
    """Every impl from the same perturbed θ on 0–4-D leaves, per step.

    Returns ``({impl: (updates, states)}, channel_norms)``, the latter the exact norms of the
    single_pass run's channels (:func:`_channel_norms`).
    """
    lopt = LOPTS[name]
    theta = _perturbed(jax.jit(lopt.init_meta_params)(jax.random.key(0)), 1, 0.3)
    params, grads = _impl_inputs()

    def run(theta, params, grads, losses):
        return {impl: _unroll(dataclasses.replace(lopt, impl=impl), theta, params, grads, losses) for impl in IMPLS}

    args = (theta, params, grads, jnp.asarray(LOSSES))
    runs = _compile(run, *args)(*args)
    norms_args = (params, grads, *runs["single_pass"])  # a small program of its own compiles faster
    return runs, _compile(functools.partial(_channel_norms, lopt), *norms_args)(*norms_args)


def _relative_error(got, want):
    """Per step ``‖got − want‖ / ‖want‖`` over all leaves of an updates tree ``[T, ...]``."""
    num = sum(np.sum(np.square(np.asarray(got[k]) - np.asarray(want[k])).reshape(len(LOSSES), -1), -1) for k in want)
    den = sum(np.sum(np.square(np.asarray(want[k])).reshape(len(LOSSES), -1), -1) for k in want)
    return np.sqrt(num / den)


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("name", sorted(LOPTS))
def test_impl_field_validation_and_config_round_trip(name):
    cls = type(LOPTS[name])
    assert cls().impl == "auto" and fused.resolve_impl("auto") in IMPLS
    with pytest.raises(ValueError, match=r"impl must be one of \['auto', 'reference', 'fused', 'single_pass'\]"):
        cls(impl="fastest")
    lopt = dataclasses.replace(LOPTS[name], impl="single_pass")
    config = lopt.config()
    assert config["impl"] == "single_pass" and cls(**config) == lopt


@pytest.mark.parametrize("name", sorted(LOPTS))
def test_state_norms_only_for_single_pass(name):
    params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
    theta = jax.eval_shape(LOPTS[name].init_meta_params, jax.random.key(0))
    num_features = sum(LOPTS[name].feature_groups)

    def init(impl):  # traced only: the shapes of the initial state
        lopt = dataclasses.replace(LOPTS[name], impl=impl)
        return jax.eval_shape(lambda th: lopt.make(th, num_steps=10).init(params), theta)

    for impl in ("auto", "reference", "fused"):
        state = init(impl)
        assert isinstance(state, PerParameterState) and state.norms is None
    norms = init("single_pass").norms
    assert jax.tree.map(lambda x: (x.shape, x.dtype), norms) == {k: ((num_features,), jnp.float32) for k in SHAPES}


def test_single_pass_state_without_norms_raises():
    lopt = LOPTS["celo"]
    theta = jax.eval_shape(lopt.init_meta_params, jax.random.key(0))
    params = {"w": jnp.ones((2, 2))}
    fused_opt = dataclasses.replace(lopt, impl="fused")
    single_pass = dataclasses.replace(lopt, impl="single_pass")

    def update(theta):  # a state built by the fused optimizer, updated by the single_pass one
        state = fused_opt.make(theta, num_steps=10).init(params)
        return single_pass.make(theta, num_steps=10).update(params, state, params, loss=1.0)

    with pytest.raises(ValueError, match="state.norms is None"):
        jax.eval_shape(update, theta)


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("name", sorted(LOPTS))
def test_fused_equals_reference(name):
    runs, _ = _impl_runs(name)
    (ref_updates, ref_states), (updates, states) = runs["reference"], runs["fused"]
    for k, shape in SHAPES.items():
        assert updates[k].shape == (len(LOSSES), *shape)
        assert np.all(np.isfinite(ref_updates[k])) and np.all(np.asarray(ref_updates[k]) != 0)
        scale = np.max(np.abs(ref_updates[k]))
        np.testing.assert_allclose(updates[k], ref_updates[k], rtol=1e-5, atol=1e-6 * scale, err_msg=k)
    assert _relative_error(updates, ref_updates).max() < 1e-5
    ref_states, states = ref_states._replace(norms=None), states._replace(norms=None)
    assert jax.tree.structure(states) == jax.tree.structure(ref_states)
    for got, want in zip(jax.tree.leaves(states), jax.tree.leaves(ref_states), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(LOPTS))
def test_single_pass_first_step_equals_fused_and_later_steps_are_close(name):
    runs, channel_norms = _impl_runs(name)
    (fused_updates, fused_states), (updates, states) = runs["fused"], runs["single_pass"]
    for k in SHAPES:  # step 0: the subsample norms are exact for tensors of <= 4096 elements
        scale = np.max(np.abs(fused_updates[k][0]))
        np.testing.assert_allclose(updates[k][0], fused_updates[k][0], rtol=1e-5, atol=1e-6 * scale, err_msg=k)
    error = _relative_error(updates, fused_updates)
    assert error[0] < 1e-5
    # Later steps normalise with the previous step's norms. This early in a run the accumulators
    # still grow by O(1/t) per step (momentum 0.1·g, then 0.19·g, …; v with β = 0.999 ∝ t), and
    # the random MLP's outputs are sums of 30 channels that partly cancel, so the steps differ by
    # several percent (measured 2–20 %; the training test below compares outcomes instead).
    assert np.all(error[1:] > 1e-4) and np.all(error[1:] < 0.4), error
    # the state keeps this step's exact [C] norms (those of the channels it fed the MLP) for the next
    assert fused_states.norms is None
    num_features = sum(LOPTS[name].feature_groups)
    for k in SHAPES:
        norms = np.asarray(states.norms[k])
        assert norms.shape == (len(LOSSES), num_features) and norms.dtype == np.float32
        np.testing.assert_allclose(norms, channel_norms[k], rtol=1e-5, err_msg=k)
        assert not np.allclose(norms[1], norms[0])


# ----------------------------------------------------------------------------- training


def _descent_mlp(lopt):
    """One MLP whose direction is the normalised ``m_0.9 · rsqrt(v)`` channel (an Adam-like descent step).

    ``d = relu(x) − relu(−x) = x`` through the hidden layers (identities on the first two units), ``s = 0``.
    """
    groups, hidden, depth = lopt.feature_groups, lopt.ff_hidden_size, lopt.ff_hidden_layers
    w0 = np.zeros((sum(groups), hidden), np.float32)
    w0[sum(groups[:5]), :2] = [1.0, -1.0]  # first channel of group 5: m·rsqrt(v), first momentum decay
    offsets = np.cumsum([0, *groups])
    ff = {f"w0__{i}": w0[offsets[i] : offsets[i + 1]] for i in range(len(groups))}
    ff |= {f"w{layer}": np.eye(hidden, dtype=np.float32) for layer in range(1, depth)}
    ff[f"w{depth}"] = np.zeros((hidden, 3), np.float32)
    ff[f"w{depth}"][:2, 0] = [1.0, -1.0]
    ff |= {f"b{layer}": np.zeros(hidden if layer < depth else 3, np.float32) for layer in range(depth + 1)}
    return ff


def _training_theta(name, seed):
    """θ that makes the optimizer descend: the MLP of :func:`_descent_mlp` plus noise, λ = 1."""
    lopt = LOPTS[name]
    shapes = jax.eval_shape(lopt.init_meta_params, jax.random.key(0))
    theta = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), shapes)
    bank = theta["ff_mod_stack"]
    ff = _perturbed(_descent_mlp(lopt), seed, 0.05)
    theta["ff_mod_stack"] = {k: np.broadcast_to(ff[k], bank[k].shape) for k in bank}
    if name == "velo":  # controls 1 (mixed MLP = the bank's mean = ff), LR multiplier 1
        theta["rnn_params"]["rnn_to_controls"]["b"][:] = 1.0
        theta["rnn_params"]["step_size"]["b"][:] = 1.0
    return theta


TRAIN_STEPS = 200


@functools.cache
def _training_runs(name):
    """Losses ``{impl: [2 θ copies, steps + 1]}`` of a linear regression (fused, single_pass; vmapped), its optimum."""
    base = dataclasses.replace(LOPTS[name], step_mult=0.015)
    if name == "celo":
        base = dataclasses.replace(base, train_phase=1)  # no scheduler: λ = 1 and a smaller program
    thetas = _stack(_training_theta(name, 0), _training_theta(name, 1))
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    target = {"w": rng.normal(size=(8, 3)), "b": rng.normal(size=(3,))}
    # label noise sets the optimum's loss (~0.2), well above the excess of the steps' jitter around it
    y = x @ target["w"] + target["b"] + 0.5 * rng.normal(size=(64, 3))
    params = {"w": jnp.asarray(0.5 * rng.normal(size=(8, 3)), jnp.float32), "b": jnp.full((3,), 0.5, jnp.float32)}

    def loss_fn(p):
        return jnp.mean(jnp.square(x @ p["w"] + p["b"] - y))

    def train(lopt, theta):
        opt = lopt.make(theta, num_steps=TRAIN_STEPS)

        def body(carry, _):
            p, state = carry
            loss, g = jax.value_and_grad(loss_fn)(p)
            updates, state = opt.update(g, state, p, loss=loss)
            return (optax.apply_updates(p, updates), state), loss

        (p, _), losses = jax.lax.scan(body, (params, opt.init(params)), length=TRAIN_STEPS)
        return jnp.append(losses, loss_fn(p))

    def run(thetas):
        return {
            impl: jax.vmap(functools.partial(train, dataclasses.replace(base, impl=impl)))(thetas) for impl in IMPLS[1:]
        }

    design = np.concatenate([np.asarray(x, np.float64), np.ones((64, 1))], axis=1)
    optimum = np.mean(np.square(design @ np.linalg.lstsq(design, y, rcond=None)[0] - y))
    return _compile(run, thetas)(thetas), optimum


@pytest.mark.parametrize("name", sorted(LOPTS))
def test_single_pass_trains_like_fused(name):
    losses, optimum = _training_runs(name)
    ref, single = np.asarray(losses["fused"]), np.asarray(losses["single_pass"])
    assert ref.shape == single.shape == (2, TRAIN_STEPS + 1)
    assert np.all(np.isfinite(ref)) and np.all(np.isfinite(single))
    initial = ref[:, 0]
    np.testing.assert_array_equal(single[:, 0], initial)
    # under vmap too, the first update (subsample norms, exact here) equals the fused one
    np.testing.assert_allclose(single[:, 1], ref[:, 1], rtol=1e-6)
    assert not np.allclose(ref[0], ref[1], rtol=1e-3)  # the two θ copies train differently
    # both reach the least-squares optimum (from ~40x its loss) and end within 5% of each other
    assert np.all(initial > 10 * optimum)
    assert np.all(ref[:, -1] < 1.1 * optimum) and np.all(single[:, -1] < 1.1 * optimum), (ref[:, -1], single[:, -1])
    np.testing.assert_allclose(single[:, -1], ref[:, -1], rtol=0.05)
    assert not np.allclose(single, ref, rtol=1e-6)  # the stale norms do change the trajectory
