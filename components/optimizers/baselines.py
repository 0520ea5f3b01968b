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
from collections.abc import Callable

import optax

from components.optimizers.baselines_celo import (
    adabelief,
    adafactor,
    adagrad,
    adam,
    adamw,
    fromage,
    lamb,
    lars,
    nadamw,
    radam,
    rmsprop,
    sgd,
    sgdm,
    sm3,
    yogi,
)
from components.optimizers.baselines_optax import (
    adamax,
    adamaxw,
    adan,
    amsgrad,
    lion,
    nadam,
    novograd,
    sign_sgd,
    signum,
)

__all__ = ["BASELINES", "baseline_hyperparameters"]


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
