"""Baselines: every factory through the same checks, hand-computed steps, the registry and its errors.

Cost: per optimizer one compile of the update (structure), one of a vmapped two-step run and one of a
vmapped 300-step run on two problems over a learning-rate grid.
"""

import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import create
from components.optimizers.baselines import (
    BASELINES,
    adafactor,
    adam,
    baseline_hyperparameters,
    lion,
    sgd,
    sgdm,
    sign_sgd,
)

NAMES = sorted(BASELINES)

CELO_BASELINES = [
    "adam",
    "sgd",
    "sgdm",
    "adamw",
    "rmsprop",
    "fromage",
    "sm3",
    "lars",
    "lamb",
    "adabelief",
    "adafactor",
    "adagrad",
    "yogi",
    "radam",
    "nadamw",
]

# ----------------------------------------------------------------------------- registry


def test_registry_holds_celos_fifteen_and_every_factory_has_the_common_signature():
    assert set(CELO_BASELINES) <= set(BASELINES)
    for name, factory in BASELINES.items():
        params = list(inspect.signature(factory).parameters.values())
        assert params[0].name == "learning_rate", name
        assert params[0].default is inspect.Parameter.empty, name
        for p in params[1:]:
            assert p.default is not inspect.Parameter.empty, (name, p.name)
        defaults = baseline_hyperparameters(name)
        assert defaults == {p.name: p.default for p in params[1:]}
        json.dumps(defaults)  # plain numbers / bools / None: a params file can hold every one


def test_defaults_follow_celo_then_optax():
    assert baseline_hyperparameters("adam") == {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 1e-8}  # LO
    assert baseline_hyperparameters("sgdm")["momentum"] == 0.9  # LO SGDM
    assert baseline_hyperparameters("sgd")["momentum"] == 0.0
    assert baseline_hyperparameters("adamw")["weight_decay"] == 1e-4  # LO = optax
    assert baseline_hyperparameters("nadamw")["weight_decay"] == 0.0  # LO NAdamW (optax: 1e-4)
    assert baseline_hyperparameters("adabelief")["eps"] == 1e-16
    assert baseline_hyperparameters("adagrad") == {"initial_accumulator_value": 0.1, "eps": 1e-7}
    assert baseline_hyperparameters("yogi")["eps"] == 1e-3
    assert baseline_hyperparameters("sm3") == {"momentum": 0.9, "b2": 1.0, "eps": 1e-8}
    assert baseline_hyperparameters("adafactor")["multiply_by_parameter_scale"] is True
    assert baseline_hyperparameters("lion") == {"b1": 0.9, "b2": 0.99, "weight_decay": 1e-3}  # optax
    assert baseline_hyperparameters("sign_sgd") == {}


def test_unknown_name_lists_the_allowed_names():
    with pytest.raises(
        ValueError, match=r"Unknown optimizer 'adamx'\. Known names — baselines: \['adabelief', .*'yogi'\]"
    ):
        create("adamx", learning_rate=0.1)
    with pytest.raises(ValueError, match=r"Unknown baseline optimizer 'adamx'"):
        baseline_hyperparameters("adamx")


def test_unknown_hyperparameter_lists_the_accepted_ones():
    with pytest.raises(
        ValueError,
        match=r"'adam' has no hyperparameter\(s\) \['beta1'\]; accepted: \['b1', 'b2', 'eps', 'eps_root'\]",
    ):
        create("adam", learning_rate=0.1, beta1=0.9)


def test_create_passes_hyperparameters_and_matches_optax():
    params = {"w": jnp.asarray([1.0, -2.0])}
    grads = {"w": jnp.asarray([0.5, 0.25])}
    cases = [
        (create("adam", learning_rate=0.1), optax.adam(0.1, eps_root=1e-8)),
        (create("adamw", learning_rate=0.1, weight_decay=0.5), optax.adamw(0.1, weight_decay=0.5)),
        (create("rmsprop", learning_rate=0.1, decay=0.5), optax.rmsprop(0.1, decay=0.5)),
        (create("lars", learning_rate=2.0, momentum=0.5), optax.lars(2.0, momentum=0.5)),
    ]
    for opt, reference in cases:
        assert isinstance(opt, optax.GradientTransformationExtraArgs)
        state, ref_state = opt.init(params), reference.init(params)
        for _ in range(2):
            got, state = opt.update(grads, state, params, loss=1.0, loss_fn=lambda p: 0.0)
            want, ref_state = reference.update(grads, ref_state, params)
            np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), float("inf"), jnp.float32(-0.1)])
def test_bad_learning_rate_is_rejected_by_every_factory(bad):
    for name in NAMES:
        with pytest.raises(ValueError, match=f"{name}: learning_rate must be >= 0 and finite"):
            create(name, learning_rate=bad)


def test_learning_rate_must_be_a_scalar_number():
    with pytest.raises(TypeError, match="learning_rate must be a number or a scalar array, got str"):
        adam("1e-3")
    with pytest.raises(TypeError, match="learning_rate must be a number, got the bool"):
        sgd(True)
    with pytest.raises(ValueError, match=r"must be a scalar, got an array of shape \(3,\).*jax.vmap"):
        adam(jnp.ones(3))


@pytest.mark.parametrize(
    "name, hyperparams, match",
    [
        ("adam", {"b1": 1.0}, r"adam: b1 must be in \[0, 1\), got 1.0"),
        ("sgdm", {"momentum": -0.1}, r"sgdm: momentum must be in \[0, 1\)"),
        ("lion", {"b2": 1.5}, r"lion: b2 must be in \[0, 1\)"),
        ("rmsprop", {"decay": 1.0}, r"rmsprop: decay must be in \[0, 1\)"),
        ("adan", {"b3": -0.5}, r"adan: b3 must be in \[0, 1\)"),
        ("adafactor", {"momentum": 1.0}, r"adafactor: momentum must be in \[0, 1\)"),
        ("adafactor", {"decay_rate": 0.0}, r"adafactor: decay_rate must be in \(0, 1\]"),
        ("adafactor", {"clipping_threshold": 0.0}, r"adafactor: clipping_threshold must be > 0"),
        ("adafactor", {"min_dim_size_to_factor": -1}, r"adafactor: min_dim_size_to_factor must be >= 0"),
        ("sm3", {"b2": 0.0}, r"sm3: b2 must be in \(0, 1\]"),
        ("adam", {"eps": -1e-8}, r"adam: eps must be >= 0"),
        ("adamw", {"weight_decay": -1.0}, r"adamw: weight_decay must be >= 0"),
    ],
)
def test_out_of_range_hyperparameters_are_rejected(name, hyperparams, match):
    with pytest.raises(ValueError, match=match):
        create(name, learning_rate=0.1, **hyperparams)


def test_wrongly_typed_hyperparameters_are_rejected():
    with pytest.raises(TypeError, match="sgd: nesterov must be True or False, got str 'yes'"):
        sgd(0.1, nesterov="yes")
    with pytest.raises(TypeError, match="adam: eps must be a number or a scalar array, got NoneType"):
        adam(0.1, eps=None)
    with pytest.raises(TypeError, match="adafactor: min_dim_size_to_factor must be a Python int"):
        adafactor(0.1, min_dim_size_to_factor=1.5)


def test_optimizers_that_need_params_say_so():
    opt = create("adamw", learning_rate=0.1)
    params = {"w": jnp.ones(2)}
    with pytest.raises(TypeError, match=r"adamw needs the current parameters.*opt.update\(grads, state, params\)"):
        opt.update(params, opt.init(params))


# ----------------------------------------------------------------------------- hand-computed steps


def _steps(opt, params, grads_seq):
    state = opt.init(params)
    out = []
    for g in grads_seq:
        u, state = opt.update({"w": g}, state, params, loss=jnp.float32(0.0))
        out.append(np.asarray(u["w"]))
    return out


W = jnp.asarray([1.0, -2.0, 0.5])
G1 = jnp.asarray([1.0, -1.0, 2.0])
G2 = jnp.asarray([-0.05, 0.5, -3.0])


def test_sgd_and_sgdm_steps():
    np.testing.assert_allclose(_steps(sgd(0.1), {"w": W}, [G1])[0], -0.1 * np.asarray(G1), rtol=1e-6)
    u1, u2 = _steps(sgdm(0.1), {"w": W}, [G1, G2])  # μ1 = g1, μ2 = 0.9·g1 + g2
    np.testing.assert_allclose(u1, -0.1 * np.asarray(G1), rtol=1e-6)
    np.testing.assert_allclose(u2, -0.1 * (0.9 * np.asarray(G1) + np.asarray(G2)), rtol=1e-6)
    assert jax.tree.leaves(sgd(0.1).init({"w": W})) == []  # no buffer without momentum


def test_sgd_momentum_can_be_traced():
    def second_update(momentum):
        opt = sgd(0.1, momentum=momentum)
        state = opt.init({"w": W})
        _, state = opt.update({"w": G1}, state)
        return opt.update({"w": G2}, state)[0]["w"]

    got = jax.vmap(second_update)(jnp.asarray([0.0, 0.5]))
    np.testing.assert_allclose(got[1], -0.1 * (0.5 * np.asarray(G1) + np.asarray(G2)), rtol=1e-6)
    np.testing.assert_allclose(got[0], -0.1 * np.asarray(G2), rtol=1e-6)


def test_adam_two_steps():
    lr, b1, b2, eps, eps_root = 0.01, 0.9, 0.999, 1e-8, 1e-8
    g1, g2 = np.asarray(G1, np.float64), np.asarray(G2, np.float64)
    m, v = (1 - b1) * g1, (1 - b2) * g1**2
    want1 = -lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2) + eps_root) + eps)
    m, v = b1 * m + (1 - b1) * g2, b2 * v + (1 - b2) * g2**2
    want2 = -lr * (m / (1 - b1**2)) / (np.sqrt(v / (1 - b2**2) + eps_root) + eps)
    u1, u2 = _steps(adam(lr), {"w": W}, [G1, G2])
    np.testing.assert_allclose(u1, want1, rtol=1e-5)
    np.testing.assert_allclose(u2, want2, rtol=1e-4)  # float32: 1 − b2² loses ~4 digits


def test_lion_two_steps():
    lr, wd = 0.01, 0.1
    u1, u2 = _steps(lion(lr, weight_decay=wd), {"w": W}, [G1, G2])
    np.testing.assert_allclose(u1, -lr * (np.sign(G1) + wd * np.asarray(W)), rtol=1e-6)
    # m1 = 0.01·g1; c = 0.9·m1 + 0.1·g2 = [0.004, 0.041, -0.282]: the first sign differs from g2's.
    np.testing.assert_allclose(u2, -lr * (np.asarray([1.0, 1.0, -1.0]) + wd * np.asarray(W)), rtol=1e-6)


def test_sign_sgd_step():
    (u,) = _steps(sign_sgd(0.3), {"w": W}, [jnp.asarray([2.0, 0.0, -1e-6])])
    np.testing.assert_allclose(u, [-0.3, 0.0, 0.3], rtol=1e-6)


def test_adafactor_learning_rate_is_a_step_relative_to_the_parameter_rms():
    # Step 1: β_1 = 0 so g/√v̂ = sign(g) (RMS 1, not clipped); Δp = −lr·max(RMS(p), 1e-3)·sign(g).
    rms = float(np.sqrt(np.mean(np.square(W))))
    (u,) = _steps(adafactor(0.1), {"w": W}, [G1])
    np.testing.assert_allclose(u, -0.1 * rms * np.sign(G1), rtol=1e-5)
    (u,) = _steps(adafactor(0.1, multiply_by_parameter_scale=False), {"w": W}, [G1])
    np.testing.assert_allclose(u, -0.1 * np.sign(G1), rtol=1e-5)


def test_low_precision_params_get_float32_state_and_updates_in_their_dtype():
    params = {"w": W.astype(jnp.bfloat16)}
    opt = adam(0.01)
    state = opt.init(params)
    assert {x.dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype("float32")}
    u, _ = opt.update({"w": G1.astype(jnp.bfloat16)}, state, params)
    assert u["w"].dtype == jnp.bfloat16


# ----------------------------------------------------------------------------- every optimizer


def _structure_params():
    # 0-D, 1-D, 2-D (with a 128-long axis so adafactor factors it), 4-D, and a bfloat16 leaf.
    keys = jax.random.split(jax.random.key(0), 5)
    return {
        "scalar": jnp.float32(1.5),
        "vector": jax.random.normal(keys[0], (3,)),
        "matrix": jax.random.normal(keys[1], (128, 3)),
        "conv": jax.random.normal(keys[2], (2, 3, 2, 2)),
        "half": jax.random.normal(keys[3], (4,)).astype(jnp.bfloat16),
    }


def _signature(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("name", NAMES)
def test_structure_dtypes_extra_args_traced_learning_rate(name):
    params = _structure_params()
    grads = jax.tree.map(lambda p: (0.5 * p + 0.1).astype(p.dtype), params)
    extra_args = {"loss": jnp.float32(1.0), "loss_fn": lambda p: 0.0, "unused": 3}

    # A Python-float learning rate, as a training loop builds it.
    opt = create(name, learning_rate=0.01)
    step = jax.jit(lambda grads, state, params: opt.update(grads, state, params, **extra_args))
    state0 = opt.init(params)
    updates1, state1 = step(grads, state0, params)
    updates2, state2 = step(grads, state1, params)
    assert step._cache_size() == 1  # the second step reuses the first compile
    assert _signature(updates1) == _signature(params) == _signature(updates2)
    assert _signature(state0) == _signature(state1) == _signature(state2)
    for leaf in jax.tree.leaves(state2):
        assert leaf.dtype != jnp.bfloat16  # accumulators at least float32
    for leaf in jax.tree.leaves((updates2, state2)):
        assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
    assert all(np.any(np.asarray(u, np.float32) != 0) for u in jax.tree.leaves(updates2))

    # The same two steps with a traced learning rate, vmapped over a grid that contains 0.01.
    def two_steps(learning_rate):
        opt = create(name, learning_rate=learning_rate)
        state = opt.init(params)
        _, state = opt.update(grads, state, params, **extra_args)
        return opt.update(grads, state, params, **extra_args)

    batched_updates, batched_state = jax.jit(jax.vmap(two_steps))(jnp.asarray([1e-3, 1e-2, 1e-1], jnp.float32))
    for b, s in zip(jax.tree.leaves(batched_updates), jax.tree.leaves(updates2), strict=True):
        assert b.shape == (3, *s.shape) and b.dtype == s.dtype
        np.testing.assert_allclose(np.asarray(b[1], np.float32), np.asarray(s, np.float32), rtol=2e-5, atol=1e-9)
    for b, s in zip(jax.tree.leaves(batched_state), jax.tree.leaves(state2), strict=True):
        assert b.dtype == s.dtype


def _parabola(params):
    return jnp.sum(jnp.square(params["x"]))


def _rosenbrock(params):
    x = params["x"]
    return jnp.square(1.0 - x[0]) + 100.0 * jnp.square(x[1] - jnp.square(x[0]))


PROBLEMS = [(_parabola, (-1.0, 10.0, 1.0)), (_rosenbrock, (-1.0, 1.0))]
NUM_STEPS = 300
LEARNING_RATES = 10.0 ** np.arange(-4.0, 0.01, 0.5)  # 1e-4, 3e-4, ..., 1: half-decades


def _final_loss(name, learning_rate, loss_fn, init):
    opt = create(name, learning_rate=learning_rate)
    params = {"x": jnp.asarray(init, jnp.float32)}

    def body(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params, loss=loss)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=NUM_STEPS)
    return loss_fn(params)


@pytest.mark.parametrize("name", NAMES)
def test_best_learning_rate_of_a_grid_decreases_the_loss(name):
    def final_losses(learning_rate):
        return jnp.stack([_final_loss(name, learning_rate, f, x0) for f, x0 in PROBLEMS])

    losses = np.asarray(jax.jit(jax.vmap(final_losses))(jnp.asarray(LEARNING_RATES, jnp.float32)))
    best = np.min(np.where(np.isfinite(losses), losses, np.inf), axis=0)
    initial = [float(f({"x": jnp.asarray(x0)})) for f, x0 in PROBLEMS]
    assert best[0] < 1e-2 * initial[0], (name, best[0], initial[0])  # parabola: 102 -> < 1.02
    assert best[1] < 0.9 * initial[1], (name, best[1], initial[1])  # Rosenbrock: 4 -> < 3.6
