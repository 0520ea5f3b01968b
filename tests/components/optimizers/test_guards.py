"""LGL2O guard: picks the lower-loss candidate, counts fallbacks, fails clearly without loss_fn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import (
    GuardWithLossState,
    adam,
    fallback_fraction,
    guard_with_loss,
    sgd,
)


def parabola(params):
    return jnp.sum(jnp.square(params["x"]))


def uphill(step_size):
    """A 'learned optimizer' that climbs: update = +step_size * grad."""
    return optax.with_extra_args_support(optax.scale(step_size))


def nan_updates():
    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda g: jnp.full_like(g, jnp.nan), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def run(opt, num_steps, x0=(3.0, -2.0)):
    @jax.jit
    def go(params):
        state = opt.init(params)

        def body(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(parabola)(params)
            updates, state = opt.update(grads, state, params, loss=loss, loss_fn=parabola)
            return (optax.apply_updates(params, updates), state), loss

        (params, state), losses = jax.lax.scan(body, (params, state), None, length=num_steps)
        return params, state, losses

    return go({"x": jnp.asarray(x0, jnp.float32)})


def test_bad_learned_candidate_falls_back_to_the_guard():
    guarded, state, losses = run(guard_with_loss(uphill(0.1), sgd(0.1)), 20)
    plain, _, _ = run(sgd(0.1), 20)
    assert isinstance(state, GuardWithLossState)
    assert state.num_steps.dtype == jnp.int32 and state.num_fallbacks.dtype == jnp.int32
    assert int(state.num_steps) == 20
    assert int(state.num_fallbacks) == 20
    assert float(fallback_fraction(state)) == 1.0
    np.testing.assert_allclose(guarded["x"], plain["x"], rtol=1e-6)
    assert np.all(np.diff(np.asarray(losses)) < 0)


def test_good_learned_candidate_is_kept():
    learned = sgd(0.4)
    guarded, state, _ = run(guard_with_loss(learned, sgd(0.01)), 10)
    plain, _, _ = run(learned, 10)
    assert int(state.num_fallbacks) == 0
    assert float(fallback_fraction(state)) == 0.0
    np.testing.assert_allclose(guarded["x"], plain["x"], rtol=1e-6)


def test_guard_takes_the_lower_loss_candidate_each_step():
    # learned = fixed step along +x: good while x < 0, bad afterwards.
    def right(updates, state, params=None, **extra_args):
        return jax.tree.map(lambda g: jnp.full_like(g, 0.5), updates), state

    learned = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), right)
    opt = guard_with_loss(learned, sgd(0.01))
    params = {"x": jnp.asarray([-2.0])}
    state = opt.init(params)
    step = jax.jit(lambda p, s: opt.update(jax.grad(parabola)(p), s, p, loss_fn=parabola))
    taken = []
    for _ in range(6):
        updates, state = step(params, state)
        taken.append(float(updates["x"][0]))
        params = optax.apply_updates(params, updates)
    # x: -2 -> -1.5 -> -1 -> -0.5 -> 0 (learned), then +0.5 would be worse than the guard's step.
    assert taken[:4] == [0.5, 0.5, 0.5, 0.5]
    assert all(t != 0.5 for t in taken[4:])
    assert int(state.num_fallbacks) == 2 and int(state.num_steps) == 6


def test_non_finite_learned_candidate_falls_back():
    guarded, state, _ = run(guard_with_loss(nan_updates(), sgd(0.1)), 5)
    assert int(state.num_fallbacks) == 5
    assert np.all(np.isfinite(np.asarray(guarded["x"])))


def test_both_inner_states_advance_every_step():
    # Learned candidate always rejected (tiny Adam steps lose to SGD): its state still advances.
    _, state, _ = run(guard_with_loss(adam(1e-4), sgd(0.1)), 7)
    assert int(state.num_fallbacks) == 7
    assert int(jax.tree.leaves(state.learned_state)[0]) == 7  # Adam's step count
    # Guard candidate always rejected: the guard's state still advances.
    _, state, _ = run(guard_with_loss(sgd(0.1), adam(1e-4)), 7)
    assert int(state.num_fallbacks) == 0
    assert int(jax.tree.leaves(state.guard_state)[0]) == 7


def test_every_step_is_no_worse_than_the_guard_step():
    """The LGL2O property: f(x_{t+1}) <= f(x_t + u_G(x_t)) with the guard's state at t."""
    learned = optax.with_extra_args_support(optax.scale(-0.7))  # overshooting GD
    guard = sgd(0.05)
    opt = guard_with_loss(learned, guard)
    params = {"x": jnp.asarray([3.0, -2.0, 0.5])}
    state = opt.init(params)
    for _ in range(10):
        grads = jax.grad(parabola)(params)
        guard_updates, _ = guard.update(grads, state.guard_state, params)
        guard_loss = parabola(optax.apply_updates(params, guard_updates))
        updates, state = opt.update(grads, state, params, loss_fn=parabola)
        params = optax.apply_updates(params, updates)
        assert parabola(params) <= guard_loss


def test_missing_loss_fn_is_a_clear_error():
    opt = guard_with_loss(sgd(0.1), adam(0.1))
    params = {"x": jnp.ones(2)}
    state = opt.init(params)
    with pytest.raises(TypeError, match=r"needs the loss closure.*loss_fn=lambda p: loss\(p, batch\)"):
        opt.update(params, state, params, loss=jnp.float32(1.0))
    with pytest.raises(TypeError, match="needs the loss closure"):
        jax.jit(lambda p, s: opt.update(p, s, p))(params, state)
    with pytest.raises(TypeError, match="needs the current params"):
        opt.update(params, state, None, loss_fn=parabola)


def test_non_scalar_loss_fn_is_a_clear_error():
    opt = guard_with_loss(sgd(0.1), adam(0.1))
    params = {"x": jnp.ones(2)}
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        opt.update(params, opt.init(params), params, loss_fn=lambda p: p["x"] ** 2)


def test_fallback_fraction_before_any_step():
    opt = guard_with_loss(sgd(0.1), adam(0.1))
    assert float(fallback_fraction(opt.init({"x": jnp.ones(2)}))) == 0.0
