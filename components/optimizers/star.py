"""``star``: the STAR learned optimizer ("Stabilized Through Ample Regularization").

Re-implementation of learned_optimization's ``MLPNomLOpt`` (``learned_optimizers/adafac_nominal.py``)
as configured for STAR in Harrison, Metz & Sohl-Dickstein, "A Closer Look at Learned Optimization:
Stability, Robustness, and Inductive Biases", NeurIPS 2022 (arXiv 2209.11208). See
``research/algorithms.md`` §4.

STAR is the :mod:`.small_fc_lopt` network (same accumulators, same 28 normalised feature channels
plus 11 step features) with four outputs per parameter, direction ``d``, magnitude ``s_b``, nominal
magnitude ``s_g`` and regularisation magnitude ``s_r``, and the update

.. code-block:: text

    f_b = step_mult · d · exp(β_b·s_b) · rsqrt(v_1 + 1e-6)        black box, output-preconditioned
    f_g = nominal_stepsize · exp(β_g·s_g) · ĝ                       nominal (hand-designed) term
    p  ← (1 − weight_decay · exp(β_r·s_r)) · p − f_b − f_g          i.e. Δp = −wd·e^{β_r s_r}·p − f_b − f_g

with ``(β_b, β_g, β_r) = exp_mult``, ``v_1`` the first RMS accumulator (``normalize_blackbox``; the
``rsqrt`` factor is dropped when it is off) and ``ĝ`` the nominal direction (``nominal_estimator``):

* ``"SGD"``: ``g``;  ``"SGDM"``: ``m_last``;  ``"AggMo"``: ``mean_k m_k``;
* ``"Adam"``: ``m_last · rsqrt(v + 1e-6)``;
* ``"AdamAggMo"`` (default): ``mean_k m_k · rsqrt(v_k + 1e-6)`` (momenta paired with the RMS
  accumulators as in :func:`~.small_fc_lopt.small_fc_features`: one RMS decay serves all momenta).

With ``aggregate_*`` a magnitude is averaged over the tensor before the exponential (one value per
tensor). Without ``nominal_controller`` the reference uses ``s_g = 1`` (a constant factor
``exp(β_g)``); without ``regularization_controller`` it uses ``s_r = 0``.

Why (§4.1): on the noisy quadratic ``ℓ_t(φ) = ½(φ−ξ_t)ᵀH(φ−ξ_t)`` an update
``φ ← φ − (αI + P)∇`` has linear dynamics ``A = I − (αI + P)H``, and Theorem 1 gives ``ρ(A) ≤ 1``
under ``−α ≤ λ_min(P)`` (the nominal term gives a margin against ascent directions of the learned
term) and ``λ_max(P) ≤ 2/λ_max(H) − α`` (bounded learned steps). The nominal term supplies ``α``,
the weight decay on θ (:meth:`STAR.meta_penalty`) bounds ``λ_max(P)``, and output preconditioning
(Lemma 2) makes the bound scale-robust. :func:`theorem1_conditions` evaluates the two conditions.
On a meta-trained pair (tests/components/optimizers/test_star.py) STAR meets both with margin while
the same network without nominal term and penalty sits at ``ρ(A) ≈ 1`` and its loss drifts back up
over long horizons; because the inputs are normalised and the steps bounded, that drift is slow
(polynomial) rather than the exponential divergence of the linear model.

Defaults = the paper's STAR configuration as far as it can be checked (the PDF's appendix was not
available; see the choices below): ``nominal_stepsize = step_mult = 1e-3``, ``normalize_blackbox``,
a nominal magnitude head, ``AdamAggMo``, and a meta-level weight decay of 0.1. These match the
released STAR checkpoints ``…jamesnomop__best_arch2__wd{0.1,0.5,1.0}_bbnormTrue_stepmult0.001_nomstep0.001``
(learned_optimization ``research/general_lopt/pretrained_optimizers.py``), whose names spell out the
constructor arguments ``normalize_blackbox``, ``step_mult`` and ``nominal_stepsize``. The reference
class defaults ``nominal_stepsize = 0`` (no nominal term, a plain black box); with 0 here the
optimizer is the unregularised baseline the paper compares against.

Choices where the paper/reference was unclear or that we made differently:

* **Meta-level weight decay 0.1** (``meta_weight_decay``; the released grid is {0.1, 0.5, 1.0}
  and which value the paper's headline STAR used is not verified). Here it enters as an additive
  penalty ``½·λ·‖θ_nn‖²`` on the meta-objective, not as the outer optimizer's decoupled decay. At
  the reference initialisation ``E‖θ_nn‖² = 0.77 · (sum of the layers' fan-outs) ≈ 9.3``, so
  λ = 0.1 gives a penalty of ≈ 0.46, a fraction of the normalised meta-loss (the task normaliser
  clips it to ``1.5·ln C`` ≈ 3.5 for 10 classes). With λ = 1.0 the penalty (≈ 4.6) would exceed any
  attainable reduction of that loss, so the optimum would shrink the black box towards 0 and STAR
  towards its nominal AdamAggMo term. 0.1 is the lightest value of the released grid, which still
  bounds the weights (in the noisy-quadratic test it shrinks ``‖θ_nn‖²`` from ≈ 10–11 to ≈ 4–5 during
  meta-training while the unpenalised network's grows to ≈ 23–26); raise it if meta-training produces
  unstable optimizers.
* The penalty covers the MLP weights and biases (``meta_params["nn"]``), not the decay offsets:
  those are reparametrised (0 = the initial decays) and do not scale the learned step, which is what
  the weight decay is meant to bound (§4.2). Whether the paper decayed them too is unverified.
* **Regularisation head and inner weight decay off by default** (``weight_decay = 0``, the
  reference default): the paper's STAR components are the nominal term, magnitude controllers,
  output preconditioning and weight decay on θ; the released checkpoint names carry no inner weight
  decay. ``regularization_controller`` defaults to False as in the reference.
* The network always has 4 outputs, as the reference, even when a controller is off (unused heads
  get zero meta-gradient). The paper's text counts "about 5 extra weights plus 1 scalar" over the
  197-weight small_fc_lopt [PAPER-2nd], which would fit 3 outputs; we follow the code (200 MLP
  weights + 7 decays = 207 meta-parameters).
* Without ``nominal_controller`` the nominal magnitude is the constant 1 (so ``exp(β_g)`` ≈ 1.001
  multiplies the nominal step), as the reference does.
* The reference's ``selfnormalize_blackbox`` (step times ``mean(g)``) and its alternative compute
  paths (``concat_weights``, ``split_weights``, ``make_separate_weights``) are not exposed.
* Everything shared with small_fc_lopt (accumulator dtypes, 0-D tensors, decay pairing, init
  ``TruncNormal(−2, 2)/sqrt(fan_in)``, unused ``num_steps``/``loss``) is as documented there.

Performance: as in :mod:`.small_fc_lopt`, the per-parameter MLP is evaluated by :mod:`.fused` in
the form the ``impl`` field names: ``"reference"`` (channels stacked into ``[..., 28]``, normalised,
multiplied; the ground truth of the tests), ``"fused"`` (normalisers folded into the first layer,
per-channel elementwise sums with 4-wide hidden layers, row/column statistics mixed in their own
shape, so XLA fuses features, network and update into elementwise code; exact up to float rounding)
or ``"single_pass"`` (``"fused"`` with one-step-stale per-tensor norms kept in
the state's ``norms``, so the MLP need not wait for a reduction; this changes the numerics
slightly and is opt-in). ``"auto"`` (default) picks per backend (:data:`.fused.AUTO_IMPL`):
``"fused"`` on every backend today. Params files select it as
``meta_train.lopt_hyperparams: {impl: single_pass}``.

Example (meta-training adds ``meta_penalty`` to its objective):
  >>> lopt = STAR(nominal_estimator="Adam")
  >>> theta = lopt.init_meta_params(jax.random.key(0))
  >>> float(lopt.meta_penalty(theta)) > 0.0
  True
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from components.optimizers import features as F
from components.optimizers.per_parameter import check_bool, check_float
from components.optimizers.small_fc_lopt import AdafacFeatures

__all__ = ["NOMINAL_ESTIMATORS", "STAR", "Theorem1Check", "theorem1_conditions"]

NOMINAL_ESTIMATORS: tuple[str, ...] = ("SGD", "SGDM", "AggMo", "Adam", "AdamAggMo")
"""Allowed values of :attr:`STAR.nominal_estimator` (the nominal direction ``ĝ``)."""

# --------------------------------------------------------------------------- Theorem 1


class Theorem1Check(NamedTuple):
    """The two conditions of Theorem 1 of Harrison et al. 2022 (``research/algorithms.md`` §4.1) and their margins.

    Attributes:
      ascent_margin: ``λ_min(P) + α``; the first condition ``−α ≤ λ_min(P)`` holds iff ``>= 0``.
      step_margin: ``2/λ_max(H) − α − λ_max(P)``; the second condition holds iff ``>= 0``.
      stable: both margins are ``>= 0`` (then ``ρ(I − (αI + P)H) <= 1``).
    """

    ascent_margin: float
    step_margin: float
    stable: bool


def theorem1_conditions(p_eigs, alpha, h_eigs, *, tol: float = 0.0) -> Theorem1Check:
    """Evaluates Theorem 1's stability conditions for ``A = I − (αI + P)H``.

    With ``H`` symmetric positive definite and ``P`` diagonalisable with real eigenvalues the
    dynamics ``φ_{t+1} = Aφ_t + (I − A)ξ_t`` of the noisy quadratic are stable (``ρ(A) ≤ 1``) when
    ``−α ≤ λ_min(P)`` and ``λ_max(P) ≤ 2/λ_max(H) − α``. For commuting (e.g. diagonal) ``P`` and
    ``H`` the exact condition is ``0 ≤ (α + p_i)h_i ≤ 2`` per eigenpair; the theorem's conditions
    imply it and are necessary when the largest ``p_i`` meets the largest ``h_i``.

    Args:
      p_eigs: eigenvalues of the learned preconditioner ``P`` (any shape, real).
      alpha: the nominal step size ``α`` (a scalar).
      h_eigs: eigenvalues of the Hessian ``H`` (positive).
      tol: slack allowed in both conditions (``margin >= −tol`` counts as satisfied).

    Returns:
      A :class:`Theorem1Check`.

    Raises:
      ValueError: if ``p_eigs`` or ``h_eigs`` is empty or not finite, ``h_eigs`` is not positive,
        or ``alpha`` is not a finite scalar.
    """
    p = np.asarray(p_eigs, np.float64).ravel()
    h = np.asarray(h_eigs, np.float64).ravel()
    a = np.asarray(alpha, np.float64)
    if p.size == 0 or h.size == 0 or not (np.all(np.isfinite(p)) and np.all(np.isfinite(h))):
        raise ValueError(
            f"theorem1_conditions needs non-empty, finite eigenvalues, got {p.size} eigenvalues of P "
            f"and {h.size} of H. Pass e.g. p_eigs=np.linalg.eigvals(P).real, h_eigs=np.linalg.eigvalsh(H)."
        )
    if np.any(h <= 0):
        raise ValueError(f"theorem1_conditions: H must be positive definite, got min eigenvalue {h.min():g}.")
    if a.ndim != 0 or not np.isfinite(a):
        raise ValueError(f"theorem1_conditions: alpha must be a finite scalar, got {alpha!r}.")
    ascent = float(p.min() + a)
    step = float(2.0 / h.max() - a - p.max())
    return Theorem1Check(ascent_margin=ascent, step_margin=step, stable=bool(ascent >= -tol and step >= -tol))


# --------------------------------------------------------------------------- optimizer


_BOOL_FIELDS = (
    "nominal_controller",
    "regularization_controller",
    "normalize_blackbox",
    "aggregate_magnitude",
    "aggregate_nominal_magnitude",
    "aggregate_regularization_magnitude",
)


@dataclasses.dataclass(frozen=True)
class STAR(AdafacFeatures):
    """STAR: small_fc_lopt plus a nominal term, magnitude heads, output preconditioning and weight decay.

    The features and network are small_fc_lopt's (:class:`~.small_fc_lopt.AdafacFeatures`, with 4
    outputs); this class adds the output rule (:meth:`output`) and the meta-level penalty. See the
    module docstring for the update's maths, the reference and the defaults.

    Attributes:
      hidden_size: width of the hidden layers (4).
      hidden_layers: number of hidden layers (2).
      exp_mult: ``(β_b, β_g, β_r)``, multipliers of the magnitude, nominal-magnitude and
        regularisation-magnitude outputs inside their exponentials ((1e-3, 1e-3, 1e-3)).
      step_mult: multiplier of the black-box term (1e-3).
      nominal_stepsize: step size of the nominal term (1e-3; 0 removes the term).
      nominal_estimator: the nominal direction, one of :data:`NOMINAL_ESTIMATORS` ("AdamAggMo").
      nominal_controller: use the nominal-magnitude head (True).
      regularization_controller: use the regularisation-magnitude head (False).
      weight_decay: inner decoupled weight decay ``wd`` (0.0 = off).
      normalize_blackbox: divide the black-box term by ``sqrt(v_1 + 1e-6)`` (True).
      aggregate_magnitude: average ``s_b`` over each tensor (False).
      aggregate_nominal_magnitude: average ``s_g`` over each tensor (False).
      aggregate_regularization_magnitude: average ``s_r`` over each tensor (False).
      meta_weight_decay: λ of :meth:`meta_penalty`, the weight decay on θ (0.1).
      initial_momentum_decays: decays of the momentum accumulators at θ = 0.
      initial_rms_decays: decays of the second-moment accumulators at θ = 0.
      initial_adafactor_decays: decays of the Adafactor statistics at θ = 0.
      impl: how the per-parameter MLP is evaluated (:mod:`.fused`): ``"reference"`` (stacked
        matmul), ``"fused"`` (exact, elementwise), ``"single_pass"`` (fused with one-step-stale
        norms; slightly different numerics, the state gains ``norms``) or ``"auto"``
        (default: ``"fused"`` on every backend today). Params files:
        ``meta_train.lopt_hyperparams: {impl: ...}``.
    """

    hidden_size: int = 4
    hidden_layers: int = 2
    exp_mult: tuple[float, float, float] = (0.001, 0.001, 0.001)
    step_mult: float = 0.001
    nominal_stepsize: float = 0.001
    nominal_estimator: str = "AdamAggMo"
    nominal_controller: bool = True
    regularization_controller: bool = False
    weight_decay: float = 0.0
    normalize_blackbox: bool = True
    aggregate_magnitude: bool = False
    aggregate_nominal_magnitude: bool = False
    aggregate_regularization_magnitude: bool = False
    meta_weight_decay: float = 0.1
    impl: str = "auto"

    name: ClassVar[str] = "star"
    num_outputs: ClassVar[int] = 4  # direction, magnitude, nominal magnitude, regularisation magnitude
    first_bias_precision: ClassVar[Any] = jax.lax.Precision.HIGHEST

    def __post_init__(self):
        try:
            exp_mult = tuple(self.exp_mult)
        except TypeError:
            exp_mult = ()
        if len(exp_mult) != 3:
            raise ValueError(
                "STAR.exp_mult must be 3 floats (magnitude, nominal magnitude, regularisation magnitude), "
                f"e.g. (0.001, 0.001, 0.001), got {self.exp_mult!r}."
            )
        object.__setattr__(self, "exp_mult", tuple(check_float("STAR", "exp_mult", x) for x in exp_mult))
        for field in ("step_mult", "nominal_stepsize", "weight_decay", "meta_weight_decay"):
            object.__setattr__(self, field, check_float("STAR", field, getattr(self, field), nonnegative=True))
        if self.nominal_estimator not in NOMINAL_ESTIMATORS:
            raise ValueError(
                f"STAR.nominal_estimator must be one of {list(NOMINAL_ESTIMATORS)}, got {self.nominal_estimator!r}."
            )
        for field in _BOOL_FIELDS:
            object.__setattr__(self, field, check_bool("STAR", field, getattr(self, field)))
        self._check_fields()

    def meta_penalty(self, meta_params: Any) -> jax.Array:
        """STAR's weight decay on the learned optimizer: ``½ · meta_weight_decay · Σ θ²``.

        The sum runs over the MLP weights and biases (every leaf of ``meta_params["nn"]``); the
        decay offsets are not penalised (see the module's choices). Add it to the meta-objective
        (the meta-trainer does so through this hook); it is 0.0 when ``meta_weight_decay == 0``.
        Differentiable and traceable (works on perturbed or batched θ).
        """
        if not isinstance(meta_params, Mapping) or "nn" not in meta_params:
            raise ValueError("STAR.meta_penalty needs meta_params with an 'nn' entry, as from init_meta_params(key).")
        squares = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(meta_params["nn"]))
        return 0.5 * self.meta_weight_decay * squares

    def output(self, hyper, step, index, param, grad, acc, outputs) -> jax.Array:
        """``Δp = −wd·exp(β_r s_r)·p − f_b − f_g`` for one tensor (the module docstring's update)."""
        dtype = F.accumulator_dtype(param.dtype)
        p = param.astype(dtype)
        g = grad.astype(dtype)
        momentum, rms = acc.momentum, acc.rms
        direction, magnitude, nom_magnitude, reg_magnitude = outputs
        if not self.nominal_controller:
            nom_magnitude = jnp.ones_like(direction)
        if not self.regularization_controller:
            reg_magnitude = jnp.zeros_like(direction)
        if self.aggregate_magnitude:
            magnitude = jnp.mean(magnitude)
        if self.aggregate_nominal_magnitude:
            nom_magnitude = jnp.mean(nom_magnitude)
        if self.aggregate_regularization_magnitude:
            reg_magnitude = jnp.mean(reg_magnitude)
        beta_b, beta_g, beta_r = self.exp_mult

        blackbox = self.step_mult * direction * jnp.exp(beta_b * magnitude)
        if self.normalize_blackbox:
            blackbox = blackbox * jax.lax.rsqrt(rms[0] + 1e-6)
        update = -blackbox
        if self.nominal_stepsize:
            g_hat = _nominal_direction(self.nominal_estimator, g, momentum, rms)
            update = update - self.nominal_stepsize * jnp.exp(beta_g * nom_magnitude) * g_hat
        if self.weight_decay:
            update = update - self.weight_decay * jnp.exp(beta_r * reg_magnitude) * p
        return update


def _nominal_direction(estimator: str, grad, momentum, rms) -> jax.Array:
    """``ĝ`` of the nominal term (see the module docstring)."""
    if estimator == "SGD":
        return grad
    if estimator == "SGDM":
        return momentum[-1]
    if estimator == "AggMo":
        return sum(momentum) / len(momentum)
    adam = [m * jax.lax.rsqrt(v + 1e-6) for m, v in F.pair_decays(momentum, rms, "momentum and RMS accumulators")]
    if estimator == "Adam":
        return adam[-1]
    return sum(adam) / len(adam)  # AdamAggMo
