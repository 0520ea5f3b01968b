"""Loss-guarded learned optimization (LGL2O, Prémont-Schwarz et al., ICML 2022).

``guard_with_loss(learned, guard)`` runs a learned optimizer and a hand-designed *guard* optimizer
side by side and, at every step, keeps the candidate with the lower estimated loss
(``research/algorithms.md`` §6.2):

.. code-block:: text

    u_L, s_L = learned.update(g, s_L, x)          # same gradient g = ∇f(x) for both
    u_G, s_G = guard.update(g, s_G, x)
    ℓ̂ = loss_fn            (loss_batch="same":  the batch g was computed on)
         fresh_loss_fn      (loss_batch="fresh": an independent batch)
    ℓ_L = ℓ̂(x + u_L);  ℓ_G = ℓ̂(x + u_G)          # non-finite → +inf
    update = u_L if (u_L finite and ℓ_L finite and ℓ_L <= ℓ_G) else u_G

With gradient descent as the guard on an L-smooth function and ``lr ≤ 1/L`` (and the exact loss as
``ℓ̂``) this gives ``f(x_{t+1}) ≤ f(x_t − lr·∇f(x_t)) ≤ f(x_t) − (lr/2)·‖∇f(x_t)‖²``, so the
guarded run descends at least as fast *per step* as one guard step from the same point, whatever
the learned optimizer proposes. With minibatches the inequality holds for the estimating batch
only: ``"same"`` reuses the training batch (no extra data, but the comparison is biased towards the
candidate that overfits that batch), ``"fresh"`` draws an independent one (an unbiased estimate of
the expected loss, which the paper's SGD-guard analysis needs; one more batch per step).

Cost per step: both inner updates plus two forward loss evaluations (no extra gradient).

Choices we made (the paper's full text was not available to us, ``research/algorithms.md`` §6.2):

* **Both inner states advance every step**, whichever candidate is taken: each inner optimizer
  sees the shared gradient at the accepted point, so e.g. Adam's moments and the learned
  optimizer's accumulators and step counter keep tracking the actual trajectory. (The alternative,
  freezing the rejected optimizer's state, would let a learned optimizer's step counter fall behind
  the run.)
* The switching statistic is the plain comparison ``ℓ_L <= ℓ_G`` (no tolerance); ties go to the
  learned candidate. If both losses are non-finite the guard's candidate is taken.
* A learned candidate with any non-finite entry is never taken, even when the loss is finite
  (a NaN in a parameter the loss does not read would otherwise slip through).

The wrapper never raises inside jit: it counts fallbacks (``num_fallbacks``) and steps in its state;
:func:`fallback_fraction` reports the ratio (for this guard and for
:func:`~components.optimizers.gl2o.guard_with_fixed_point`).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from components.optimizers import adam, guard_with_loss, sgd
  >>> opt = guard_with_loss(sgd(0.1), adam(0.1))
  >>> f = lambda p: jnp.sum(p["x"] ** 2)
  >>> params = {"x": jnp.ones(2)}
  >>> state = opt.init(params)
  >>> updates, state = opt.update(jax.grad(f)(params), state, params, loss_fn=f)
  >>> fresh = guard_with_loss(sgd(0.1), adam(0.1), loss_batch="fresh")
  >>> updates, _ = fresh.update(jax.grad(f)(params), fresh.init(params), params, fresh_loss_fn=f)
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "LOSS_BATCHES",
    "GuardWithLossState",
    "all_finite",
    "check_transformation",
    "fallback_fraction",
    "guard_with_loss",
    "select_updates",
]

# loss_batch value -> the keyword extra arg holding the loss closure used to compare candidates
LOSS_BATCHES: dict[str, str] = {"same": "loss_fn", "fresh": "fresh_loss_fn"}


def check_transformation(tx: Any, *, factory: str, arg: str) -> optax.GradientTransformationExtraArgs:
    """Validates an inner transformation and gives it extra-args support (shared by the wrappers)."""
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"{factory}: {arg} must be an optax GradientTransformation (with init and update), got {tx!r}. "
            f"Pass e.g. sgd(0.1) or lopt.make(meta_params, num_steps=T)."
        )
    return optax.with_extra_args_support(tx)


def select_updates(take_learned: jax.Array, learned_updates: Any, other_updates: Any) -> Any:
    """``learned_updates`` where ``take_learned`` (a scalar bool), else ``other_updates`` cast to their dtypes."""
    return jax.tree.map(
        lambda u_l, u_o: jnp.where(take_learned, u_l, u_o.astype(u_l.dtype)), learned_updates, other_updates
    )


def all_finite(tree: Any) -> jax.Array:
    """Scalar bool: every entry of every leaf of ``tree`` is finite (True for an empty tree)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


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


def _finite_or_inf(loss: jax.Array, arg: str) -> jax.Array:
    loss = jnp.asarray(loss)
    if loss.shape != ():
        raise ValueError(
            f"guard_with_loss: {arg} must return a scalar, got shape {loss.shape}. "
            "Reduce the loss (e.g. jnp.mean) inside the closure."
        )
    return jnp.where(jnp.isfinite(loss), loss, jnp.inf)


def guard_with_loss(
    learned: optax.GradientTransformation,
    guard: optax.GradientTransformation,
    *,
    loss_batch: str = "same",
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``learned`` with the LGL2O loss guard, falling back to ``guard``'s update.

    Args:
      learned: the optimizer to guard (usually a learned one, ``lopt.make(θ, num_steps=T)``).
      guard: the fallback optimizer (e.g. ``sgd(lr)`` with ``lr ≤ 1/L`` for the descent guarantee,
        or ``adam(lr)`` with a tuned learning rate).
      loss_batch: which batch estimates the two candidates' losses: ``"same"`` (the keyword extra
        arg ``loss_fn``, a closure on the batch the gradient was computed on) or ``"fresh"`` (the
        keyword extra arg ``fresh_loss_fn``, a closure on an independent batch).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
      loss_fn | fresh_loss_fn, **extra_args)`` needs ``params`` and the loss closure named by
      ``loss_batch`` (``params -> scalar loss``). All extra args are forwarded to both inner
      transformations.

    Raises:
      ValueError: at construction, for an unknown ``loss_batch``; at trace time, when the loss
        closure returns a non-scalar.
      TypeError: at construction, when ``learned`` or ``guard`` is not a transformation; at trace
        time, when ``update`` is called without the loss closure or without ``params``.
    """
    learned = check_transformation(learned, factory="guard_with_loss", arg="learned")
    guard = check_transformation(guard, factory="guard_with_loss", arg="guard")
    if not isinstance(loss_batch, str) or loss_batch not in LOSS_BATCHES:
        raise ValueError(
            f"guard_with_loss: loss_batch must be one of {sorted(LOSS_BATCHES)}, got {loss_batch!r}. "
            "'same' compares the candidates on the training batch (extra arg loss_fn), 'fresh' on an "
            "independent batch (extra arg fresh_loss_fn)."
        )
    loss_arg = LOSS_BATCHES[loss_batch]
    batch_name = "training batch" if loss_batch == "same" else "an independent batch"

    def init_fn(params):
        return GuardWithLossState(
            learned_state=learned.init(params),
            guard_state=guard.init(params),
            num_steps=jnp.zeros([], jnp.int32),
            num_fallbacks=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        loss_fn: Callable[[Any], jax.Array] | None = extra_args.get(loss_arg)
        if loss_fn is None or not callable(loss_fn):
            raise TypeError(
                f"guard_with_loss(loss_batch={loss_batch!r}) needs the loss closure to compare the two "
                f"candidates, got {loss_arg}={loss_fn!r}. Call opt.update(grads, state, params, "
                f"{loss_arg}=lambda p: loss(p, batch)) with batch = the {batch_name} (other extra args "
                "such as loss= may be passed too)."
            )
        if params is None:
            raise TypeError(
                "guard_with_loss evaluates the loss at params + update, so it needs the current "
                f"params: call opt.update(grads, state, params, {loss_arg}=...)."
            )
        learned_updates, learned_state = learned.update(updates, state.learned_state, params, **extra_args)
        guard_updates, guard_state = guard.update(updates, state.guard_state, params, **extra_args)
        loss_learned = _finite_or_inf(loss_fn(optax.apply_updates(params, learned_updates)), loss_arg)
        loss_guard = _finite_or_inf(loss_fn(optax.apply_updates(params, guard_updates)), loss_arg)
        use_learned = all_finite(learned_updates) & jnp.isfinite(loss_learned) & (loss_learned <= loss_guard)
        new_updates = select_updates(use_learned, learned_updates, guard_updates)
        new_state = GuardWithLossState(
            learned_state=learned_state,
            guard_state=guard_state,
            num_steps=state.num_steps + jnp.ones([], jnp.int32),
            num_fallbacks=state.num_fallbacks + (~use_learned).astype(jnp.int32),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def fallback_fraction(state: Any) -> jax.Array:
    """Fraction of steps on which a safeguard took its fallback's update (0 before the first step).

    Args:
      state: the state of :func:`guard_with_loss` or of
        :func:`~components.optimizers.gl2o.guard_with_fixed_point` (anything with int32
        ``num_steps`` and ``num_fallbacks``; batched states give a batch of fractions).

    Returns:
      float32 ``num_fallbacks / max(num_steps, 1)``.
    """
    steps = jnp.maximum(state.num_steps, 1).astype(jnp.float32)
    return state.num_fallbacks.astype(jnp.float32) / steps
