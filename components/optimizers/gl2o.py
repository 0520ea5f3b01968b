"""Safeguarded learned optimization with a fixed-point residual test (GL2O / Safe-L2O).

Heaton, Chen, Wang, Yin, "Safeguarded Learned Convex Optimization" (arXiv 2003.01880, AAAI 2023);
``research/algorithms.md`` §6.1. A learned proposal is accepted only if it shrinks the fixed-point
residual of a provably convergent *fallback* operator ``T`` enough; otherwise the run takes ``T``'s
step. Here ``T`` is one step of an optax transformation (the *fallback*) driven by the gradient of
the loss closure:

.. code-block:: text

    T(x) = x + u_F(∇f(x))          e.g. sgd(lr):  T(x) = x − lr·∇f(x)
    r(x) = ‖x − T(x)‖₂ = ‖u_F(∇f(x))‖₂   (over all leaves)

    step k, at x_k with g_k = ∇f(x_k) (the gradient passed to update):
      u_L = learned.update(g_k)            y = x_k + u_L          (learned proposal)
      u_F = fallback.update(g_k)           T(x_k) = x_k + u_F,  r(x_k) = ‖u_F‖
      μ_k = r(x_k) on the first step (μ_1 = r(x_1)), else the stored μ
      r(y) = ‖u_F(∇f(y))‖                  one extra gradient, of loss_fn at y
      accept  ⇔  u_L finite, r(y) finite and r(y) ≤ (1 − α)·μ_k
      x_{k+1} = y if accept else T(x_k)
      μ_{k+1} = scheme(μ_k, r(y)) if accept else μ_k

``μ`` schemes (``mu_schedule``), applied on accepted steps only:

* ``"ema"``: ``μ ← θ·r(x_{k+1}) + (1 − θ)·μ`` (``ema_theta``; the paper's most practical choice);
* ``"geometric"``: ``μ ← (1 − δ)·μ`` (``geometric_delta``): accepted residuals must beat a
  geometric sequence;
* ``"recent_term"``: ``μ ← r(x_{k+1})``;
* ``"recent_max"``: ``μ ← max`` of the residuals of the last ``m`` accepted iterates
  (``recent_max_window``; the window starts filled with ``μ_1``).

Guarantee (the paper's, for convex ``f`` and an averaged operator ``T``: with the gradient step
``sgd(lr)``, ``0 < lr < 2/L`` on an L-smooth convex ``f``): the safeguarded iterates converge, whatever
the learned optimizer proposes. Rejected proposals cost nothing but the test; accepted ones must
shrink the residual by a factor ``1 − α`` relative to ``μ``, which itself only decreases.

Caveat, measured on a κ = 100 quadratic (``tests/components/optimizers/test_gl2o.py``): the test
bounds the residual ``‖∇f‖``, not the loss. A proposal that keeps the residual can move far along a
flat direction (``f = ½ ∇fᵀ H⁻¹ ∇f`` for a quadratic), so with the lenient defaults a divergent
learned optimizer (``u = +10·g``) is accepted on ~0.6 % of the steps and the loss climbs to ~30× its
start; convergence is then only as fast as ``μ`` shrinks (at most a factor ``1 − αθ`` per accepted
step for EMA). With ``alpha=0.9`` the same run reaches 1e-5 of the initial loss in 2000 steps.
Conversely, a large ``α`` rejects good proposals whose residual contracts by less than about
``αθ`` per step (gradient descent contracts it by only ``1 − 1/κ``). Choose ``α`` per problem;
:func:`~components.optimizers.guards.guard_with_loss` has neither problem there.

Cost per step: both inner updates, plus **one gradient of ``loss_fn`` at the proposal** (a forward
and a backward pass) and one more fallback update to evaluate ``T(y)``; about twice a plain step's
compute. The loss closure must be the one the gradient came from (the same batch) so that ``T``
is one operator.

Choices we made (the paper's full text was not available to us; the acceptance test and the
schemes EMA, geometric and recent term follow the authors' public ``mu_updater.py``; the rest is ours):

* Neural-network training has no fixed ``T``: we build it from the fallback transformation. If the
  fallback has state (Adam, momentum SGD), ``T`` changes from step to step and is not a fixed map;
  the convergence guarantee then does not apply (it is only for stateless gradient steps such as
  ``sgd(lr)`` without momentum). ``T(y)`` uses the fallback's state *before* step ``k`` (the same
  map as ``T(x_k)``) and its resulting state is discarded; ``T(y)`` receives ``params=y`` and
  ``loss=f(y)`` (the other extra args unchanged).
* **Both inner states advance every step** with ``g_k``, whichever candidate is taken (as in
  :func:`~components.optimizers.guards.guard_with_loss`).
* ``‖·‖`` is the Euclidean norm over all leaves, computed in float32.
* The first step is recognised by ``num_steps == 0`` (no separate flag).
* A non-finite ``r(x_1)`` makes ``μ`` non-finite: every later proposal is rejected (the run is
  then plain fallback). A proposal with any non-finite entry is never accepted, even when ``r(y)``
  is finite.
* ``recent_max`` counts accepted iterates only, like the other schemes (our reading, unverified:
  the authors' code also fills its window on rejected steps).
* Acceptance uses ``≤`` as in ``research/algorithms.md`` §6.1 (the authors' code uses ``<``).
* Defaults ``alpha=0.01``, ``ema_theta=0.1`` are ours: with them a learned optimizer whose steps
  shrink the residual by at least ``α·θ = 0.1 %`` per step is accepted in the long run (EMA steady
  state: accept ⇔ contraction ``ρ ≤ 1 − αθ`` when ``1 − θ < ρ``). ``geometric_delta=0.01``,
  ``recent_max_window=10`` likewise.

The wrapper never raises inside jit; it counts steps and fallbacks in its state, and
:func:`~components.optimizers.guards.fallback_fraction` reports the fraction.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from components.optimizers import adam, fallback_fraction, sgd
  >>> f = lambda p: jnp.sum(p["x"] ** 2)
  >>> opt = guard_with_fixed_point(adam(0.1), sgd(0.1))
  >>> params = {"x": jnp.ones(2)}
  >>> state = opt.init(params)
  >>> updates, state = opt.update(jax.grad(f)(params), state, params, loss_fn=f)
  >>> float(fallback_fraction(state)) in (0.0, 1.0)
  True
"""

from numbers import Integral, Real
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from components.optimizers.guards import all_finite, check_transformation, select_updates

__all__ = ["MU_SCHEDULES", "GuardWithFixedPointState", "guard_with_fixed_point", "tree_norm"]

MU_SCHEDULES = ("ema", "geometric", "recent_term", "recent_max")


def tree_norm(tree: Any) -> jax.Array:
    """Euclidean norm over all entries of all leaves, in float32 (0 for an empty tree)."""
    leaves = jax.tree.leaves(tree)
    total = sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves), jnp.zeros([], jnp.float32))
    return jnp.sqrt(total)


class GuardWithFixedPointState(NamedTuple):
    """State of :func:`guard_with_fixed_point`.

    Attributes:
      learned_state: state of the learned (guarded) transformation.
      fallback_state: state of the fallback transformation (the operator ``T``).
      mu: float32 safeguard level ``μ_k`` (0 before the first step, then ``r(x_1)``).
      recent_residuals: float32 ``[m]`` residuals of the last ``m`` accepted iterates
        (``recent_max`` only; shape ``[1]`` and unused otherwise).
      recent_index: int32 next slot of ``recent_residuals`` to overwrite.
      num_steps: int32 number of updates taken.
      num_fallbacks: int32 number of updates where ``T(x_k)`` was taken.
    """

    learned_state: Any
    fallback_state: Any
    mu: jax.Array
    recent_residuals: jax.Array
    recent_index: jax.Array
    num_steps: jax.Array
    num_fallbacks: jax.Array


def _check_fraction(value, name: str, *, closed_right: bool, hint: str) -> float:
    ok = (
        isinstance(value, Real)
        and not isinstance(value, bool)
        and 0 < value
        and (value <= 1 if closed_right else value < 1)
    )
    if not ok:
        interval = "(0, 1]" if closed_right else "(0, 1)"
        raise ValueError(f"guard_with_fixed_point: {name} must be a float in {interval}, got {value!r}. {hint}")
    return float(value)


def guard_with_fixed_point(
    learned: optax.GradientTransformation,
    fallback: optax.GradientTransformation,
    *,
    alpha: float = 0.01,
    mu_schedule: str = "ema",
    ema_theta: float = 0.1,
    geometric_delta: float = 0.01,
    recent_max_window: int = 10,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``learned`` with the Safe-L2O fixed-point safeguard of ``fallback`` (module docstring).

    Args:
      learned: the optimizer to guard (usually ``lopt.make(θ, num_steps=T)``).
      fallback: the transformation defining ``T(x) = x + u_F(∇f(x))``; ``sgd(lr)`` (no momentum)
        with ``lr < 2/L`` for the convergence guarantee (``lr ≤ 1/L`` is the usual choice).
      alpha: required relative decrease ``α ∈ (0, 1)``: accept iff ``r(y) ≤ (1 − α)·μ``.
      mu_schedule: how ``μ`` moves on accepted steps, one of :data:`MU_SCHEDULES`.
      ema_theta: ``θ ∈ (0, 1]`` of ``"ema"``.
      geometric_delta: ``δ ∈ (0, 1)`` of ``"geometric"``.
      recent_max_window: window length ``m ≥ 1`` of ``"recent_max"``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
      loss_fn, **extra_args)`` needs ``params`` and the keyword extra arg ``loss_fn`` (a closure
      ``params -> scalar loss`` on the batch ``grads`` came from). All extra args are forwarded to
      both inner transformations.

    Raises:
      TypeError: at construction, when ``learned`` or ``fallback`` is not a transformation or
        ``recent_max_window`` is not an int; at trace time, without ``loss_fn`` or ``params``.
      ValueError: at construction, for a parameter out of range or an unknown ``mu_schedule``; at
        trace time, when ``loss_fn`` returns a non-scalar.
    """
    learned = check_transformation(learned, factory="guard_with_fixed_point", arg="learned")
    fallback = check_transformation(fallback, factory="guard_with_fixed_point", arg="fallback")
    schedule = _schedule(alpha, mu_schedule, ema_theta, geometric_delta, recent_max_window)
    alpha, window = schedule.alpha, schedule.window

    def init_fn(params):
        return GuardWithFixedPointState(
            learned_state=learned.init(params),
            fallback_state=fallback.init(params),
            mu=jnp.zeros([], jnp.float32),
            recent_residuals=jnp.zeros([window], jnp.float32),
            recent_index=jnp.zeros([], jnp.int32),
            num_steps=jnp.zeros([], jnp.int32),
            num_fallbacks=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        loss_fn = _check_update_args(extra_args.get("loss_fn"), params)
        learned_updates, learned_state = learned.update(updates, state.learned_state, params, **extra_args)
        fallback_updates, fallback_state = fallback.update(updates, state.fallback_state, params, **extra_args)
        residual_x = tree_norm(fallback_updates)  # r(x_k) = ‖x_k − T(x_k)‖
        first = state.num_steps == 0
        mu = jnp.where(first, residual_x, state.mu)
        recent = jnp.where(first, jnp.full_like(state.recent_residuals, residual_x), state.recent_residuals)

        proposal = optax.apply_updates(params, learned_updates)
        fallback_y = _fallback_at(fallback, state.fallback_state, proposal, loss_fn, updates, extra_args)
        residual_y = tree_norm(fallback_y)  # r(y) = ‖y − T(y)‖

        accept = all_finite(learned_updates) & jnp.isfinite(residual_y) & (residual_y <= (1.0 - alpha) * mu)
        accepted_mu, accepted_recent, accepted_index = _next_mu(schedule, mu, recent, state.recent_index, residual_y)
        new_updates = select_updates(accept, learned_updates, fallback_updates)
        new_state = GuardWithFixedPointState(
            learned_state=learned_state,
            fallback_state=fallback_state,
            mu=jnp.where(accept, accepted_mu, mu).astype(jnp.float32),
            recent_residuals=jnp.where(accept, accepted_recent, recent).astype(jnp.float32),
            recent_index=jnp.where(accept, accepted_index, state.recent_index).astype(jnp.int32),
            num_steps=state.num_steps + jnp.ones([], jnp.int32),
            num_fallbacks=state.num_fallbacks + (~accept).astype(jnp.int32),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _Schedule(NamedTuple):
    alpha: float
    mu_schedule: str
    theta: float
    delta: float
    window: int  # the recent-max window (1 for the other schedules)


def _schedule(alpha, mu_schedule, ema_theta, geometric_delta, recent_max_window) -> _Schedule:
    """The checked settings of :func:`guard_with_fixed_point`."""
    alpha = _check_fraction(alpha, "alpha", closed_right=False, hint="Accept iff r(y) <= (1 - alpha) * mu; try 0.01.")
    if not isinstance(mu_schedule, str) or mu_schedule not in MU_SCHEDULES:
        raise ValueError(
            f"guard_with_fixed_point: mu_schedule must be one of {list(MU_SCHEDULES)}, got {mu_schedule!r}."
        )
    theta = _check_fraction(ema_theta, "ema_theta", closed_right=True, hint="mu <- theta * r + (1 - theta) * mu.")
    delta = _check_fraction(geometric_delta, "geometric_delta", closed_right=False, hint="mu <- (1 - delta) * mu.")
    if isinstance(recent_max_window, bool) or not isinstance(recent_max_window, Integral):
        raise TypeError(f"guard_with_fixed_point: recent_max_window must be an int, got {recent_max_window!r}.")
    if recent_max_window < 1:
        raise ValueError(f"guard_with_fixed_point: recent_max_window must be >= 1, got {recent_max_window}.")
    window = int(recent_max_window) if mu_schedule == "recent_max" else 1
    return _Schedule(alpha, mu_schedule, theta, delta, window)


def _next_mu(schedule: _Schedule, mu, recent, index, r_next):
    """``μ_{k+1}`` (and the recent-max window) after an accepted step with residual ``r_next``."""
    if schedule.mu_schedule == "ema":
        return schedule.theta * r_next + (1.0 - schedule.theta) * mu, recent, index
    if schedule.mu_schedule == "geometric":
        return (1.0 - schedule.delta) * mu, recent, index
    if schedule.mu_schedule == "recent_term":
        return r_next, recent, index
    recent = recent.at[index].set(r_next)
    return jnp.max(recent), recent, (index + 1) % schedule.window


def _check_update_args(loss_fn, params):
    if loss_fn is None or not callable(loss_fn):
        raise TypeError(
            "guard_with_fixed_point needs the loss closure to evaluate the fixed-point residual at the "
            f"learned proposal, got loss_fn={loss_fn!r}. Call opt.update(grads, state, params, "
            "loss_fn=lambda p: loss(p, batch)) with the batch the gradient came from."
        )
    if params is None:
        raise TypeError(
            "guard_with_fixed_point forms the proposal params + update, so it needs the current params: "
            "call opt.update(grads, state, params, loss_fn=...)."
        )
    return loss_fn


def _fallback_at(fallback, fallback_state, proposal, loss_fn, updates, extra_args):
    """The fallback's update at the proposal ``y`` (from the gradient of ``loss_fn`` there): ``y − T(y)``."""
    loss_y, vjp = jax.vjp(loss_fn, proposal)
    if jnp.shape(loss_y) != ():
        raise ValueError(
            f"guard_with_fixed_point: loss_fn must return a scalar, got shape {jnp.shape(loss_y)}. "
            "Reduce the loss (e.g. jnp.mean) inside the closure."
        )
    (grads_y,) = vjp(jnp.ones_like(loss_y))
    grads_y = jax.tree.map(lambda g, u: g.astype(u.dtype), grads_y, updates)
    fallback_y, _ = fallback.update(grads_y, fallback_state, proposal, **{**extra_args, "loss": loss_y})
    return fallback_y
