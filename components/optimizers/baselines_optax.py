"""Further optax optimizers offered as baselines (beyond Celo's fifteen), validated like them.

See :mod:`.baselines` for the conventions.
"""

import optax

from components.optimizers.baseline_common import (
    LearningRate,
    check_decays,
    check_learning_rate,
    check_nonnegative,
    finish,
)

__all__ = ["adamax", "adamaxw", "adan", "amsgrad", "lion", "nadam", "novograd", "sign_sgd", "signum"]


# --------------------------------------------------------------------------- further optax optimizers


def nadam(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> optax.GradientTransformationExtraArgs:
    """NAdam (Dozat, 2016): :func:`nadamw` without weight decay (needs no params)."""
    check_learning_rate(learning_rate, "nadam")
    check_decays("nadam", b1=b1, b2=b2)
    check_nonnegative("nadam", eps=eps, eps_root=eps_root)
    return finish("nadam", optax.nadam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root))


def adamax(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformationExtraArgs:
    """AdaMax (Kingma & Ba, 2015, §7.1): ``u ← max(b2·u, |g|)``, ``Δp = −lr · m̂ / (u + eps)``."""
    check_learning_rate(learning_rate, "adamax")
    check_decays("adamax", b1=b1, b2=b2)
    check_nonnegative("adamax", eps=eps)
    return finish("adamax", optax.adamax(learning_rate, b1=b1, b2=b2, eps=eps))


def adamaxw(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4
) -> optax.GradientTransformationExtraArgs:
    """AdaMax with decoupled weight decay: ``Δp = −lr · (m̂/(u + eps) + weight_decay·p)``."""
    check_learning_rate(learning_rate, "adamaxw")
    check_decays("adamaxw", b1=b1, b2=b2)
    check_nonnegative("adamaxw", eps=eps, weight_decay=weight_decay)
    tx = optax.adamaxw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return finish("adamaxw", tx, needs_params=True)


def amsgrad(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> optax.GradientTransformationExtraArgs:
    """AMSGrad (Reddi et al., 2018): Adam with ``v̂_max ← max(v̂_max, v̂)`` in the denominator."""
    check_learning_rate(learning_rate, "amsgrad")
    check_decays("amsgrad", b1=b1, b2=b2)
    check_nonnegative("amsgrad", eps=eps, eps_root=eps_root)
    return finish("amsgrad", optax.amsgrad(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root))


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
    check_learning_rate(learning_rate, "novograd")
    check_decays("novograd", b1=b1, b2=b2)
    check_nonnegative("novograd", eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    tx = optax.novograd(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    return finish("novograd", tx, needs_params=True)


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
    check_learning_rate(learning_rate, "adan")
    check_decays("adan", b1=b1, b2=b2, b3=b3)
    check_nonnegative("adan", eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    tx = optax.adan(learning_rate, b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    return finish("adan", tx, needs_params=True)


def lion(
    learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 1e-3
) -> optax.GradientTransformationExtraArgs:
    """Lion (Chen et al., 2023, Alg. 2): a sign update with two momentum decays.

    ``Δp = −lr · (sign(b1·m + (1−b1)·g) + weight_decay·p)``, then ``m ← b2·m + (1−b2)·g``.
    """
    check_learning_rate(learning_rate, "lion")
    check_decays("lion", b1=b1, b2=b2)
    check_nonnegative("lion", weight_decay=weight_decay)
    return finish("lion", optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay), needs_params=True)


def sign_sgd(learning_rate: LearningRate) -> optax.GradientTransformationExtraArgs:
    """signSGD (Bernstein et al., 2018): ``Δp = −lr · sign(g)``."""
    check_learning_rate(learning_rate, "sign_sgd")
    return finish("sign_sgd", optax.sign_sgd(learning_rate))


def signum(learning_rate: LearningRate, beta: float = 0.9) -> optax.GradientTransformationExtraArgs:
    """Signum (Bernstein et al., 2018): ``m ← beta·m + (1−beta)·g``, ``Δp = −lr · sign(m)``."""
    check_learning_rate(learning_rate, "signum")
    check_decays("signum", beta=beta)
    return finish("signum", optax.signum(learning_rate, beta=beta))
