"""Further optax optimizers offered as baselines (beyond Celo's fifteen), validated like them.

See :mod:`.baselines` for the conventions.
"""

import optax

from components.optimizers.baseline_common import (
    optax_factories,
)

__all__ = ["adamax", "adamaxw", "adan", "amsgrad", "lion", "nadam", "novograd", "sign_sgd", "signum"]


# --------------------------------------------------------------------------- further optax optimizers


# --------------------------------------------------------------------------- further optax optimizers

_DOCS = {  # name -> the factory's docstring: the update rule and its source
    "nadam": """NAdam (Dozat, 2016): :func:`nadamw` without weight decay (needs no params).""",
    "adamax": """AdaMax (Kingma & Ba, 2015, §7.1): ``u ← max(b2·u, |g|)``, ``Δp = −lr · m̂ / (u + eps)``.""",
    "adamaxw": """AdaMax with decoupled weight decay: ``Δp = −lr · (m̂/(u + eps) + weight_decay·p)``.""",
    "amsgrad": """AMSGrad (Reddi et al., 2018): Adam with ``v̂_max ← max(v̂_max, v̂)`` in the denominator.""",
    "novograd": """NovoGrad (Ginsburg et al., 2019, Alg. 1): per-tensor second moment of ``‖g‖²``.

        ``v ← b2·v + (1−b2)·‖g‖²`` (``v_1 = ‖g‖²``), ``m ← b1·m + g/(sqrt(v + eps_root) + eps) +
        weight_decay·p``, ``Δp = −lr·m``.
        """,
    "adan": """Adan (Xie et al., 2022, Alg. 1): Nesterov-style moments of ``g`` and of ``g_t − g_{t−1}``.

        Note optax's convention: ``b_i`` are the decays of the averages (the paper's ``1 − β_i``).
        """,
    "lion": """Lion (Chen et al., 2023, Alg. 2): a sign update with two momentum decays.

        ``Δp = −lr · (sign(b1·m + (1−b1)·g) + weight_decay·p)``, then ``m ← b2·m + (1−b2)·g``.
        """,
    "sign_sgd": """signSGD (Bernstein et al., 2018): ``Δp = −lr · sign(g)``.""",
    "signum": """Signum (Bernstein et al., 2018): ``m ← beta·m + (1−beta)·g``, ``Δp = −lr · sign(m)``.""",
}
_DECLARED = optax_factories(  # (name, optax factory, settings with their defaults), docstrings from _DOCS
    _DOCS,
    ("nadam", optax.nadam, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0}),
    ("adamax", optax.adamax, {"b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    ("adamaxw", optax.adamaxw, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4}),
    ("amsgrad", optax.amsgrad, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0}),
    ("novograd", optax.novograd, {"b1": 0.9, "b2": 0.25, "eps": 1e-6, "eps_root": 0.0, "weight_decay": 0.0}),
    ("adan", optax.adan, {"b1": 0.98, "b2": 0.92, "b3": 0.99, "eps": 1e-8, "eps_root": 1e-8, "weight_decay": 0.0}),
    ("lion", optax.lion, {"b1": 0.9, "b2": 0.99, "weight_decay": 1e-3}),
    ("sign_sgd", optax.sign_sgd, {}),
    ("signum", optax.signum, {"beta": 0.9}),
)
(
    nadam,
    adamax,
    adamaxw,
    amsgrad,
    novograd,
    adan,
    lion,
    sign_sgd,
    signum,
) = _DECLARED
