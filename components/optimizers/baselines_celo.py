"""Celo's fifteen hand-designed baselines (``celo/factory.py``), as validated optax transformations.

See :mod:`.baselines` for the conventions (learning rate first, extra args accepted, validation).
"""

import optax

from components.optimizers.baseline_common import (
    LearningRate,
    check_bools,
    check_decays,
    check_interval,
    check_learning_rate,
    check_nonnegative,
    finish,
    no_momentum,
    optax_factories,
)

__all__ = [
    "adabelief",
    "adafactor",
    "adagrad",
    "adam",
    "adamw",
    "fromage",
    "lamb",
    "lars",
    "nadamw",
    "radam",
    "rmsprop",
    "sgd",
    "sgdm",
    "sm3",
    "yogi",
]


# --------------------------------------------------------------------------- Celo's fifteen


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
    check_learning_rate(learning_rate, factory)
    check_decays(factory, momentum=momentum, allow_none=True)
    check_bools(factory, nesterov=nesterov)
    tx = optax.sgd(learning_rate, momentum=None if no_momentum(momentum) else momentum, nesterov=nesterov)
    return finish(factory, tx)


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
    check_learning_rate(learning_rate, "rmsprop")
    check_decays("rmsprop", decay=decay)
    check_decays("rmsprop", momentum=momentum, allow_none=True)
    check_nonnegative("rmsprop", eps=eps)
    check_bools("rmsprop", nesterov=nesterov, centered=centered)
    tx = optax.rmsprop(
        learning_rate,
        decay=decay,
        eps=eps,
        centered=centered,
        momentum=None if no_momentum(momentum) else momentum,
        nesterov=nesterov,
    )
    return finish("rmsprop", tx)


def fromage(learning_rate: LearningRate, min_norm: float = 1e-6) -> optax.GradientTransformationExtraArgs:
    """Fromage (Bernstein et al., 2020, Alg. 1): a per-tensor relative step with a norm-shrinking term.

    ``p ← (p − lr·(‖p‖/‖g‖)·g) / sqrt(1 + lr²)`` per tensor (``‖·‖`` floored at ``min_norm``), i.e.
    ``Δp = −lr/sqrt(1+lr²)·(‖p‖/‖g‖)·g + (1/sqrt(1+lr²) − 1)·p``. ``lr`` is the relative step size.
    """
    check_learning_rate(learning_rate, "fromage")
    check_nonnegative("fromage", min_norm=min_norm)
    # optax.fromage's chain, with ``1/sqrt(1+lr²) − 1`` written without cancellation: a small traced
    # float32 learning rate (1e-3) otherwise loses most digits of the shrink term.
    root = (1.0 + learning_rate**2) ** 0.5
    tx = optax.chain(
        optax.scale_by_trust_ratio(min_norm=min_norm),
        optax.scale_by_learning_rate(learning_rate / root),
        optax.add_decayed_weights(-(learning_rate**2) / (root * (1.0 + root))),
    )
    return finish("fromage", tx, needs_params=True)


def sm3(
    learning_rate: LearningRate, momentum: float = 0.9, b2: float = 1.0, eps: float = 1e-8
) -> optax.GradientTransformationExtraArgs:
    """SM3 (Anil et al., 2019, SM3-II) with an EMA of the preconditioned gradient.

    For a tensor with axes ``r``, per-axis accumulators ``μ_r`` (max over the other axes) give
    ``ν = min_r μ_r + g²`` (b2 = 1: a running sum as in the paper; b2 < 1: ``b2·min_r μ_r +
    (1−b2)·g²``), ``d = g / sqrt(ν + eps)`` (0 where ``ν = 0``), ``m ← momentum·m + (1−momentum)·d``,
    ``Δp = −lr·m``. 0-D leaves are treated as length-1 vectors.
    """
    check_learning_rate(learning_rate, "sm3")
    check_decays("sm3", momentum=momentum)
    check_interval("sm3", "(0, 1]", "b2 = 1 accumulates a running sum of squared gradients (the paper).", b2=b2)
    check_nonnegative("sm3", eps=eps)
    tx = optax.chain(optax.scale_by_sm3(b1=momentum, b2=b2, eps=eps), optax.scale_by_learning_rate(learning_rate))
    return finish("sm3", tx, scalars_as_vectors=True)


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
    check_learning_rate(learning_rate, "lars")
    check_decays("lars", momentum=momentum)
    check_nonnegative("lars", weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps)
    check_bools("lars", nesterov=nesterov)
    settings = {"weight_decay": weight_decay, "trust_coefficient": trust_coefficient, "eps": eps}
    tx = optax.lars(learning_rate, momentum=momentum, nesterov=nesterov, **settings)
    return finish("lars", tx, needs_params=True)


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
    check_learning_rate(learning_rate, factory)
    check_decays(factory, momentum=momentum, allow_none=True)
    exponent_hint = "It is the exponent of β_t = 1 − t^(−decay_rate); the paper uses 0.8."
    check_interval(factory, "(0, 1]", exponent_hint, decay_rate=decay_rate)
    check_nonnegative(factory, eps=eps)
    check_nonnegative(factory, weight_decay_rate=weight_decay_rate, allow_none=True)
    clip_hint = "Use clipping_threshold=None to switch clipping off."
    check_interval(factory, "> 0", clip_hint, clipping_threshold=clipping_threshold, allow_none=True)
    check_bools(factory, multiply_by_parameter_scale=multiply_by_parameter_scale, factored=factored)
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
    return finish(factory, tx, needs_params=True)


# --------------------------------------------------------------------------- one optax factory each

_DOCS = {  # name -> the factory's docstring: the update rule and its source
    "adam": """Adam (Kingma & Ba, 2015, Alg. 1) with bias correction.

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
        """,
    "adamw": """AdamW (Loshchilov & Hutter, 2019): Adam plus decoupled weight decay.

        ``Δp = −lr · (m̂ / (sqrt(v̂ + eps_root) + eps) + weight_decay·p)``; the decay is multiplied by the
        learning rate (optax's convention), not applied as a separate ``−weight_decay·p``.
        """,
    "lamb": """LAMB (You et al., 2020, Alg. 2): Adam direction with a per-tensor trust ratio.

        ``r = m̂ / (sqrt(v̂ + eps_root) + eps) + weight_decay·p``, ``Δp = −lr · (‖p‖/‖r‖) · r`` (ratio 1
        if either norm is 0).
        """,
    "adabelief": """AdaBelief (Zhuang et al., 2020, Alg. 2): Adam with the variance of ``g`` around ``m``.

        ``s ← b2·s + (1−b2)·(g − m)² + eps_root``, ``Δp = −lr · m̂ / (sqrt(ŝ) + eps)``.
        """,
    "adagrad": """AdaGrad (Duchi et al., 2011): ``G ← G + g²`` from ``G_0 = initial_accumulator_value``,
        ``Δp = −lr · g / sqrt(G + eps)``.""",
    "yogi": """Yogi (Zaheer et al., 2018, Alg. 2): Adam with an additive second-moment update.

        ``v ← v − (1−b2)·sign(v − g²)·g²`` (optax initialises ``v`` at 1e-6), ``Δp = −lr·m/(√v + eps)``
        (no bias correction).
        """,
    "radam": """Rectified Adam (Liu et al., 2020, Alg. 2): momentum SGD while the variance estimate is
        unreliable (``ρ_t ≤ threshold``), then Adam scaled by the rectification term ``r_t``.""",
    "nadamw": """NAdamW (Dozat, 2016; decoupled decay as in AdamW): optax's ``nadamw`` with LO's decay default 0.

        ``m̂ = b1·m/(1−b1^{t+1}) + (1−b1)·g/(1−b1^t)``, ``Δp = −lr · (m̂/(sqrt(v̂+eps_root)+eps) +
        weight_decay·p)``. See the module's choices for how this differs from LO's ``NAdamW``.
        """,
}
_DECLARED = optax_factories(  # (name, optax factory, settings with their defaults), docstrings from _DOCS
    _DOCS,
    ("adam", optax.adam, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 1e-8}),
    ("adamw", optax.adamw, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "weight_decay": 1e-4}),
    ("lamb", optax.lamb, {"b1": 0.9, "b2": 0.999, "eps": 1e-6, "eps_root": 0.0, "weight_decay": 0.0}),
    ("adabelief", optax.adabelief, {"b1": 0.9, "b2": 0.999, "eps": 1e-16, "eps_root": 1e-16}),
    ("adagrad", optax.adagrad, {"initial_accumulator_value": 0.1, "eps": 1e-7}),
    ("yogi", optax.yogi, {"b1": 0.9, "b2": 0.999, "eps": 1e-3}),
    ("radam", optax.radam, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "threshold": 5.0}),
    ("nadamw", optax.nadamw, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "weight_decay": 0.0}),
)
(
    adam,
    adamw,
    lamb,
    adabelief,
    adagrad,
    yogi,
    radam,
    nadamw,
) = _DECLARED
