"""GL2O / Safe-L2O guard: the residual test against a plain-Python reference, every μ schedule,
convergence with divergent and good learned optimizers, non-finite proposals, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import SmallFcLOpt, adam, fallback_fraction, sgd
from components.optimizers.gl2o import MU_SCHEDULES, GuardWithFixedPointState, guard_with_fixed_point, tree_norm


def constant_step(step):
    """A 'learned optimizer' that always proposes the same displacement."""

    def update(updates, state, params=None, **extra_args):
        return jax.tree.map(lambda g, s: jnp.full_like(g, 0.0) + s, updates, step), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def half_norm_sq(params):
    return 0.5 * jnp.sum(jnp.square(params["x"]))


# ----------------------------------------------------------------------------- reference


def reference_run(x0, step, lr, num_steps, *, alpha, schedule, theta=0.5, delta=0.2, window=3):
    """The algorithm of the module docstring in plain Python, for f = ½‖x‖² (∇f(x) = x) and T = GD(lr)."""
    r = lambda x: lr * np.linalg.norm(x)  # ‖x − T(x)‖  # noqa: E731
    x, mu, recent, index = np.asarray(x0, np.float64), None, None, 0
    taken, mus = [], []
    for _ in range(num_steps):
        if mu is None:
            mu = r(x)
            recent = [mu] * window
        y = x + step
        if r(y) <= (1 - alpha) * mu:
            x = y
            taken.append("learned")
            if schedule == "ema":
                mu = theta * r(y) + (1 - theta) * mu
            elif schedule == "geometric":
                mu = (1 - delta) * mu
            elif schedule == "recent_term":
                mu = r(y)
            else:
                recent[index] = r(y)
                index = (index + 1) % window
                mu = max(recent)
        else:
            x = x - lr * x
            taken.append("fallback")
        mus.append(mu)
    return taken, np.asarray(mus)


@pytest.mark.parametrize("schedule", MU_SCHEDULES)
def test_matches_the_plain_python_reference(schedule):
    step = np.asarray([-0.3, 0.1], np.float32)
    x0 = np.asarray([2.0, -0.5], np.float32)
    lr, alpha, num_steps = 0.25, 0.1, 25
    expected_taken, expected_mu = reference_run(x0, step, lr, num_steps, alpha=alpha, schedule=schedule)
    assert "learned" in expected_taken and "fallback" in expected_taken  # both branches exercised

    opt = guard_with_fixed_point(
        constant_step({"x": jnp.asarray(step)}),
        sgd(lr),
        alpha=alpha,
        mu_schedule=schedule,
        ema_theta=0.5,
        geometric_delta=0.2,
        recent_max_window=3,
    )
    params = {"x": jnp.asarray(x0)}
    state = opt.init(params)
    assert float(state.mu) == 0.0
    step_fn = jax.jit(lambda p, s: opt.update(jax.grad(half_norm_sq)(p), s, p, loss_fn=half_norm_sq))
    taken, mus = [], []
    for _ in range(num_steps):
        before = int(state.num_fallbacks)
        updates, state = step_fn(params, state)
        params = optax.apply_updates(params, updates)
        taken.append("fallback" if int(state.num_fallbacks) > before else "learned")
        mus.append(float(state.mu))
    assert taken == expected_taken
    np.testing.assert_allclose(mus, expected_mu, rtol=1e-5)
    assert int(state.num_steps) == num_steps
    np.testing.assert_allclose(fallback_fraction(state), expected_taken.count("fallback") / num_steps)


def test_first_step_sets_mu_to_the_residual_at_x1():
    params = {"x": jnp.asarray([3.0, 4.0])}
    opt = guard_with_fixed_point(constant_step({"x": jnp.zeros(2)}), sgd(0.1))
    _, state = opt.update(jax.grad(half_norm_sq)(params), opt.init(params), params, loss_fn=half_norm_sq)
    # the zero proposal has r(y) = r(x1) > (1 − α)·μ1: rejected, μ stays at r(x1) = 0.1·‖x1‖ = 0.5
    assert int(state.num_fallbacks) == 1
    np.testing.assert_allclose(state.mu, 0.5, rtol=1e-6)


def test_fixed_point_operator_sees_the_proposal_and_its_loss():
    calls = []

    def recording_sgd(updates, state, params=None, **extra_args):
        calls.append((params, extra_args.get("loss")))
        return jax.tree.map(lambda g: -0.1 * g, updates), state

    fallback = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), recording_sgd)
    params = {"x": jnp.asarray([1.0, 2.0])}
    opt = guard_with_fixed_point(constant_step({"x": jnp.asarray([0.5, 0.5])}), fallback)
    opt.update(jax.grad(half_norm_sq)(params), opt.init(params), params, loss=jnp.float32(9.0), loss_fn=half_norm_sq)
    (x_params, x_loss), (y_params, y_loss) = calls
    np.testing.assert_array_equal(x_params["x"], [1.0, 2.0])
    assert float(x_loss) == 9.0
    np.testing.assert_array_equal(y_params["x"], [1.5, 2.5])  # y = x + u_L
    np.testing.assert_allclose(y_loss, 0.5 * (1.5**2 + 2.5**2))  # loss= is f(y) for T(y)


def test_both_inner_states_advance_every_step():
    params = {"x": jnp.asarray([3.0, -2.0])}
    # Adam as the learned optimizer, rejected every step (α = 0.9 asks for a 10× smaller residual);
    # Adam as the fallback: T(y) is evaluated with the pre-step state, so its count is steps, not 2·steps.
    opt = guard_with_fixed_point(adam(1e-4), adam(0.1), alpha=0.9)
    state = opt.init(params)
    for _ in range(4):
        updates, state = opt.update(jax.grad(half_norm_sq)(params), state, params, loss_fn=half_norm_sq)
        params = optax.apply_updates(params, updates)
    assert int(state.num_fallbacks) == 4
    assert int(state.learned_state[0].count) == 4
    assert int(state.fallback_state[0].count) == 4


# ----------------------------------------------------------------------------- ill-conditioned quadratic

KAPPA = 100.0
LR = 1.0 / KAPPA  # 1/L


def ill_conditioned_quadratic(dim=10, kappa=KAPPA):
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
    "small_fc_lopt_x10": lambda: SmallFcLOpt().make(_BIG_META, num_steps=2000),  # raises the loss alone
}
# Strict safeguards (α = 0.9: an accepted proposal must cut the residual 10× below μ), under which the
# guaranteed convergence shows within the step budget. With lenient ones (the default α = 0.01) the
# run still converges in the limit, but far slower: see test_residual_test_does_not_bound_the_loss.
_STRICT = {
    "ema": dict(alpha=0.9, mu_schedule="ema", ema_theta=0.9),
    "geometric": dict(alpha=0.9, mu_schedule="geometric", geometric_delta=0.9),
    "recent_term": dict(alpha=0.9, mu_schedule="recent_term"),
    "recent_max": dict(alpha=0.9, mu_schedule="recent_max", recent_max_window=2),
}
_DIVERGENT_CASES = [("ascent_10g", s) for s in MU_SCHEDULES] + [("small_fc_lopt_x10", "ema")]


@pytest.mark.parametrize(("name", "schedule"), _DIVERGENT_CASES)
def test_converges_with_a_divergent_learned_optimizer(name, schedule):
    loss, params = ill_conditioned_quadratic()
    _, _, alone = run_on(loss, params, DIVERGENT[name](), 50)
    assert not alone[-1] < alone[0]  # the learned optimizer alone does not descend
    opt = guard_with_fixed_point(DIVERGENT[name](), sgd(LR), **_STRICT[schedule])
    final, state, losses = run_on(loss, params, opt, 2000)
    assert np.all(np.isfinite(np.asarray(losses)))
    assert float(loss(final)) <= 1e-5 * float(losses[0])
    assert 0.0 < float(fallback_fraction(state)) <= 1.0
    assert isinstance(state, GuardWithFixedPointState)


@pytest.mark.parametrize("schedule", MU_SCHEDULES)
def test_residual_test_does_not_bound_the_loss(schedule):
    """Default (lenient) safeguard: accepted iterates obey r(x_{k+1}) <= (1 − α)·μ_k and μ never grows,
    yet the loss can rise far above its start: a step that keeps ‖∇f‖ can move x along a flat direction
    (f = ½ ∇fᵀ H⁻¹ ∇f), so on this κ = 100 problem the +10·g learned optimizer is accepted a few times
    and the loss climbs to ~30× its initial value. (LGL2O's loss test never lets this happen.)"""
    loss, params = ill_conditioned_quadratic()
    opt = guard_with_fixed_point(DIVERGENT["ascent_10g"](), sgd(LR), mu_schedule=schedule)
    residual = lambda p: LR * tree_norm(jax.grad(loss)(p))  # noqa: E731

    @jax.jit
    def go(params):
        def body(carry, _):
            params, state = carry
            updates, new_state = opt.update(jax.grad(loss)(params), state, params, loss_fn=loss)
            new_params = optax.apply_updates(params, updates)
            record = {
                "loss": loss(new_params),
                "accepted": new_state.num_fallbacks == state.num_fallbacks,
                "residual": residual(new_params),
                "mu_before": jnp.where(state.num_steps == 0, residual(params), state.mu),
                "mu_after": new_state.mu,
            }
            return (new_params, new_state), record

        return jax.lax.scan(body, (params, opt.init(params)), None, length=1000)

    _, rec = go(params)
    rec = jax.tree.map(np.asarray, rec)
    acc = rec["accepted"]
    assert 0 < acc.sum() < 1000
    assert np.all(rec["residual"][acc] <= (1 - 0.01) * rec["mu_before"][acc] * (1 + 1e-5))
    assert np.all(np.diff(rec["mu_after"]) <= 0)
    assert rec["loss"].max() > 10 * float(loss(params))


def test_good_learned_optimizers_are_accepted():
    loss, params = ill_conditioned_quadratic()
    # learned == the fallback's gradient step: the residual shrinks by a factor <= 1 − 1/κ = 0.99 per
    # step, and the EMA level μ stays ~10 % above it, so the default test (α = 0.01) always passes.
    # (1000 steps: past ~1100 the float32 gradient is rounding noise and the test turns random.)
    _, state, _ = run_on(loss, params, guard_with_fixed_point(sgd(LR), sgd(LR)), 1000)
    assert float(fallback_fraction(state)) <= 0.01
    # a faster gradient step (1.5/L, still convergent) is accepted and beats the fallback alone
    final, state, _ = run_on(loss, params, guard_with_fixed_point(sgd(1.5 * LR), sgd(LR)), 500)
    gd, _, _ = run_on(loss, params, sgd(LR), 500)
    assert float(fallback_fraction(state)) <= 0.01
    assert float(loss(final)) < 0.5 * float(loss(gd))


def test_nan_producing_learned_optimizer_is_never_accepted():
    # small_fc_lopt with 100× its initial meta-params overflows to inf/NaN on its first step
    big = jax.tree.map(lambda x: 100.0 * x, SmallFcLOpt().init_meta_params(jax.random.key(1)))
    loss, params = ill_conditioned_quadratic()
    opt = guard_with_fixed_point(SmallFcLOpt().make(big, num_steps=30), sgd(LR))
    final, state, _ = run_on(loss, params, opt, 30)
    plain, _, _ = run_on(loss, params, sgd(LR), 30)
    assert int(state.num_fallbacks) == int(state.num_steps) == 30
    np.testing.assert_allclose(final["x"], plain["x"], rtol=1e-6)  # plain GD (up to XLA rounding)


def test_non_finite_entry_in_a_parameter_the_loss_ignores_is_never_accepted():
    def nan_in_unused(updates, state, params=None, **extra_args):
        return {"x": -0.5 * updates["x"], "unused": jnp.full_like(updates["unused"], jnp.nan)}, state

    learned = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), nan_in_unused)
    f = lambda p: half_norm_sq(p) + 0.0 * jnp.sum(jnp.nan_to_num(p["unused"]))  # noqa: E731
    opt = guard_with_fixed_point(learned, sgd(0.1))
    params = {"x": jnp.asarray([3.0, -2.0]), "unused": jnp.zeros(2)}
    state = opt.init(params)
    for _ in range(3):
        updates, state = opt.update(jax.grad(f)(params), state, params, loss_fn=f)
        params = optax.apply_updates(params, updates)
    # the residual at the proposal is finite and small (x is halved), but the proposal carries a NaN
    assert int(state.num_fallbacks) == 3
    assert np.all(np.isfinite(np.asarray(params["unused"])))


# ----------------------------------------------------------------------------- contract


def _mixed_params():
    rng = np.random.default_rng(0)
    shapes = {"scalar": (), "bias": (5,), "kernel": (4, 3), "conv": (3, 3, 2, 4)}
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    params["half"] = jnp.asarray(rng.normal(size=(3,)), jnp.bfloat16)
    return params


def _loss(params):
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32) - 0.5)) for x in jax.tree.leaves(params))


def test_jit_vmap_stable_state_and_no_recompilation():
    opt = guard_with_fixed_point(adam(0.05), sgd(0.05), mu_schedule="recent_max", recent_max_window=4)
    traces = []

    @jax.jit
    @jax.vmap
    def step(params, state):
        traces.append(1)
        loss, grads = jax.value_and_grad(_loss)(params)
        updates, state = opt.update(grads, state, params, loss=loss, loss_fn=_loss, unused=1.0)
        return optax.apply_updates(params, updates), state, updates

    params = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), _mixed_params())
    state0 = jax.vmap(opt.init)(params)
    params, state1, updates = step(params, state0)
    params, state2, _ = step(params, state1)
    assert len(traces) == 1
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
    assert shapes(state0) == shapes(state1) == shapes(state2)
    assert shapes(updates) == shapes(params)
    assert fallback_fraction(state2).shape == (2,)
    assert all(np.all(np.isfinite(np.asarray(u, np.float32))) for u in jax.tree.leaves(updates))


def test_tree_norm():
    tree = {"a": jnp.asarray([3.0]), "b": jnp.asarray([[4.0]], jnp.bfloat16), "c": jnp.float32(12.0)}
    np.testing.assert_allclose(tree_norm(tree), 13.0)


def test_update_errors():
    opt = guard_with_fixed_point(sgd(0.1), sgd(0.1))
    params = {"x": jnp.ones(2)}
    state = opt.init(params)
    with pytest.raises(TypeError, match=r"needs the loss closure.*loss_fn=lambda p: loss\(p, batch\)"):
        opt.update(params, state, params, loss=jnp.float32(1.0))
    with pytest.raises(TypeError, match="needs the loss closure"):
        jax.jit(lambda p, s: opt.update(p, s, p))(params, state)
    with pytest.raises(TypeError, match="needs the current params"):
        opt.update(params, state, None, loss_fn=half_norm_sq)
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        opt.update(params, state, params, loss_fn=lambda p: p["x"])


def test_construction_errors():
    with pytest.raises(TypeError, match="learned must be an optax GradientTransformation"):
        guard_with_fixed_point(lambda g: g, sgd(0.1))
    with pytest.raises(TypeError, match="fallback must be an optax GradientTransformation"):
        guard_with_fixed_point(sgd(0.1), None)
    for bad in (0.0, 1.0, -0.5, True):
        with pytest.raises(ValueError, match=r"alpha must be a float in \(0, 1\)"):
            guard_with_fixed_point(sgd(0.1), sgd(0.1), alpha=bad)
    with pytest.raises(ValueError, match=r"mu_schedule must be one of \['ema', 'geometric', 'recent_term'"):
        guard_with_fixed_point(sgd(0.1), sgd(0.1), mu_schedule="EMA")
    with pytest.raises(ValueError, match=r"ema_theta must be a float in \(0, 1\]"):
        guard_with_fixed_point(sgd(0.1), sgd(0.1), ema_theta=0.0)
    guard_with_fixed_point(sgd(0.1), sgd(0.1), ema_theta=1.0)  # θ = 1 is recent_term: allowed
    with pytest.raises(ValueError, match=r"geometric_delta must be a float in \(0, 1\)"):
        guard_with_fixed_point(sgd(0.1), sgd(0.1), geometric_delta=1.0)
    with pytest.raises(TypeError, match="recent_max_window must be an int"):
        guard_with_fixed_point(sgd(0.1), sgd(0.1), recent_max_window=2.0)
    with pytest.raises(ValueError, match="recent_max_window must be >= 1"):
        guard_with_fixed_point(sgd(0.1), sgd(0.1), recent_max_window=0)
