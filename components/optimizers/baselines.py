"""Hand-designed baseline optimizers: the optax optimizers Celo is compared against, and a few more.

Every factory takes the step size ``learning_rate`` first, then its other hyperparameters as keyword
arguments with defaults, and returns an ``optax.GradientTransformationExtraArgs`` whose ``update``
accepts and ignores the per-step extra args of learned optimizers and guards (``loss=``,
``loss_fn=``), so one training loop drives baselines, learned and guarded optimizers alike.
``learning_rate`` may be a traced scalar, e.g. to ``jax.vmap`` one run over a grid of learning
rates; every update is ``−learning_rate · direction`` (or, for ``fromage``, a function of it — see
there), so ``learning_rate`` is the one number a per-task sweep tunes, as in Celo's evaluation
(``--test_lr``, research/algorithms.md §1.3).

The first fifteen names are Celo's hand-designed baselines (``celo/factory.py`` at 66d9761, which
builds learned_optimization's ``optimizers/optax_opts.py`` wrappers and ``optimizers/nadamw.py``
with nothing but the learning rate). Sources of the defaults: **LO** = learned_optimization's
wrapper sets the value (the ``amoudgl`` fork Celo uses has the same values); **LO = optax** = it
sets it to optax's default; **optax** = optax 0.2.8's default (no LO wrapper, or LO leaves it).

================  ===========================================================  ===================
name              hyperparameters (defaults)                                   default source
================  ===========================================================  ===================
``adam``          b1=0.9, b2=0.999, eps=1e-8, eps_root=1e-8                    LO (optax: eps_root=0)
``sgd``           momentum=0.0, nesterov=False                                 LO = optax
``sgdm``          momentum=0.9, nesterov=False                                 LO
``adamw``         b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=1e-4  LO = optax
``rmsprop``       decay=0.9, eps=1e-8, momentum=0.0, nesterov=False,           LO = optax
                  centered=False                                               (centered: optax)
``fromage``       min_norm=1e-6                                                LO = optax
``sm3``           momentum=0.9, b2=1.0, eps=1e-8                               LO = optax
``lars``          weight_decay=0.0, trust_coefficient=1e-3, eps=0.0,           LO = optax
                  momentum=0.9, nesterov=False
``lamb``          b1=0.9, b2=0.999, eps=1e-6, eps_root=0.0, weight_decay=0.0   LO = optax
``adabelief``     b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16                  LO = optax
``adafactor``     min_dim_size_to_factor=128, decay_rate=0.8, decay_offset=0,  LO = optax
                  multiply_by_parameter_scale=True, clipping_threshold=1.0,
                  momentum=None, weight_decay_rate=None, eps=1e-30,
                  factored=True
``adagrad``       initial_accumulator_value=0.1, eps=1e-7                      LO = optax
``yogi``          b1=0.9, b2=0.999, eps=1e-3                                   LO = optax
``radam``         b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, threshold=5.0      LO = optax
``nadamw``        b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=0.0   LO ``nadamw.py``
                                                                               (optax: wd=1e-4)
``nadam``         b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0                     optax
``adamax``        b1=0.9, b2=0.999, eps=1e-8                                   optax
``adamaxw``       b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4                optax
``amsgrad``       b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0                     optax
``novograd``      b1=0.9, b2=0.25, eps=1e-6, eps_root=0.0, weight_decay=0.0    optax
``adan``          b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8,          optax
                  weight_decay=0.0
``lion``          b1=0.9, b2=0.99, weight_decay=1e-3                           optax
``sign_sgd``      (none)                                                       optax
``signum``        beta=0.9                                                     optax
================  ===========================================================  ===================

Choices we made (where we deviate from optax / learned_optimization, or the reference is unclear):

* **Accumulators in at least float32.** Gradients and params are promoted with
  ``features.accumulator_dtype`` before the optax transformation sees them and the update is cast
  back to the parameter dtype, so state dtypes never change between steps and bfloat16 params get
  float32 moments (optax alone keeps most moments in the parameter dtype).
* **Momentum 0 keeps no buffer** (``sgd``, ``rmsprop``): a Python ``0`` momentum builds optax's
  momentum-free form; LO passes ``momentum=0.0`` to optax's ``rmsprop``, which keeps a buffer with
  decay 0 — the same numbers.
* **nadamw** is optax's ``nadamw`` (Dozat's Nesterov form, ``m̂ = b1·m_t/(1−b1^{t+1}) +
  (1−b1)·g/(1−b1^t)``, ``eps`` outside the bias-corrected root). LO's ``NAdamW`` corrects both
  Nesterov terms with ``1/(1−b1^t)`` and adds ``eps`` to the *uncorrected* root; the two differ
  slightly in the first steps and in how ``eps`` scales. Only the weight-decay default (0, LO's
  ``adamw_weight_decay``) is taken from LO.
* **sm3**: optax's SM3 has no accumulator for 0-D leaves; like LO's ``SM3`` wrapper we treat a scalar
  as a length-1 vector.
* **adafactor**: optax uses ``learning_rate`` as given (there is no "relative step" schedule
  ``min(1e-2, 1/√t)`` as in the paper when a learning rate is passed). With Celo's setting
  ``multiply_by_parameter_scale=True`` the step is *relative* to each tensor's RMS:
  ``Δp = −lr · max(RMS(p), 1e-3) · clip(g/√v̂)``, so ``lr`` is still the only tuned step size and the
  update is linear in it, but its scale differs from Adam's (tuned values are ~10-100× larger).
  ``multiply_by_parameter_scale=False`` gives the absolute step ``−lr · clip(g/√v̂)``.
* Masks (``mask``, ``weight_decay_mask``, ``trust_ratio_mask``) and ``mu_dtype`` are not exposed: the
  hyperparameters are plain numbers/booleans so a params file can set every one; decay and trust
  ratio apply to all leaves, as with LO's defaults.

Validation: numeric hyperparameters (Python numbers and concrete arrays) are checked at construction
(``ValueError`` for a negative or non-finite learning rate, a decay outside ``[0, 1)``, a negative
``eps``…; ``TypeError`` for a non-number); traced values (e.g. a learning rate under ``jax.vmap``) are
not checked. ``update`` raises ``TypeError`` at trace time when an optimizer that needs the parameters
(weight decay, trust ratios, parameter scale) gets ``params=None``.

Example:
  >>> import jax.numpy as jnp
  >>> opt = adamw(1e-3, weight_decay=0.01)  # by name: components.optimizers.create("adamw", learning_rate=1e-3, ...)
  >>> params = {"w": jnp.ones(3)}
  >>> state = opt.init(params)
  >>> updates, state = opt.update({"w": jnp.ones(3)}, state, params, loss=jnp.float32(0.0))
  >>> baseline_hyperparameters("sgdm")
  {'momentum': 0.9, 'nesterov': False}
"""

import inspect
import math
from collections.abc import Callable
from numbers import Real

import jax
import jax.numpy as jnp
import optax

from components.optimizers.features import accumulator_dtype

__all__ = [
    "BASELINES",
    "adabelief",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "amsgrad",
    "baseline_hyperparameters",
    "fromage",
    "lamb",
    "lars",
    "lion",
    "nadam",
    "nadamw",
    "novograd",
    "radam",
    "rmsprop",
    "sgd",
    "sgdm",
    "sign_sgd",
    "signum",
    "sm3",
    "yogi",
]

LearningRate = float | jax.Array

# --------------------------------------------------------------------------- validation


def _concrete(factory: str, name: str, value) -> float | None:
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


def _check_learning_rate(learning_rate, factory: str) -> None:
    value = _concrete(factory, "learning_rate", learning_rate)
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{factory}: learning_rate must be >= 0 and finite, got {learning_rate!r}. "
            "Pass the step size as a positive number (the update is -learning_rate * direction)."
        )


def _check_interval(factory: str, interval: str, hint: str, *, allow_none: bool = False, **values) -> None:
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
        concrete = _concrete(factory, name, value)
        if concrete is not None and not tests[interval](concrete):
            where = f"in {interval}" if interval[0] in "[(" else interval
            raise ValueError(f"{factory}: {name} must be {where}, got {value!r}. {hint}")


def _check_decays(factory: str, *, allow_none: bool = False, **values) -> None:
    hint = "It is an exponential-average decay; typical values are 0.9 to 0.999."
    _check_interval(factory, "[0, 1)", hint, allow_none=allow_none, **values)


def _check_nonnegative(factory: str, *, allow_none: bool = False, **values) -> None:
    _check_interval(factory, ">= 0", "Use 0 to switch the term off.", allow_none=allow_none, **values)


def _check_bools(factory: str, **values) -> None:
    for name, value in values.items():
        if not isinstance(value, bool):
            raise TypeError(f"{factory}: {name} must be True or False, got {type(value).__name__} {value!r}.")


# --------------------------------------------------------------------------- common wrapper


def _promote(tree):
    return jax.tree.map(lambda x: jnp.asarray(x).astype(accumulator_dtype(jnp.result_type(x))), tree)


def _as_vectors(tree):
    return jax.tree.map(lambda x: jnp.reshape(x, (1,)) if jnp.ndim(x) == 0 else x, tree)


def _finish(
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
    reshape = _as_vectors if scalars_as_vectors else (lambda tree: tree)

    def init(params):
        return inner.init(reshape(_promote(params)))

    def update(updates, state, params=None, **extra_args):
        del extra_args  # baselines use only the gradient (and the params)
        if params is None and needs_params:
            raise TypeError(
                f"{factory} needs the current parameters in update (weight decay / trust ratio / parameter "
                f"scale); call opt.update(grads, state, params), not opt.update(grads, state)."
            )
        like = updates if params is None else params
        wide_params = None if params is None else reshape(_promote(params))
        new_updates, state = inner.update(reshape(_promote(updates)), state, wide_params)
        new_updates = jax.tree.map(
            lambda u, x: jnp.reshape(u, jnp.shape(x)).astype(jnp.result_type(x)), new_updates, like
        )
        return new_updates, state

    return optax.GradientTransformationExtraArgs(init, update)


def _no_momentum(momentum) -> bool:
    """A Python ``None`` or ``0`` momentum: build the buffer-free form."""
    return momentum is None or (isinstance(momentum, Real) and momentum == 0)


# --------------------------------------------------------------------------- Celo's fifteen


def adam(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 1e-8
) -> optax.GradientTransformationExtraArgs:
    """Adam (Kingma & Ba, 2015, Alg. 1) with bias correction.

    ``m ← b1·m + (1−b1)·g``, ``v ← b2·v + (1−b2)·g²``,
    ``Δp = −lr · m̂ / (sqrt(v̂ + eps_root) + eps)`` with ``m̂ = m/(1−b1^t)``, ``v̂ = v/(1−b2^t)``.

    Args:
      learning_rate: step size (a float or a possibly traced scalar).
      b1: first-moment decay, in [0, 1).
      b2: second-moment decay, in [0, 1).
      eps: added to ``sqrt(v̂ + eps_root)``.
      eps_root: added to ``v̂`` inside the root (LO's default 1e-8; optax's is 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that ignores extra args.

    Raises:
      ValueError: for a negative Python learning rate, a decay outside [0, 1) or a negative eps.
    """
    _check_learning_rate(learning_rate, "adam")
    _check_decays("adam", b1=b1, b2=b2)
    _check_nonnegative("adam", eps=eps, eps_root=eps_root)
    return _finish("adam", optax.adam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root))


def sgd(
    learning_rate: LearningRate, momentum: float = 0.0, nesterov: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Stochastic gradient descent with optional heavy-ball (or Nesterov) momentum.

    ``μ ← momentum·μ + g`` and ``Δp = −lr·μ`` (Nesterov: ``Δp = −lr·(momentum·μ + g)``); with a
    Python ``momentum == 0`` no buffer is kept and ``Δp = −lr·g``.

    Args:
      learning_rate: step size (a float or a possibly traced scalar).
      momentum: momentum coefficient in [0, 1) (a float or a possibly traced scalar).
      nesterov: use Nesterov momentum.

    Raises:
      ValueError: for a negative Python learning rate or a momentum outside [0, 1).
    """
    return _sgd("sgd", learning_rate, momentum, nesterov)


def sgdm(
    learning_rate: LearningRate, momentum: float = 0.9, nesterov: bool = False
) -> optax.GradientTransformationExtraArgs:
    """SGD with momentum 0.9 (LO's ``SGDM``): :func:`sgd` with another default momentum."""
    return _sgd("sgdm", learning_rate, momentum, nesterov)


def _sgd(factory, learning_rate, momentum, nesterov):
    _check_learning_rate(learning_rate, factory)
    _check_decays(factory, momentum=momentum, allow_none=True)
    _check_bools(factory, nesterov=nesterov)
    tx = optax.sgd(learning_rate, momentum=None if _no_momentum(momentum) else momentum, nesterov=nesterov)
    return _finish(factory, tx)


def adamw(
    learning_rate: LearningRate,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 1e-4,
) -> optax.GradientTransformationExtraArgs:
    """AdamW (Loshchilov & Hutter, 2019): Adam plus decoupled weight decay.

    ``Δp = −lr · (m̂ / (sqrt(v̂ + eps_root) + eps) + weight_decay·p)``; the decay is multiplied by the
    learning rate (optax's convention), not applied as a separate ``−weight_decay·p``.
    """
    _check_learning_rate(learning_rate, "adamw")
    _check_decays("adamw", b1=b1, b2=b2)
    _check_nonnegative("adamw", eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    tx = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    return _finish("adamw", tx, needs_params=True)


def rmsprop(
    learning_rate: LearningRate,
    decay: float = 0.9,
    eps: float = 1e-8,
    momentum: float = 0.0,
    nesterov: bool = False,
    centered: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """RMSProp (Tieleman & Hinton, 2012), optax's form with ``eps`` inside the root.

    ``v ← decay·v + (1−decay)·g²``, ``d = g / sqrt(v + eps)`` (centered: ``v − E[g]²`` under the
    root), then optional momentum ``μ ← momentum·μ + lr·d`` and ``Δp = −μ``; without momentum
    ``Δp = −lr·d``. No bias correction (``v`` starts at 0, so the first steps are large).
    """
    _check_learning_rate(learning_rate, "rmsprop")
    _check_decays("rmsprop", decay=decay)
    _check_decays("rmsprop", momentum=momentum, allow_none=True)
    _check_nonnegative("rmsprop", eps=eps)
    _check_bools("rmsprop", nesterov=nesterov, centered=centered)
    tx = optax.rmsprop(
        learning_rate,
        decay=decay,
        eps=eps,
        centered=centered,
        momentum=None if _no_momentum(momentum) else momentum,
        nesterov=nesterov,
    )
    return _finish("rmsprop", tx)


def fromage(learning_rate: LearningRate, min_norm: float = 1e-6) -> optax.GradientTransformationExtraArgs:
    """Fromage (Bernstein et al., 2020, Alg. 1): a per-tensor relative step with a norm-shrinking term.

    ``p ← (p − lr·(‖p‖/‖g‖)·g) / sqrt(1 + lr²)`` per tensor (``‖·‖`` floored at ``min_norm``), i.e.
    ``Δp = −lr/sqrt(1+lr²)·(‖p‖/‖g‖)·g + (1/sqrt(1+lr²) − 1)·p``. ``lr`` is the relative step size.
    """
    _check_learning_rate(learning_rate, "fromage")
    _check_nonnegative("fromage", min_norm=min_norm)
    # optax.fromage's chain, with ``1/sqrt(1+lr²) − 1`` written without cancellation: a small traced
    # float32 learning rate (1e-3) otherwise loses most digits of the shrink term.
    root = (1.0 + learning_rate**2) ** 0.5
    tx = optax.chain(
        optax.scale_by_trust_ratio(min_norm=min_norm),
        optax.scale_by_learning_rate(learning_rate / root),
        optax.add_decayed_weights(-(learning_rate**2) / (root * (1.0 + root))),
    )
    return _finish("fromage", tx, needs_params=True)


def sm3(
    learning_rate: LearningRate, momentum: float = 0.9, b2: float = 1.0, eps: float = 1e-8
) -> optax.GradientTransformationExtraArgs:
    """SM3 (Anil et al., 2019, SM3-II) with an EMA of the preconditioned gradient.

    For a tensor with axes ``r``, per-axis accumulators ``μ_r`` (max over the other axes) give
    ``ν = min_r μ_r + g²`` (b2 = 1: a running sum as in the paper; b2 < 1: ``b2·min_r μ_r +
    (1−b2)·g²``), ``d = g / sqrt(ν + eps)`` (0 where ``ν = 0``), ``m ← momentum·m + (1−momentum)·d``,
    ``Δp = −lr·m``. 0-D leaves are treated as length-1 vectors.
    """
    _check_learning_rate(learning_rate, "sm3")
    _check_decays("sm3", momentum=momentum)
    _check_interval("sm3", "(0, 1]", "b2 = 1 accumulates a running sum of squared gradients (the paper).", b2=b2)
    _check_nonnegative("sm3", eps=eps)
    tx = optax.chain(optax.scale_by_sm3(b1=momentum, b2=b2, eps=eps), optax.scale_by_learning_rate(learning_rate))
    return _finish("sm3", tx, scalars_as_vectors=True)


def lars(
    learning_rate: LearningRate,
    weight_decay: float = 0.0,
    trust_coefficient: float = 1e-3,
    eps: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """LARS (You et al., 2017, Alg. 1): momentum SGD with a per-tensor trust ratio.

    ``u = g + weight_decay·p``, ``u ← u · trust_coefficient·‖p‖ / (‖u‖ + eps)`` (1 if either norm
    is 0), ``μ ← momentum·μ + lr·u``, ``Δp = −μ``. The step is relative to ``‖p‖``: with the default
    trust coefficient 1e-3 tuned learning rates are large (~1-10).
    """
    _check_learning_rate(learning_rate, "lars")
    _check_decays("lars", momentum=momentum)
    _check_nonnegative("lars", weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps)
    _check_bools("lars", nesterov=nesterov)
    tx = optax.lars(
        learning_rate,
        weight_decay=weight_decay,
        trust_coefficient=trust_coefficient,
        eps=eps,
        momentum=momentum,
        nesterov=nesterov,
    )
    return _finish("lars", tx, needs_params=True)


def lamb(
    learning_rate: LearningRate,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """LAMB (You et al., 2020, Alg. 2): Adam direction with a per-tensor trust ratio.

    ``r = m̂ / (sqrt(v̂ + eps_root) + eps) + weight_decay·p``, ``Δp = −lr · (‖p‖/‖r‖) · r`` (ratio 1
    if either norm is 0).
    """
    _check_learning_rate(learning_rate, "lamb")
    _check_decays("lamb", b1=b1, b2=b2)
    _check_nonnegative("lamb", eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    tx = optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    return _finish("lamb", tx, needs_params=True)


def adabelief(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16, eps_root: float = 1e-16
) -> optax.GradientTransformationExtraArgs:
    """AdaBelief (Zhuang et al., 2020, Alg. 2): Adam with the variance of ``g`` around ``m``.

    ``s ← b2·s + (1−b2)·(g − m)² + eps_root``, ``Δp = −lr · m̂ / (sqrt(ŝ) + eps)``.
    """
    _check_learning_rate(learning_rate, "adabelief")
    _check_decays("adabelief", b1=b1, b2=b2)
    _check_nonnegative("adabelief", eps=eps, eps_root=eps_root)
    return _finish("adabelief", optax.adabelief(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root))


def adafactor(
    learning_rate: LearningRate,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    weight_decay_rate: float | None = None,
    eps: float = 1e-30,
    factored: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Adafactor (Shazeer & Stern, 2018, Alg. 4/5) with ``learning_rate`` as the tuned step size.

    ``β_t = 1 − (t − decay_offset)^(−decay_rate)`` (t from 1, so ``β_1 = 0``); ``v̂`` is the EMA of
    ``g² + eps`` (for a tensor whose two largest axes are ≥ ``min_dim_size_to_factor``, the rank-1
    product of row and column EMAs); ``u = g/√v̂``, clipped so ``RMS(u) ≤ clipping_threshold``;
    ``Δp = −lr · max(RMS(p), 1e-3) · u`` with ``multiply_by_parameter_scale`` (Celo's setting: ``lr``
    is then a step *relative* to the tensor's scale), else ``Δp = −lr·u``; optional EMA momentum of
    the scaled update and decoupled ``weight_decay_rate·p``. ``learning_rate`` is used as given
    (optax applies no ``min(1e-2, 1/√t)`` relative-step schedule when a learning rate is passed).
    """
    factory = "adafactor"
    _check_learning_rate(learning_rate, factory)
    _check_decays(factory, momentum=momentum, allow_none=True)
    exponent_hint = "It is the exponent of β_t = 1 − t^(−decay_rate); the paper uses 0.8."
    _check_interval(factory, "(0, 1]", exponent_hint, decay_rate=decay_rate)
    _check_nonnegative(factory, eps=eps)
    _check_nonnegative(factory, weight_decay_rate=weight_decay_rate, allow_none=True)
    clip_hint = "Use clipping_threshold=None to switch clipping off."
    _check_interval(factory, "> 0", clip_hint, clipping_threshold=clipping_threshold, allow_none=True)
    _check_bools(factory, multiply_by_parameter_scale=multiply_by_parameter_scale, factored=factored)
    for name, value in {"min_dim_size_to_factor": min_dim_size_to_factor, "decay_offset": decay_offset}.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{factory}: {name} must be a Python int, got {type(value).__name__} {value!r}.")
        if value < 0:
            raise ValueError(f"{factory}: {name} must be >= 0, got {value!r}.")
    tx = optax.adafactor(
        learning_rate,
        min_dim_size_to_factor=min_dim_size_to_factor,
        decay_rate=decay_rate,
        decay_offset=decay_offset,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold,
        momentum=momentum,
        weight_decay_rate=weight_decay_rate,
        eps=eps,
        factored=factored,
    )
    return _finish(factory, tx, needs_params=True)


def adagrad(
    learning_rate: LearningRate, initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> optax.GradientTransformationExtraArgs:
    """AdaGrad (Duchi et al., 2011): ``G ← G + g²`` from ``G_0 = initial_accumulator_value``,
    ``Δp = −lr · g / sqrt(G + eps)``."""
    _check_learning_rate(learning_rate, "adagrad")
    _check_nonnegative("adagrad", initial_accumulator_value=initial_accumulator_value, eps=eps)
    tx = optax.adagrad(learning_rate, initial_accumulator_value=initial_accumulator_value, eps=eps)
    return _finish("adagrad", tx)


def yogi(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3
) -> optax.GradientTransformationExtraArgs:
    """Yogi (Zaheer et al., 2018, Alg. 2): Adam with an additive second-moment update.

    ``v ← v − (1−b2)·sign(v − g²)·g²`` (optax initialises ``v`` at 1e-6), ``Δp = −lr·m/(√v + eps)``
    (no bias correction).
    """
    _check_learning_rate(learning_rate, "yogi")
    _check_decays("yogi", b1=b1, b2=b2)
    _check_nonnegative("yogi", eps=eps)
    return _finish("yogi", optax.yogi(learning_rate, b1=b1, b2=b2, eps=eps))


def radam(
    learning_rate: LearningRate,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
) -> optax.GradientTransformationExtraArgs:
    """Rectified Adam (Liu et al., 2020, Alg. 2): momentum SGD while the variance estimate is
    unreliable (``ρ_t ≤ threshold``), then Adam scaled by the rectification term ``r_t``."""
    _check_learning_rate(learning_rate, "radam")
    _check_decays("radam", b1=b1, b2=b2)
    _check_nonnegative("radam", eps=eps, eps_root=eps_root, threshold=threshold)
    tx = optax.radam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, threshold=threshold)
    return _finish("radam", tx)


def nadamw(
    learning_rate: LearningRate,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """NAdamW (Dozat, 2016; decoupled decay as in AdamW): optax's ``nadamw`` with LO's decay default 0.

    ``m̂ = b1·m/(1−b1^{t+1}) + (1−b1)·g/(1−b1^t)``, ``Δp = −lr · (m̂/(sqrt(v̂+eps_root)+eps) +
    weight_decay·p)``. See the module's choices for how this differs from LO's ``NAdamW``.
    """
    _check_learning_rate(learning_rate, "nadamw")
    _check_decays("nadamw", b1=b1, b2=b2)
    _check_nonnegative("nadamw", eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    tx = optax.nadamw(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    return _finish("nadamw", tx, needs_params=True)


# --------------------------------------------------------------------------- further optax optimizers


def nadam(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> optax.GradientTransformationExtraArgs:
    """NAdam (Dozat, 2016): :func:`nadamw` without weight decay (needs no params)."""
    _check_learning_rate(learning_rate, "nadam")
    _check_decays("nadam", b1=b1, b2=b2)
    _check_nonnegative("nadam", eps=eps, eps_root=eps_root)
    return _finish("nadam", optax.nadam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root))


def adamax(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformationExtraArgs:
    """AdaMax (Kingma & Ba, 2015, §7.1): ``u ← max(b2·u, |g|)``, ``Δp = −lr · m̂ / (u + eps)``."""
    _check_learning_rate(learning_rate, "adamax")
    _check_decays("adamax", b1=b1, b2=b2)
    _check_nonnegative("adamax", eps=eps)
    return _finish("adamax", optax.adamax(learning_rate, b1=b1, b2=b2, eps=eps))


def adamaxw(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4
) -> optax.GradientTransformationExtraArgs:
    """AdaMax with decoupled weight decay: ``Δp = −lr · (m̂/(u + eps) + weight_decay·p)``."""
    _check_learning_rate(learning_rate, "adamaxw")
    _check_decays("adamaxw", b1=b1, b2=b2)
    _check_nonnegative("adamaxw", eps=eps, weight_decay=weight_decay)
    tx = optax.adamaxw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return _finish("adamaxw", tx, needs_params=True)


def amsgrad(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> optax.GradientTransformationExtraArgs:
    """AMSGrad (Reddi et al., 2018): Adam with ``v̂_max ← max(v̂_max, v̂)`` in the denominator."""
    _check_learning_rate(learning_rate, "amsgrad")
    _check_decays("amsgrad", b1=b1, b2=b2)
    _check_nonnegative("amsgrad", eps=eps, eps_root=eps_root)
    return _finish("amsgrad", optax.amsgrad(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root))


def novograd(
    learning_rate: LearningRate,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """NovoGrad (Ginsburg et al., 2019, Alg. 1): per-tensor second moment of ``‖g‖²``.

    ``v ← b2·v + (1−b2)·‖g‖²`` (``v_1 = ‖g‖²``), ``m ← b1·m + g/(sqrt(v + eps_root) + eps) +
    weight_decay·p``, ``Δp = −lr·m``.
    """
    _check_learning_rate(learning_rate, "novograd")
    _check_decays("novograd", b1=b1, b2=b2)
    _check_nonnegative("novograd", eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    tx = optax.novograd(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    return _finish("novograd", tx, needs_params=True)


def adan(
    learning_rate: LearningRate,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Adan (Xie et al., 2022, Alg. 1): Nesterov-style moments of ``g`` and of ``g_t − g_{t−1}``.

    Note optax's convention: ``b_i`` are the decays of the averages (the paper's ``1 − β_i``).
    """
    _check_learning_rate(learning_rate, "adan")
    _check_decays("adan", b1=b1, b2=b2, b3=b3)
    _check_nonnegative("adan", eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    tx = optax.adan(learning_rate, b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    return _finish("adan", tx, needs_params=True)


def lion(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 1e-3
) -> optax.GradientTransformationExtraArgs:
    """Lion (Chen et al., 2023, Alg. 2): a sign update with two momentum decays.

    ``Δp = −lr · (sign(b1·m + (1−b1)·g) + weight_decay·p)``, then ``m ← b2·m + (1−b2)·g``.
    """
    _check_learning_rate(learning_rate, "lion")
    _check_decays("lion", b1=b1, b2=b2)
    _check_nonnegative("lion", weight_decay=weight_decay)
    return _finish("lion", optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay), needs_params=True)


def sign_sgd(learning_rate: LearningRate) -> optax.GradientTransformationExtraArgs:
    """signSGD (Bernstein et al., 2018): ``Δp = −lr · sign(g)``."""
    _check_learning_rate(learning_rate, "sign_sgd")
    return _finish("sign_sgd", optax.sign_sgd(learning_rate))


def signum(learning_rate: LearningRate, beta: float = 0.9) -> optax.GradientTransformationExtraArgs:
    """Signum (Bernstein et al., 2018): ``m ← beta·m + (1−beta)·g``, ``Δp = −lr · sign(m)``."""
    _check_learning_rate(learning_rate, "signum")
    _check_decays("signum", beta=beta)
    return _finish("signum", optax.signum(learning_rate, beta=beta))


# --------------------------------------------------------------------------- registry

BASELINES: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    # Celo's fifteen hand-designed baselines, in celo/factory.py's order.
    "adam": adam,
    "sgd": sgd,
    "sgdm": sgdm,
    "adamw": adamw,
    "rmsprop": rmsprop,
    "fromage": fromage,
    "sm3": sm3,
    "lars": lars,
    "lamb": lamb,
    "adabelief": adabelief,
    "adafactor": adafactor,
    "adagrad": adagrad,
    "yogi": yogi,
    "radam": radam,
    "nadamw": nadamw,
    # Further optax optimizers.
    "nadam": nadam,
    "adamax": adamax,
    "adamaxw": adamaxw,
    "amsgrad": amsgrad,
    "novograd": novograd,
    "adan": adan,
    "lion": lion,
    "sign_sgd": sign_sgd,
    "signum": signum,
}
"""Baseline name -> factory ``(learning_rate, **hyperparams) -> GradientTransformationExtraArgs``."""


def _factory(name: str) -> Callable[..., optax.GradientTransformationExtraArgs]:
    if isinstance(name, str) and name in BASELINES:
        return BASELINES[name]
    raise ValueError(f"Unknown baseline optimizer {name!r}; expected one of {sorted(BASELINES)}.")


def baseline_hyperparameters(name: str) -> dict:
    """The hyperparameters of baseline ``name`` other than ``learning_rate``, with their defaults.

    Read from the factory's signature, so it cannot drift from the code. ``learning_rate`` (which has
    no default and is always required) is not included.

    Raises:
      ValueError: for an unknown name (the message lists the allowed values).
    """
    parameters = inspect.signature(_factory(name)).parameters
    return {key: p.default for key, p in parameters.items() if key != "learning_rate"}
