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
  (:attr:`SmallFcLOptState.norms`), so the MLP need not wait for a reduction over the tensor. This
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
import functools
import itertools
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from components.optimizers import features as F
from components.optimizers import fused

__all__ = ["SmallFcLOpt", "SmallFcLOptState", "small_fc_features"]


def _pairs(a: Sequence[jax.Array], b: Sequence[jax.Array], what: str) -> list[tuple]:
    """Pairs two per-decay tuples like NumPy broadcasting of their (trailing) decay axes."""
    if len(a) == len(b):
        return list(zip(a, b, strict=True))
    if len(b) == 1:
        return [(x, b[0]) for x in a]
    if len(a) == 1:
        return [(a[0], y) for y in b]
    raise ValueError(
        f"small_fc_lopt combines {what}; their numbers of decays must be equal or one of them 1, "
        f"got {len(a)} and {len(b)}. Change the initial_*_decays so that they are compatible."
    )


def small_fc_features(
    param: jax.Array,
    grad: jax.Array,
    momentum: Sequence[jax.Array],
    rms: Sequence[jax.Array],
    fac_g: Sequence[jax.Array],
    factored: F.FactoredAccumulator,
) -> list[jax.Array]:
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
    feats += [m * r for m, r in _pairs(momentum, rsqrt_rms, "momentum and RMS accumulators")]
    feats += rsqrt_rms
    feats += list(fac_g)

    dims = F.factored_dims(param.shape)
    if dims is None:
        v = list(factored.v_full)
        feats += v + v
        inv = [jax.lax.rsqrt(x + 1e-8) for x in v]
        feats += inv + inv
        pairs = _pairs(momentum, v, "momentum and Adafactor accumulators")
        feats += [m * (x + 1e-6) ** -0.5 for m, x in pairs]
        return feats

    d1, d0 = dims
    rows = [jnp.expand_dims(r, d0) for r in factored.v_row]
    cols = [jnp.expand_dims(c, d1) for c in factored.v_col]
    feats += rows + cols
    feats += [jax.lax.rsqrt(r + 1e-8) for r in rows]
    feats += [jax.lax.rsqrt(c + 1e-8) for c in cols]
    factors = [F.factored_preconditioner(r, c, dims) for r, c in zip(factored.v_row, factored.v_col, strict=True)]
    pairs = _pairs(momentum, factors, "momentum and Adafactor accumulators")
    feats += [m * rf * cf for m, (rf, cf) in pairs]
    return feats


class SmallFcLOptState(NamedTuple):
    """State of a ``small_fc_lopt`` transformation.

    Attributes:
      iteration: int32 step counter ``t`` (0 before the first update).
      momentum: params-shaped tree; each leaf is a tuple of momentum accumulators, one per decay.
      rms: params-shaped tree; each leaf is a tuple of second-moment accumulators.
      factored: params-shaped tree; each leaf is a :class:`~.features.FactoredAccumulator`.
      norms: ``impl="single_pass"`` only: params-shaped tree of float32 ``[num_features]`` arrays,
        the inverse RMS of each feature channel at the previous step (:func:`.fused.init_norms`
        before the first update, which does not use them); ``None`` for the other forms.
    """

    iteration: jax.Array
    momentum: Any
    rms: Any
    factored: Any
    norms: Any = None


def _as_decays(values, name: str) -> tuple[float, ...]:
    try:
        decays = tuple(float(v) for v in values)
    except TypeError as err:
        raise TypeError(f"{name} must be a sequence of floats, got {values!r}.") from err
    if not decays or not all(0.0 <= d < 1.0 for d in decays):
        raise ValueError(f"{name} must be a non-empty sequence of decays in [0, 1), got {values!r}.")
    return decays


@dataclasses.dataclass(frozen=True)
class SmallFcLOpt:
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
        norms; slightly different numerics, state gains :attr:`SmallFcLOptState.norms`) or
        ``"auto"`` (default: ``"fused"`` on every backend today). Params files:
        ``meta_train.lopt_hyperparams: {impl: ...}``.
    """

    hidden_size: int = 4
    hidden_layers: int = 2
    exp_mult: float = 0.001
    step_mult: float = 0.001
    initial_momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    initial_rms_decays: tuple[float, ...] = (0.999,)
    initial_adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    impl: str = "auto"

    name: ClassVar[str] = "small_fc_lopt"

    def __post_init__(self):
        for field in ("hidden_size", "hidden_layers"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"SmallFcLOpt.{field} must be an int, got {value!r}.")
        if self.hidden_size < 1 or self.hidden_layers < 0:
            raise ValueError(
                "SmallFcLOpt needs hidden_size >= 1 and hidden_layers >= 0, got "
                f"hidden_size={self.hidden_size}, hidden_layers={self.hidden_layers}."
            )
        object.__setattr__(self, "hidden_size", int(self.hidden_size))
        object.__setattr__(self, "hidden_layers", int(self.hidden_layers))
        object.__setattr__(self, "exp_mult", float(self.exp_mult))
        object.__setattr__(self, "step_mult", float(self.step_mult))
        for field in ("initial_momentum_decays", "initial_rms_decays", "initial_adafactor_decays"):
            object.__setattr__(self, field, _as_decays(getattr(self, field), field))
        fused.check_impl("SmallFcLOpt", self.impl)
        _ = self.num_features  # validates that the decay counts can be combined

    # ------------------------------------------------------------------ sizes

    @functools.cached_property
    def num_features(self) -> int:
        """Number of normalised per-parameter feature channels (28 by default).

        Counted by tracing :func:`small_fc_features` abstractly on a 2-D tensor.
        """
        param = jax.ShapeDtypeStruct((3, 2), jnp.float32)
        return len(jax.eval_shape(self._features_of_fresh_state, param))

    @property
    def num_inputs(self) -> int:
        """MLP input width: feature channels plus the step-embedding features (39 by default)."""
        return self.num_features + len(F.TANH_TIMESCALES)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Widths from input to output, e.g. ``(39, 4, 4, 2)``."""
        return (self.num_inputs, *[self.hidden_size] * self.hidden_layers, 2)

    def _features_of_fresh_state(self, param: jax.Array) -> list[jax.Array]:
        grad = jnp.zeros_like(param)
        momentum = F.init_momentum(param, len(self.initial_momentum_decays))
        rms = F.init_rms(param, len(self.initial_rms_decays))
        factored = F.init_factored(param, len(self.initial_adafactor_decays))
        fac_g = tuple(grad for _ in self.initial_adafactor_decays)
        return small_fc_features(param, grad, momentum, rms, fac_g, factored)

    # ------------------------------------------------------------------ contract

    def config(self) -> dict:
        """JSON-serialisable hyperparameters; ``SmallFcLOpt(**lopt.config())`` rebuilds it."""
        return {
            "hidden_size": self.hidden_size,
            "hidden_layers": self.hidden_layers,
            "exp_mult": self.exp_mult,
            "step_mult": self.step_mult,
            "initial_momentum_decays": list(self.initial_momentum_decays),
            "initial_rms_decays": list(self.initial_rms_decays),
            "initial_adafactor_decays": list(self.initial_adafactor_decays),
            "impl": self.impl,
        }

    def init_meta_params(self, key: jax.Array) -> dict:
        """Initial meta-parameters θ.

        Returns:
          ``{"nn": {"w0", "b0", …}, "momentum_decays", "rms_decays", "adafactor_decays"}``;
          ``w{l}`` has shape ``[fan_in, fan_out]`` and is drawn as
          ``TruncNormal(−2, 2) / sqrt(fan_in)``; biases and decay offsets are zero.
        """
        sizes = self.layer_sizes
        keys = jax.random.split(key, len(sizes) - 1)
        nn = {}
        for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            w = jax.random.truncated_normal(keys[layer], -2.0, 2.0, (fan_in, fan_out), jnp.float32)
            nn[f"w{layer}"] = w / np.sqrt(fan_in).astype(np.float32)
            nn[f"b{layer}"] = jnp.zeros((fan_out,), jnp.float32)
        return {
            "nn": nn,
            "momentum_decays": jnp.zeros((len(self.initial_momentum_decays),), jnp.float32),
            "rms_decays": jnp.zeros((len(self.initial_rms_decays),), jnp.float32),
            "adafactor_decays": jnp.zeros((len(self.initial_adafactor_decays),), jnp.float32),
        }

    def make(self, meta_params: Any, *, num_steps: int) -> optax.GradientTransformationExtraArgs:
        """Builds the inner optimizer for meta-parameters θ (which may be traced).

        Args:
          meta_params: θ as returned by :meth:`init_meta_params` (possibly perturbed or batched
            under ``jax.vmap``).
          num_steps: length of the inner run. Required by the common contract; unused here.

        Returns:
          An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` and accepts
          (and ignores) any keyword extra args such as ``loss`` or ``loss_fn``.

        Raises:
          ValueError: if ``num_steps`` is a non-positive integer or ``meta_params`` lacks a key.
        """
        if num_steps is None:
            raise ValueError("SmallFcLOpt.make needs num_steps, e.g. make(meta_params, num_steps=1000).")
        if isinstance(num_steps, int | np.integer) and num_steps < 1:
            raise ValueError(f"SmallFcLOpt.make: num_steps must be >= 1, got {num_steps}.")
        missing = {"nn", "momentum_decays", "rms_decays", "adafactor_decays"} - set(meta_params)
        if missing:
            raise ValueError(
                f"SmallFcLOpt.make: meta_params lacks {sorted(missing)}; build them with "
                "lopt.init_meta_params(key) (or load a checkpoint)."
            )

        def decays(initial, offset):
            return F.param_to_decay(F.decay_to_param(jnp.asarray(initial)) + offset)

        nn = meta_params["nn"]
        mom_decays = decays(self.initial_momentum_decays, meta_params["momentum_decays"])
        rms_decays = decays(self.initial_rms_decays, meta_params["rms_decays"])
        fac_decays = decays(self.initial_adafactor_decays, meta_params["adafactor_decays"])
        n_mom = len(self.initial_momentum_decays)
        n_rms = len(self.initial_rms_decays)
        n_fac = len(self.initial_adafactor_decays)
        exp_mult, step_mult = self.exp_mult, self.step_mult
        num_layers = self.hidden_layers + 1
        num_features = self.num_features
        impl = fused.resolve_impl(self.impl)
        single_pass = impl == "single_pass"

        def init_fn(params):
            return SmallFcLOptState(
                iteration=jnp.zeros([], jnp.int32),
                momentum=jax.tree.map(lambda p: F.init_momentum(p, n_mom), params),
                rms=jax.tree.map(lambda p: F.init_rms(p, n_rms), params),
                factored=jax.tree.map(lambda p: F.init_factored(p, n_fac), params),
                norms=jax.tree.map(lambda p: fused.init_norms(num_features), params) if single_pass else None,
            )

        def leaf_update(param, grad, momentum, rms, factored, norms, layers, first_step):
            momentum = F.update_momentum(momentum, grad, mom_decays)
            rms = F.update_rms(rms, grad, rms_decays)
            factored, fac_g = F.update_factored(factored, grad, fac_decays)
            feats = small_fc_features(param, grad, momentum, rms, fac_g, factored)
            (direction, magnitude), norms = fused.normalized_mlp(
                impl, feats, layers, stale_norms=norms, first_step=first_step
            )
            step = direction * jnp.exp(exp_mult * magnitude) * step_mult
            update = jnp.broadcast_to(-step, param.shape).astype(param.dtype)
            return update, momentum, rms, factored, norms

        def update_fn(updates, state, params=None, **extra_args):
            del extra_args  # loss / loss_fn are accepted for the common contract, not used
            if params is None:
                raise ValueError(
                    "small_fc_lopt uses the parameters as a feature: call opt.update(grads, state, params, loss=loss)."
                )
            step_features = F.tanh_step_embedding(state.iteration)
            layers = _mlp_layers(nn, num_features, step_features, num_layers)
            first_step = state.iteration == 0
            grads, treedef = jax.tree.flatten(updates)
            norms = fused.stale_norm_leaves("small_fc_lopt", impl, state.norms, treedef)
            results = [
                leaf_update(*args, layers, first_step)
                for args in zip(
                    treedef.flatten_up_to(params),
                    grads,
                    treedef.flatten_up_to(state.momentum),
                    treedef.flatten_up_to(state.rms),
                    treedef.flatten_up_to(state.factored),
                    norms,
                    strict=True,
                )
            ]
            new_updates, momentum, rms, factored = (treedef.unflatten([r[i] for r in results]) for i in range(4))
            new_state = SmallFcLOptState(
                iteration=state.iteration + jnp.ones([], jnp.int32),
                momentum=momentum,
                rms=rms,
                factored=factored,
                norms=treedef.unflatten([r[4] for r in results]) if single_pass else None,
            )
            return new_updates, new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _mlp_layers(nn, num_feats: int, step_features: jax.Array, num_layers: int) -> list[tuple[jax.Array, jax.Array]]:
    """``[(w0 [F, H], b0'), (w1, b1), …]`` for :func:`.fused.normalized_mlp`.

    The (global) step features are folded into the first bias: ``b0' = b0 + t @ w0[F:]``.
    """
    w0 = nn["w0"]
    first_bias = nn["b0"] + step_features @ w0[num_feats:]
    return [(w0[:num_feats], first_bias)] + [(nn[f"w{layer}"], nn[f"b{layer}"]) for layer in range(1, num_layers)]
