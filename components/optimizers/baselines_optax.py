"""Further optax optimizers offered as baselines (beyond Celo's fifteen), validated like them.

See :mod:`.baselines` for the conventions.
"""

import optax

from components.optimizers.baseline_common import (
    LearningRate,
    optax_baseline,
)

__all__ = ["adamax", "adamaxw", "adan", "amsgrad", "lion", "nadam", "novograd", "sign_sgd", "signum"]


# --------------------------------------------------------------------------- further optax optimizers


def nadam(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> optax.GradientTransformationExtraArgs:
    """NAdam (Dozat, 2016): :func:`nadamw` without weight decay (needs no params)."""
    return optax_baseline("nadam", optax.nadam, locals(), decays=("b1", "b2"))


def adamax(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformationExtraArgs:
    """AdaMax (Kingma & Ba, 2015, §7.1): ``u ← max(b2·u, |g|)``, ``Δp = −lr · m̂ / (u + eps)``."""
    return optax_baseline("adamax", optax.adamax, locals(), decays=("b1", "b2"))


def adamaxw(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4
) -> optax.GradientTransformationExtraArgs:
    """AdaMax with decoupled weight decay: ``Δp = −lr · (m̂/(u + eps) + weight_decay·p)``."""
    return optax_baseline("adamaxw", optax.adamaxw, locals(), decays=("b1", "b2"), needs_params=True)


def amsgrad(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> optax.GradientTransformationExtraArgs:
    """AMSGrad (Reddi et al., 2018): Adam with ``v̂_max ← max(v̂_max, v̂)`` in the denominator."""
    return optax_baseline("amsgrad", optax.amsgrad, locals(), decays=("b1", "b2"))


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
    return optax_baseline("novograd", optax.novograd, locals(), decays=("b1", "b2"), needs_params=True)


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
    return optax_baseline("adan", optax.adan, locals(), decays=("b1", "b2", "b3"), needs_params=True)


def lion(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 1e-3
) -> optax.GradientTransformationExtraArgs:
    """Lion (Chen et al., 2023, Alg. 2): a sign update with two momentum decays.

    ``Δp = −lr · (sign(b1·m + (1−b1)·g) + weight_decay·p)``, then ``m ← b2·m + (1−b2)·g``.
    """
    return optax_baseline("lion", optax.lion, locals(), decays=("b1", "b2"), needs_params=True)


def sign_sgd(learning_rate: LearningRate) -> optax.GradientTransformationExtraArgs:
    """signSGD (Bernstein et al., 2018): ``Δp = −lr · sign(g)``."""
    return optax_baseline("sign_sgd", optax.sign_sgd, locals())


def signum(learning_rate: LearningRate, beta: float = 0.9) -> optax.GradientTransformationExtraArgs:
    """Signum (Bernstein et al., 2018): ``m ← beta·m + (1−beta)·g``, ``Δp = −lr · sign(m)``."""
    return optax_baseline("signum", optax.signum, locals(), decays=("beta",))
