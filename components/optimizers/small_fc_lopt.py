"""``small_fc_lopt``: the per-parameter MLP learned optimizer with Adafactor-style features.

Re-implementation of learned_optimization's ``AdafacMLPLOpt`` (the "small_fc_lopt" of Metz et al.
2022, "Practical tradeoffs between memory, compute, and performance in learned optimizers",
CoLLAs 2022; PyLO's ``AdafacLO``) as an optax transformation. See ``research/algorithms.md`` §2.3.

The maths, for one parameter tensor ``p`` with gradient ``g`` at step ``t`` (counted from 0):

1. Accumulators (:mod:`.features`), updated with ``g`` *before* the features are built:
   momentum ``m_k`` (decays ``β^m``, 3 by default), second moment ``v_k`` (``β^v``, 1) and
   Adafactor statistics ``r_k, c_k`` (``β^a``, 3) with preconditioned gradients ``fac_g_k``.
   Every decay is meta-learned through an offset ``δ`` in ``log(1−β)/10`` space:
   ``β = 1 − exp(10·(log(1−β_init)/10 + δ))``; ``δ = 0`` at initialisation.
2. 28 feature channels, in the reference's order:
   ``g, p, m_{1..3}, v_1, m_k·rsqrt(v+1e-6) (3), rsqrt(v+1e-6), fac_g_{1..3}``, then for tensors
   with ≥ 2 axes ``row_k, col_k, rsqrt(row_k+1e-8), rsqrt(col_k+1e-8)`` (each broadcast along the
   axis it was reduced over) and ``fac_mom_k = m_k · rsqrt(r_k/mean(r_k)) · rsqrt(c_k)``; for 0-D
   and 1-D tensors ``v^a_k`` twice, ``rsqrt(v^a_k+1e-8)`` twice and ``m_k · (v^a_k+1e-6)^-½``.
   Each channel is normalised by its own second moment over the tensor,
   ``f ← f / sqrt(1e-5 + mean(f²))``.
3. 11 un-normalised step features ``tanh(t/τ − 1)``, τ ∈ {1, 3, …, 1e5}: 39 inputs in all.
4. An MLP 39 → 4 → 4 → 2 with ReLU on the hidden layers gives a direction ``d`` and a magnitude
   ``s`` per parameter; the update is ``Δp = −d · exp(exp_mult·s) · step_mult``.

With the defaults the meta-parameters are 190 MLP weights and 7 decay offsets: 197 numbers.

Performance: the MLP is evaluated by :mod:`.fused`, in the form the ``impl`` field names:

* ``"reference"`` stacks the channels into a ``[..., 28]`` tensor, normalises it and multiplies
  (the reference's formulation; the ground truth of the tests);
* ``"fused"`` folds each channel's normaliser ``n_i`` into the first layer's weights and evaluates
  ``h_j = relu(Σ_i (w_ij·n_i)·f_i + c_j)`` as elementwise sums, ``c_j`` folding the bias and the
  (global) step features, with the row/column statistics mixed in their own small shape first; no
  ``[..., 39]`` tensor is ever built, so XLA fuses the accumulator updates, features and MLP into
  one elementwise pass after the per-channel norms (DESIGN.md, "Performance model"). Exact (equal to
  ``"reference"`` up to float rounding);
* ``"single_pass"`` is ``"fused"`` with one-step-stale norms kept in the state
  (:attr:`.per_parameter.PerParameterState.norms`), so the MLP need not wait for a reduction over the tensor. This
  changes the numerics slightly (the first step estimates the norms on a subsample, later steps use
  the previous step's exact norms), so it is opt-in;
* ``"auto"`` (default) picks per backend (:data:`.fused.AUTO_IMPL`): ``"fused"`` on every backend
  today.

Params files select it as ``meta_train.lopt_hyperparams: {impl: single_pass}``. The channel order
and the ``w{l}``/``b{l}`` layout match the reference's haiku parameters, so released weights map one
to one (``nn/~/w0`` → ``nn/w0``).

Choices where the reference was unclear or that we made differently:

* The reference builds and normalises the row/column features after tiling them to the full tensor;
  we compute the same second moment on the un-tiled statistics (identical up to rounding).
* 0-D parameters: the reference reshapes them to ``[1]``; the elementwise form needs no reshape and
  the maths is the same (each channel is normalised over its single element).
* The reference broadcasts the decay axes against each other (``m·rsqrt(v)`` pairs 3 momenta with
  1 RMS decay); we allow equal counts or a count of 1 on either side and raise ``ValueError`` at
  construction otherwise, where the reference would fail inside the trace.
* Accumulators are kept in at least float32 (``promote_types(param dtype, float32)``; the reference
  keeps momentum/RMS in the parameter dtype and Adafactor statistics in float32) and the update is
  cast back to the parameter dtype, so the state dtypes never change between steps.
* The reference requires ``num_steps`` at init but never uses it; :meth:`SmallFcLOpt.make` accepts
  it for the common contract and ignores it. The ``loss`` extra argument is likewise accepted and
  unused (this optimizer has no loss features).
* Weight init follows the reference: ``w ~ (1/sqrt(fan_in))·TruncNormal(−2, 2)`` (haiku's
  ``TruncatedNormal``, which does not rescale for the truncation), biases and decay offsets 0.
  Random draws differ from the reference (different key splitting).
* The reference's alternative compute paths (``concat_weights``, ``make_separate_weights``,
  ``split_weights``) compute the same function and are not exposed.

Example:
  >>> import jax, jax.numpy as jnp
  >>> lopt = SmallFcLOpt()
  >>> meta_params = lopt.init_meta_params(jax.random.key(0))
  >>> opt = lopt.make(meta_params, num_steps=100)
  >>> params = {"w": jnp.ones((3, 2))}
  >>> state = opt.init(params)
  >>> grads = {"w": jnp.full((3, 2), 0.5)}
  >>> updates, state = opt.update(grads, state, params, loss=jnp.float32(1.0))
  >>> updates["w"].shape
  (3, 2)
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from components.optimizers import features as F
from components.optimizers.per_parameter import (
    AccumulatorDecays,
    PerParameterLOpt,
    check_decays,
    check_float,
    check_int,
    check_mlp_shapes,
    exp_magnitude_step,
    fold_step_features,
    init_mlp,
)

__all__ = ["AdafacFeatures", "AdafacHyper", "SmallFcLOpt", "small_fc_features"]


def small_fc_features(param, grad, momentum, rms, fac_g, factored: F.FactoredAccumulator) -> list[jax.Array]:
    """The un-normalised feature channels of one tensor, in the reference's order.

    Args:
      param: the parameter tensor.
      grad: its gradient.
      momentum: updated momentum accumulators, one per momentum decay.
      rms: updated second-moment accumulators, one per RMS decay.
      fac_g: Adafactor-preconditioned gradients, one per Adafactor decay.
      factored: the updated Adafactor statistics.

    Returns:
      A list of arrays, each broadcastable to ``param.shape`` (row/column statistics keep their
      reduced axis with size 1). Its length (28 with the default decays) is the number of
      normalised inputs of the MLP.
    """
    dtype = F.accumulator_dtype(param.dtype)
    g = grad.astype(dtype)
    p = param.astype(dtype)
    feats = [g, p, *momentum, *rms]
    rsqrt_rms = [jax.lax.rsqrt(v + 1e-6) for v in rms]
    feats += [m * r for m, r in F.pair_decays(momentum, rsqrt_rms, "momentum and RMS accumulators")]
    feats += rsqrt_rms
    feats += list(fac_g)

    dims = F.factored_dims(param.shape)
    if dims is None:
        v = list(factored.v_full)
        feats += v + v
        inv = [jax.lax.rsqrt(x + 1e-8) for x in v]
        feats += inv + inv
        pairs = F.pair_decays(momentum, v, "momentum and Adafactor accumulators")
        feats += [m * (x + 1e-6) ** -0.5 for m, x in pairs]
        return feats

    d1, d0 = dims
    rows = [jnp.expand_dims(r, d0) for r in factored.v_row]
    cols = [jnp.expand_dims(c, d1) for c in factored.v_col]
    feats += rows + cols
    feats += [jax.lax.rsqrt(r + 1e-8) for r in rows]
    feats += [jax.lax.rsqrt(c + 1e-8) for c in cols]
    factors = [F.factored_preconditioner(r, c, dims) for r, c in zip(factored.v_row, factored.v_col, strict=True)]
    pairs = F.pair_decays(momentum, factors, "momentum and Adafactor accumulators")
    feats += [m * rf * cf for m, (rf, cf) in pairs]
    return feats


class AdafacHyper(NamedTuple):
    """What :meth:`AdafacFeatures.prepare` derives from θ: the MLP and the three decay vectors."""

    nn: Any
    momentum_decays: jax.Array
    rms_decays: jax.Array
    adafactor_decays: jax.Array


_DECAY_FIELDS = ("initial_momentum_decays", "initial_rms_decays", "initial_adafactor_decays")


class AdafacFeatures(AccumulatorDecays, PerParameterLOpt):
    """The features and network of ``small_fc_lopt``, shared by :class:`SmallFcLOpt` and STAR.

    Accumulators with meta-learned decay offsets, :func:`small_fc_features`, and an MLP of
    ``hidden_layers`` × ``hidden_size`` ReLU units with :attr:`num_outputs` outputs on the channels
    plus the tanh step features. A subclass adds its output rule (and its own fields).
    """

    num_outputs: ClassVar[int] = 2
    first_bias_precision: ClassVar[Any] = None
    """Precision of the step features' matmul into the first bias (STAR: ``HIGHEST``)."""

    def _check_fields(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "hidden_size", check_int(owner, "hidden_size", self.hidden_size, 1))
        object.__setattr__(self, "hidden_layers", check_int(owner, "hidden_layers", self.hidden_layers, 0))
        object.__setattr__(self, "step_mult", check_float(owner, "step_mult", self.step_mult))
        for field in _DECAY_FIELDS:
            object.__setattr__(self, field, check_decays(owner, field, getattr(self, field)))
        self.resolved_impl  # noqa: B018 - validates impl
        _ = self.num_features  # validates that the decay counts can be combined

    @property
    def num_inputs(self) -> int:
        """MLP input width: feature channels plus the step-embedding features (39 by default)."""
        return self.num_features + len(F.TANH_TIMESCALES)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Widths from input to output, e.g. ``(39, 4, 4, 2)``."""
        return (self.num_inputs, *[self.hidden_size] * self.hidden_layers, self.num_outputs)

    def fresh_channels(self, param: jax.Array) -> list[jax.Array]:
        acc = self.init_accumulators(param)
        grad = jnp.zeros_like(param)
        fac_g = tuple(grad for _ in self.initial_adafactor_decays)
        return small_fc_features(param, grad, acc.momentum, acc.rms, fac_g, acc.factored)

    def init_meta_params(self, key: jax.Array) -> dict:
        """Initial meta-parameters θ.

        Returns:
          ``{"nn": {"w0", "b0", …}, "momentum_decays", "rms_decays", "adafactor_decays"}``;
          ``w{l}`` has shape ``[fan_in, fan_out]`` and is drawn as
          ``TruncNormal(−2, 2) / sqrt(fan_in)``; biases and decay offsets are zero.
        """
        return {
            "nn": init_mlp(key, self.layer_sizes),
            "momentum_decays": jnp.zeros((len(self.initial_momentum_decays),), jnp.float32),
            "rms_decays": jnp.zeros((len(self.initial_rms_decays),), jnp.float32),
            "adafactor_decays": jnp.zeros((len(self.initial_adafactor_decays),), jnp.float32),
        }

    def prepare(self, meta_params: Any, num_steps) -> AdafacHyper:
        owner = type(self).__name__
        keys = set(meta_params) if isinstance(meta_params, Mapping) else set()
        missing = {"nn", "momentum_decays", "rms_decays", "adafactor_decays"} - keys
        if missing:
            raise ValueError(
                f"{owner}.make: meta_params lacks {sorted(missing)}; build them with "
                "lopt.init_meta_params(key) (or load a checkpoint)."
            )
        check_mlp_shapes(owner, meta_params["nn"], self.layer_sizes)

        def decays(initial, offset):
            return F.param_to_decay(F.decay_to_param(jnp.asarray(initial)) + offset)

        return AdafacHyper(
            nn=meta_params["nn"],
            momentum_decays=decays(self.initial_momentum_decays, meta_params["momentum_decays"]),
            rms_decays=decays(self.initial_rms_decays, meta_params["rms_decays"]),
            adafactor_decays=decays(self.initial_adafactor_decays, meta_params["adafactor_decays"]),
        )

    def init_accumulators(self, param: jax.Array) -> F.Accumulators:
        return F.init_accumulators(param, *self.decay_counts)

    def features(self, hyper: AdafacHyper, param, grad, acc):
        acc, fac_g = F.update_accumulators(acc, grad, *hyper[1:])
        return grad, acc, small_fc_features(param, grad, acc.momentum, acc.rms, fac_g, acc.factored)

    def step_context(self, hyper: AdafacHyper, state, leaves, accumulators, extra_args):
        del leaves, accumulators, extra_args  # the loss is accepted for the common contract, not used
        step_features = F.tanh_step_embedding(state.iteration)
        layers = fold_step_features(hyper.nn, self.num_features, step_features, precision=self.first_bias_precision)
        return layers, state.context

    def network(self, hyper, step, index):
        return step


@dataclasses.dataclass(frozen=True)
class SmallFcLOpt(AdafacFeatures):
    """Per-parameter MLP learned optimizer with Adafactor-style features (``AdafacMLPLOpt``).

    See the module docstring for the update's maths and the reference.

    Attributes:
      hidden_size: width of the hidden layers (4).
      hidden_layers: number of hidden layers (2).
      exp_mult: multiplier of the magnitude output inside the exponential (0.001).
      step_mult: overall step multiplier (0.001).
      initial_momentum_decays: decays of the momentum accumulators at θ = 0.
      initial_rms_decays: decays of the second-moment accumulators at θ = 0.
      initial_adafactor_decays: decays of the Adafactor statistics at θ = 0.
      impl: how the per-parameter MLP is evaluated (:mod:`.fused`): ``"reference"`` (stacked
        matmul), ``"fused"`` (exact, elementwise), ``"single_pass"`` (fused with one-step-stale
        norms; slightly different numerics, the state gains ``norms``) or ``"auto"`` (default:
        ``"fused"`` on every backend today). Params files: ``meta_train.lopt_hyperparams: {impl: ...}``.
    """

    hidden_size: int = 4
    hidden_layers: int = 2
    exp_mult: float = 0.001
    step_mult: float = 0.001
    impl: str = "auto"

    name: ClassVar[str] = "small_fc_lopt"

    def __post_init__(self):
        object.__setattr__(self, "exp_mult", check_float("SmallFcLOpt", "exp_mult", self.exp_mult))
        self._check_fields()

    def output(self, hyper, step, index, param, grad, acc, outputs):
        """``Δp = −d · exp(exp_mult·s) · step_mult``."""
        return exp_magnitude_step(outputs, self.exp_mult, self.step_mult)
