"""Loss-guarded learned optimization (LGL2O, Prémont-Schwarz et al., ICML 2022).

``guard_with_loss(learned, guard)`` runs a learned optimizer and a hand-designed *guard* optimizer
side by side and, at every step, keeps the candidate with the lower loss
(``research/algorithms.md`` §6.2):

.. code-block:: text

    u_L, s_L = learned.update(g, s_L, x)          # same gradient g = ∇f(x) for both
    u_G, s_G = guard.update(g, s_G, x)
    ℓ_L = loss_fn(x + u_L);  ℓ_G = loss_fn(x + u_G)   # non-finite → +inf
    update = u_L if ℓ_L <= ℓ_G (and ℓ_L is finite) else u_G

With gradient descent as the guard on an L-smooth function and ``lr ≤ 1/L`` this gives
``f(x_{t+1}) ≤ f(x_t − lr·∇f(x_t))``, so the guarded run descends at least as fast *per step* as
one guard step from the same point.

State handling is our reading, not verified against the paper: **both inner states advance every
step**, whichever candidate is taken (each inner optimizer sees the shared gradient at the accepted
point). The paper's exact switching statistic (which batch, any tolerance) is also unverified; here
``loss_fn`` is whatever closure the caller passes (typically the training batch's loss). If both
losses are non-finite the guard's candidate is taken.

The wrapper never raises inside jit: it counts fallbacks (``num_fallbacks``) and steps in its state;
:func:`fallback_fraction` reports the ratio.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from components.optimizers import adam, guard_with_loss, sgd
  >>> opt = guard_with_loss(sgd(0.1), adam(0.1))
  >>> f = lambda p: jnp.sum(p["x"] ** 2)
  >>> params = {"x": jnp.ones(2)}
  >>> state = opt.init(params)
  >>> updates, state = opt.update(jax.grad(f)(params), state, params, loss_fn=f)
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["GuardWithLossState", "fallback_fraction", "guard_with_loss"]


class GuardWithLossState(NamedTuple):
    """State of :func:`guard_with_loss`.

    Attributes:
      learned_state: state of the learned (guarded) transformation.
      guard_state: state of the guard transformation.
      num_steps: int32 number of updates taken.
      num_fallbacks: int32 number of updates where the guard's candidate was taken.
    """

    learned_state: Any
    guard_state: Any
    num_steps: jax.Array
    num_fallbacks: jax.Array


def _finite_or_inf(loss: jax.Array) -> jax.Array:
    loss = jnp.asarray(loss)
    if loss.shape != ():
        raise ValueError(
            f"guard_with_loss: loss_fn must return a scalar, got shape {loss.shape}. "
            "Reduce the loss (e.g. jnp.mean) inside the closure."
        )
    return jnp.where(jnp.isfinite(loss), loss, jnp.inf)


def guard_with_loss(
    learned: optax.GradientTransformation,
    guard: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``learned`` with the LGL2O loss guard, falling back to ``guard``'s update.

    Args:
      learned: the optimizer to guard (usually a learned one, ``lopt.make(θ, num_steps=T)``).
      guard: the fallback optimizer (e.g. ``adam(lr)`` with a tuned learning rate).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
      loss_fn, **extra_args)`` needs ``params`` and the keyword extra arg ``loss_fn`` (a closure
      ``params -> scalar loss``). All extra args, ``loss_fn`` included, are forwarded to both inner
      transformations.

    Raises:
      TypeError: at trace time, when ``update`` is called without ``loss_fn`` or ``params``.
    """
    learned = optax.with_extra_args_support(learned)
    guard = optax.with_extra_args_support(guard)

    def init_fn(params):
        return GuardWithLossState(
            learned_state=learned.init(params),
            guard_state=guard.init(params),
            num_steps=jnp.zeros([], jnp.int32),
            num_fallbacks=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        loss_fn: Callable[[Any], jax.Array] | None = extra_args.get("loss_fn")
        if loss_fn is None or not callable(loss_fn):
            raise TypeError(
                "guard_with_loss needs the loss closure to compare the two candidates, got "
                f"loss_fn={loss_fn!r}. Call opt.update(grads, state, params, "
                "loss_fn=lambda p: loss(p, batch)) (other extra args such as loss= may be passed "
                "too)."
            )
        if params is None:
            raise TypeError(
                "guard_with_loss evaluates the loss at params + update, so it needs the current "
                "params: call opt.update(grads, state, params, loss_fn=...)."
            )
        learned_updates, learned_state = learned.update(updates, state.learned_state, params, **extra_args)
        guard_updates, guard_state = guard.update(updates, state.guard_state, params, **extra_args)
        loss_learned = _finite_or_inf(loss_fn(optax.apply_updates(params, learned_updates)))
        loss_guard = _finite_or_inf(loss_fn(optax.apply_updates(params, guard_updates)))
        use_learned = jnp.isfinite(loss_learned) & (loss_learned <= loss_guard)
        new_updates = jax.tree.map(
            lambda u_l, u_g: jnp.where(use_learned, u_l, u_g.astype(u_l.dtype)),
            learned_updates,
            guard_updates,
        )
        new_state = GuardWithLossState(
            learned_state=learned_state,
            guard_state=guard_state,
            num_steps=state.num_steps + jnp.ones([], jnp.int32),
            num_fallbacks=state.num_fallbacks + (~use_learned).astype(jnp.int32),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def fallback_fraction(state: GuardWithLossState) -> jax.Array:
    """Fraction of steps on which the guard's update was taken (0 before the first step)."""
    steps = jnp.maximum(state.num_steps, 1).astype(jnp.float32)
    return state.num_fallbacks.astype(jnp.float32) / steps
