"""Baselines: the factories, the name registry and a traced learning rate."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import adam, make_baseline, sgd


def test_make_baseline_builds_the_named_optimizer():
    params = {"w": jnp.asarray([1.0, -2.0])}
    grads = {"w": jnp.asarray([0.5, 0.5])}
    for name, reference in [("adam", optax.adam(0.1)), ("sgd", optax.sgd(0.1))]:
        opt = make_baseline(name, 0.1)
        assert isinstance(opt, optax.GradientTransformationExtraArgs)
        got, _ = opt.update(grads, opt.init(params), params, loss=1.0, loss_fn=lambda p: 0.0)
        want, _ = reference.update(grads, reference.init(params), params)
        np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)


def test_unknown_baseline_lists_the_allowed_names():
    with pytest.raises(ValueError, match=r"Unknown baseline optimizer 'adamw'.*\['adam', 'sgd'\]"):
        make_baseline("adamw", 0.1)


def test_negative_learning_rate_is_rejected():
    with pytest.raises(ValueError, match="learning_rate must be >= 0"):
        adam(-1e-3)
    with pytest.raises(ValueError, match="learning_rate must be >= 0"):
        sgd(-0.1)


def test_sgd_momentum():
    params = {"w": jnp.zeros(2)}
    grads = {"w": jnp.ones(2)}
    opt = sgd(0.1, momentum=0.9)
    state = opt.init(params)
    u1, state = opt.update(grads, state, params)
    u2, state = opt.update(grads, state, params)
    np.testing.assert_allclose(u1["w"], -0.1)
    np.testing.assert_allclose(u2["w"], -0.1 * 1.9, rtol=1e-6)
    assert jax.tree.leaves(sgd(0.1).init(params)) == []  # no buffer without momentum


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_learning_rate_can_be_traced_and_vmapped(name):
    params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    grads = {"w": jnp.asarray([0.5, -0.25, 1.0])}

    def two_steps(learning_rate):
        opt = make_baseline(name, learning_rate)
        state = opt.init(params)
        u, state = opt.update(grads, state, params, loss=jnp.float32(0.0))
        u, state = opt.update(grads, state, params, loss=jnp.float32(0.0))
        return u["w"]

    grid = jnp.asarray([1e-3, 1e-2, 1e-1])
    batched = jax.jit(jax.vmap(two_steps))(grid)
    for i, lr in enumerate([1e-3, 1e-2, 1e-1]):
        np.testing.assert_allclose(batched[i], two_steps(lr), rtol=1e-6)
