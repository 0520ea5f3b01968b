"""LGL2O guard: picks the lower-loss candidate (same or fresh batch), counts fallbacks, converges with a
divergent learned optimizer, never accepts non-finite candidates, fails clearly without its loss closure."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import (
    GuardWithLossState,
    SmallFcLOpt,
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


def test_missing_fresh_loss_fn_is_a_clear_error():
    opt = guard_with_loss(sgd(0.1), adam(0.1), loss_batch="fresh")
    params = {"x": jnp.ones(2)}
    state = opt.init(params)
    # loss_fn alone is not enough in "fresh" mode: the comparison needs the independent batch
    with pytest.raises(TypeError, match=r"loss_batch='fresh'.*fresh_loss_fn=None.*fresh_loss_fn=lambda p"):
        opt.update(params, state, params, loss_fn=parabola)
    with pytest.raises(ValueError, match="fresh_loss_fn must return a scalar"):
        opt.update(params, state, params, fresh_loss_fn=lambda p: p["x"])


def test_construction_errors():
    with pytest.raises(ValueError, match=r"loss_batch must be one of \['fresh', 'same'\], got 'train'"):
        guard_with_loss(sgd(0.1), adam(0.1), loss_batch="train")
    with pytest.raises(TypeError, match="guard_with_loss: guard must be an optax GradientTransformation"):
        guard_with_loss(sgd(0.1), 0.1)
    with pytest.raises(TypeError, match="guard_with_loss: learned must be an optax GradientTransformation"):
        guard_with_loss(None, sgd(0.1))


# ----------------------------------------------------------------------------- stochastic least squares

DIM = 10


def _regression_problem():
    rng = np.random.default_rng(1)
    x_true = jnp.asarray(rng.normal(size=DIM), jnp.float32)

    def sample_batch(key, size=8):
        k_a, k_noise = jax.random.split(key)
        a = jax.random.normal(k_a, (size, DIM)) * jnp.linspace(0.3, 1.5, DIM)
        return a, a @ x_true + 0.3 * jax.random.normal(k_noise, (size,))

    def batch_loss(params, batch):
        a, y = batch
        return jnp.mean(jnp.square(a @ params["x"] - y))

    return sample_batch, batch_loss


@pytest.mark.parametrize("loss_batch", ["same", "fresh"])
def test_accepted_loss_never_above_the_guard_candidate_on_the_estimating_batch(loss_batch):
    """At every step: loss_est(x + update) <= loss_est(x + u_G), on the batch the guard estimates with."""
    sample_batch, batch_loss = _regression_problem()
    learned = optax.with_extra_args_support(optax.scale(-0.3))  # GD with a step too large for some batches
    guard = sgd(0.02)
    opt = guard_with_loss(learned, guard, loss_batch=loss_batch)

    @jax.jit
    def run(params, key):
        def body(carry, key):
            params, state = carry
            k_train, k_fresh = jax.random.split(key)
            train, fresh = sample_batch(k_train), sample_batch(k_fresh)
            loss_fn = lambda p: batch_loss(p, train)  # noqa: E731
            fresh_loss_fn = lambda p: batch_loss(p, fresh)  # noqa: E731
            estimate = loss_fn if loss_batch == "same" else fresh_loss_fn
            loss, grads = jax.value_and_grad(loss_fn)(params)
            guard_updates, _ = guard.update(grads, state.guard_state, params)
            learned_updates, _ = learned.update(grads, state.learned_state, params)
            updates, new_state = opt.update(
                grads, state, params, loss=loss, loss_fn=loss_fn, fresh_loss_fn=fresh_loss_fn
            )
            new_params = optax.apply_updates(params, updates)
            took_learned = new_state.num_fallbacks == state.num_fallbacks
            record = {
                "accepted": estimate(new_params),
                "guard": estimate(optax.apply_updates(params, guard_updates)),
                "took_learned": took_learned,
                # the decision the training batch alone would have made
                "train_prefers_learned": loss_fn(optax.apply_updates(params, learned_updates))
                <= loss_fn(optax.apply_updates(params, guard_updates)),
            }
            return (new_params, new_state), record

        return jax.lax.scan(body, (params, opt.init(params)), jax.random.split(key, 300))

    (_, state), rec = run({"x": jnp.zeros(DIM)}, jax.random.key(0))
    rec = jax.tree.map(np.asarray, rec)
    assert np.all(rec["accepted"] <= rec["guard"] * (1 + 1e-6) + 1e-7)
    # both decisions occur, so the inequality was exercised on learned and guard steps alike
    assert 0 < int(state.num_fallbacks) < int(state.num_steps) == 300
    disagreements = np.sum(rec["took_learned"] != rec["train_prefers_learned"])
    if loss_batch == "same":
        assert disagreements == 0
    else:  # the fresh batch decides, and it disagrees with the training batch on some steps
        assert disagreements > 0


# ----------------------------------------------------------------------------- ill-conditioned quadratic


def ill_conditioned_quadratic(dim=10, kappa=100.0):
    """f(x) = ½ (x − x*)ᵀ H (x − x*), eigenvalues of H log-spaced in [1, kappa] (L = kappa)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    h = jnp.asarray((q * np.logspace(0, np.log10(kappa), dim)) @ q.T, jnp.float32)
    x_star = jnp.asarray(rng.normal(size=dim), jnp.float32)

    def loss(params):
        d = params["x"] - x_star
        return 0.5 * d @ (h @ d)

    return loss, {"x": jnp.zeros(dim, jnp.float32)}


def run_on(loss, params, opt, num_steps):
    @jax.jit
    def go(params):
        def body(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = opt.update(grads, state, params, loss=value, loss_fn=loss)
            return (optax.apply_updates(params, updates), state), value

        (params, state), losses = jax.lax.scan(body, (params, opt.init(params)), None, length=num_steps)
        return params, state, losses

    return go(params)


_BIG_META = jax.tree.map(lambda x: 10.0 * x, SmallFcLOpt().init_meta_params(jax.random.key(1)))
DIVERGENT = {
    "ascent_10g": lambda: optax.with_extra_args_support(optax.scale(10.0)),  # u = +10·g
    "small_fc_lopt_x10": lambda: SmallFcLOpt().make(_BIG_META, num_steps=1500),  # raises the loss alone
}


@pytest.mark.parametrize("name", sorted(DIVERGENT))
def test_converges_on_an_ill_conditioned_quadratic_with_a_divergent_learned_optimizer(name):
    loss, params = ill_conditioned_quadratic()
    _, _, alone = run_on(loss, params, DIVERGENT[name](), 50)
    assert not alone[-1] < alone[0]  # the learned optimizer alone does not descend
    lr = 1.0 / 100.0  # 1/L
    final, state, losses = run_on(loss, params, guard_with_loss(DIVERGENT[name](), sgd(lr)), 1500)
    losses = np.asarray(losses)
    assert np.all(np.diff(losses) <= 0)  # every step is at least a GD step from the same point
    assert float(loss(final)) <= 1e-6 * losses[0]
    assert 0.9 <= float(fallback_fraction(state)) <= 1.0


def test_nan_producing_learned_optimizer_is_never_accepted():
    # small_fc_lopt with 100× its initial meta-params overflows to inf/NaN on its first step
    big = jax.tree.map(lambda x: 100.0 * x, SmallFcLOpt().init_meta_params(jax.random.key(1)))
    loss, params = ill_conditioned_quadratic()
    final, state, losses = run_on(loss, params, guard_with_loss(SmallFcLOpt().make(big, num_steps=30), sgd(0.01)), 30)
    plain, _, _ = run_on(loss, params, sgd(0.01), 30)
    assert int(state.num_fallbacks) == int(state.num_steps) == 30
    np.testing.assert_allclose(final["x"], plain["x"], rtol=1e-6)  # plain GD (up to XLA rounding)


def test_non_finite_entry_in_a_parameter_the_loss_ignores_is_never_accepted():
    def nan_in_unused(updates, state, params=None, **extra_args):
        return {"x": -0.5 * updates["x"], "unused": jnp.full_like(updates["unused"], jnp.nan)}, state

    learned = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), nan_in_unused)
    f = lambda p: parabola(p) + 0.0 * jnp.sum(jnp.nan_to_num(p["unused"]))  # noqa: E731
    opt = guard_with_loss(learned, sgd(0.01))
    params = {"x": jnp.asarray([3.0, -2.0]), "unused": jnp.zeros(2)}
    state = opt.init(params)
    for _ in range(3):
        updates, state = opt.update(jax.grad(f)(params), state, params, loss_fn=f)
        params = optax.apply_updates(params, updates)
    # the learned step on x alone would win every time (lower loss), but it carries a NaN
    assert int(state.num_fallbacks) == 3
    assert np.all(np.isfinite(np.asarray(params["unused"])))
