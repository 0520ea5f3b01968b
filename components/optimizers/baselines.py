"""Hand-designed baseline optimizers (thin optax wrappers with the common extra-args contract).

Every factory returns an ``optax.GradientTransformationExtraArgs`` whose ``update`` accepts and
ignores the per-step extra args of learned optimizers and guards (``loss=``, ``loss_fn=``), so one
training loop drives baselines, learned and guarded optimizers alike. ``learning_rate`` may be a
traced scalar, e.g. to ``jax.vmap`` a run over a grid of learning rates.

Example:
  >>> import jax.numpy as jnp
  >>> opt = make_baseline("adam", 1e-3)
  >>> params = {"w": jnp.ones(3)}
  >>> state = opt.init(params)
  >>> updates, state = opt.update({"w": jnp.ones(3)}, state, params, loss=jnp.float32(0.0))
"""

from collections.abc import Callable
from numbers import Real

import jax
import optax

__all__ = ["BASELINES", "adam", "make_baseline", "sgd"]


def _check_learning_rate(learning_rate, factory: str) -> None:
    if isinstance(learning_rate, Real) and not learning_rate >= 0:
        raise ValueError(
            f"{factory}: learning_rate must be >= 0, got {learning_rate!r}. "
            "Pass the step size as a positive number (the update is -learning_rate * direction)."
        )


def adam(
    learning_rate: float | jax.Array,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    """Adam (Kingma & Ba, 2015) with bias correction.

    ``m ← b1·m + (1−b1)·g``, ``v ← b2·v + (1−b2)·g²``,
    ``Δp = −lr · m̂ / (sqrt(v̂) + eps)`` with ``m̂ = m/(1−b1^t)``, ``v̂ = v/(1−b2^t)``.

    Args:
      learning_rate: step size (a float or a possibly traced scalar).
      b1: first-moment decay.
      b2: second-moment decay.
      eps: added to ``sqrt(v̂)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that ignores extra args.

    Raises:
      ValueError: for a negative Python learning rate.
    """
    _check_learning_rate(learning_rate, "adam")
    return optax.with_extra_args_support(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def sgd(learning_rate: float | jax.Array, momentum: float = 0.0) -> optax.GradientTransformationExtraArgs:
    """Stochastic gradient descent with optional heavy-ball momentum.

    ``μ ← momentum·μ + g`` and ``Δp = −lr·μ``; with ``momentum == 0`` (a Python zero) no
    momentum buffer is kept and ``Δp = −lr·g``.

    Args:
      learning_rate: step size (a float or a possibly traced scalar).
      momentum: momentum coefficient (a float or a possibly traced scalar).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that ignores extra args.

    Raises:
      ValueError: for a negative Python learning rate.
    """
    _check_learning_rate(learning_rate, "sgd")
    use_momentum = not (isinstance(momentum, Real) and momentum == 0)
    tx = optax.sgd(learning_rate, momentum=momentum if use_momentum else None)
    return optax.with_extra_args_support(tx)


BASELINES: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    "adam": adam,
    "sgd": sgd,
}


def make_baseline(name: str, learning_rate: float | jax.Array) -> optax.GradientTransformationExtraArgs:
    """Builds the baseline ``name`` with its default hyperparameters and ``learning_rate``.

    Args:
      name: one of ``"adam"``, ``"sgd"``.
      learning_rate: step size (a float or a possibly traced scalar).

    Raises:
      ValueError: for an unknown name (the message lists the allowed values).
    """
    try:
        factory = BASELINES[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown baseline optimizer {name!r}; expected one of {sorted(BASELINES)}.") from None
    return factory(learning_rate)
