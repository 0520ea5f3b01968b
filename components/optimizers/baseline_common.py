"""Shared validation and wrapping of the hand-designed baselines (:mod:`.baselines`).

Every factory validates its Python-number hyperparameters here (clear ``ValueError`` / ``TypeError``
naming the factory and the fix; traced values pass unchecked) and wraps its optax chain with
:func:`finish` (float32 accumulators for low-precision params, updates cast back, extra args accepted).
"""

import inspect
import math
import sys
from numbers import Real

import jax
import jax.numpy as jnp
import optax

from components.optimizers.features import accumulator_dtype

__all__ = [
    "LearningRate",
    "as_vectors",
    "check_bools",
    "check_decays",
    "check_interval",
    "check_learning_rate",
    "check_nonnegative",
    "concrete_value",
    "finish",
    "no_momentum",
    "optax_baseline",
    "optax_factories",
    "promote",
]

LearningRate = float | jax.Array

# --------------------------------------------------------------------------- validation


def concrete_value(factory: str, name: str, value) -> float | None:
    """The value of a number or concrete scalar array as a float; None for a tracer (not checked)."""
    if isinstance(value, bool):
        raise TypeError(f"{factory}: {name} must be a number, got the bool {value!r}.")
    if isinstance(value, Real):
        return float(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"{factory}: {name} must be a scalar, got an array of shape {jnp.shape(value)}. "
                "To sweep several values, jax.vmap over the factory call."
            )
        return None if isinstance(value, jax.core.Tracer) else float(value)
    raise TypeError(f"{factory}: {name} must be a number or a scalar array, got {type(value).__name__} {value!r}.")


def check_learning_rate(learning_rate, factory: str) -> None:
    value = concrete_value(factory, "learning_rate", learning_rate)
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{factory}: learning_rate must be >= 0 and finite, got {learning_rate!r}. "
            "Pass the step size as a positive number (the update is -learning_rate * direction)."
        )


def check_interval(factory: str, interval: str, hint: str, *, allow_none: bool = False, **values) -> None:
    """Checks each concrete value against ``interval`` ("[0, 1)", "(0, 1]", ">= 0" or "> 0")."""
    tests = {
        "[0, 1)": lambda x: 0 <= x < 1,
        "(0, 1]": lambda x: 0 < x <= 1,
        ">= 0": lambda x: x >= 0 and math.isfinite(x),
        "> 0": lambda x: x > 0 and math.isfinite(x),
    }
    for name, value in values.items():
        if value is None and allow_none:
            continue
        concrete = concrete_value(factory, name, value)
        if concrete is not None and not tests[interval](concrete):
            where = f"in {interval}" if interval[0] in "[(" else interval
            raise ValueError(f"{factory}: {name} must be {where}, got {value!r}. {hint}")


def check_decays(factory: str, *, allow_none: bool = False, **values) -> None:
    hint = "It is an exponential-average decay; typical values are 0.9 to 0.999."
    check_interval(factory, "[0, 1)", hint, allow_none=allow_none, **values)


def check_nonnegative(factory: str, *, allow_none: bool = False, **values) -> None:
    check_interval(factory, ">= 0", "Use 0 to switch the term off.", allow_none=allow_none, **values)


def check_bools(factory: str, **values) -> None:
    for name, value in values.items():
        if not isinstance(value, bool):
            raise TypeError(f"{factory}: {name} must be True or False, got {type(value).__name__} {value!r}.")


# --------------------------------------------------------------------------- common wrapper


def promote(tree):
    return jax.tree.map(lambda x: jnp.asarray(x).astype(accumulator_dtype(jnp.result_type(x))), tree)


def as_vectors(tree):
    return jax.tree.map(lambda x: jnp.reshape(x, (1,)) if jnp.ndim(x) == 0 else x, tree)


def finish(
    factory: str,
    inner: optax.GradientTransformation,
    *,
    needs_params: bool = False,
    scalars_as_vectors: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax transformation in the common baseline contract.

    The inner transformation sees gradients and params promoted to ``accumulator_dtype`` (and, with
    ``scalars_as_vectors``, 0-D leaves reshaped to ``(1,)``); the updates come back in the shape and
    dtype of the params (or of the gradients when ``params`` is None). Extra args are dropped.
    """
    reshape = as_vectors if scalars_as_vectors else (lambda tree: tree)

    def init(params):
        return inner.init(reshape(promote(params)))

    def update(updates, state, params=None, **extra_args):
        del extra_args  # baselines use only the gradient (and the params)
        if params is None and needs_params:
            raise TypeError(
                f"{factory} needs the current parameters in update (weight decay / trust ratio / parameter "
                f"scale); call opt.update(grads, state, params), not opt.update(grads, state)."
            )
        like = updates if params is None else params
        wide_params = None if params is None else reshape(promote(params))
        new_updates, state = inner.update(reshape(promote(updates)), state, wide_params)
        new_updates = jax.tree.map(
            lambda u, x: jnp.reshape(u, jnp.shape(x)).astype(jnp.result_type(x)), new_updates, like
        )
        return new_updates, state

    return optax.GradientTransformationExtraArgs(init, update)


def optax_baseline(
    factory: str, make, arguments: dict, *, decays: tuple[str, ...] = (), needs_params: bool = False
) -> optax.GradientTransformationExtraArgs:
    """The common form of a baseline that is one optax factory: check, build, wrap.

    Args:
      factory: the baseline's name (for messages).
      make: the optax factory, called as ``make(learning_rate, **settings)``.
      arguments: the baseline's own arguments (its ``locals()`` on entry): ``learning_rate`` and its
        settings, in signature order.
      decays: the settings that are exponential-average decays (checked in [0, 1)); every other
        setting is checked as non-negative and finite. Checks run in that order (rate, decays, the
        rest), with the messages of :func:`check_decays` / :func:`check_nonnegative`.
      needs_params: passed to :func:`finish`.
    """
    settings = {k: v for k, v in arguments.items() if k != "learning_rate"}
    check_learning_rate(arguments["learning_rate"], factory)
    check_decays(factory, **{k: settings[k] for k in decays})
    check_nonnegative(factory, **{k: v for k, v in settings.items() if k not in decays})
    return finish(factory, make(arguments["learning_rate"], **settings), needs_params=needs_params)


def optax_factories(docs: dict[str, str], *rows: tuple) -> tuple:
    """Declares baselines that are one optax factory each: one public function per row, in order.

    Each row is ``(name, make, defaults)``: the function ``name(learning_rate, **settings)`` has the
    signature ``learning_rate`` followed by ``defaults`` in the order given (so ``inspect.signature``,
    the registry's hyperparameter check and ``l2o optimizers`` read it like a hand-written ``def``)
    and the docstring ``docs[name]``; a call binds its arguments to that signature and goes through
    :func:`optax_baseline` (checks, build, :func:`finish`) with ``make`` as the optax factory. The
    settings named ``b1``/``b2``/``b3``/``beta`` are the decays (checked in [0, 1)); a baseline with a
    ``weight_decay`` setting needs the params in ``update``. Each function's ``__module__`` is the
    declaring module, as a ``def`` there would have.
    """
    module = sys._getframe(1).f_globals.get("__name__", __name__)
    return tuple(_optax_factory(name, make, defaults, docs[name], module) for name, make, defaults in rows)


def _optax_factory(name: str, make, defaults: dict[str, float], doc: str, module: str):
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    signature = inspect.Signature(
        [inspect.Parameter("learning_rate", kind, annotation=LearningRate)]
        + [inspect.Parameter(k, kind, default=v, annotation=float) for k, v in defaults.items()],
        return_annotation=optax.GradientTransformationExtraArgs,
    )
    decays = tuple(k for k in defaults if k in ("b1", "b2", "b3", "beta"))
    needs_params = "weight_decay" in defaults

    def factory(*args, **kwargs) -> optax.GradientTransformationExtraArgs:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{name}() {err} (its arguments: {', '.join(signature.parameters)})") from None
        bound.apply_defaults()
        return optax_baseline(name, make, dict(bound.arguments), decays=decays, needs_params=needs_params)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    factory.__signature__ = signature
    factory.__module__ = module
    return factory


def no_momentum(momentum) -> bool:
    """A Python ``None`` or ``0`` momentum: build the buffer-free form."""
    return momentum is None or (isinstance(momentum, Real) and momentum == 0)
