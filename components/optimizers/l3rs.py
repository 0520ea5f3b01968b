"""``l3rs``: a learned, per-layer linear combination of base-optimizer updates (L3RS).

Re-implementation of the update rule of Kristiansen, Sandler, Zhmoginov, Miller, Goyal, Lee and
Vladymyrov, "Narrowing the Focus: Learned Optimizers for Pretrained Models" (arXiv 2408.09310, 2024)
as an optax transformation. See ``research/algorithms.md`` §5. The full text of the paper was not
available; the mechanism below follows the abstract and the ICLR-2025 reviews, and every detail they
leave open is listed under "Choices where the paper is unknown".

The maths, for parameter tensor (= pytree leaf) ``l`` of ``L`` with gradient ``g_l`` at step ``t``
(counted from 0) of a run of ``T`` steps (``num_steps``):

1. Base directions ``d_{l,k}`` (elementwise, accumulators updated with ``g_l`` first), for the
   configured subset of :data:`BASE_DIRECTIONS`:

   * ``sgd``:      ``d = g``
   * ``momentum``: heavy ball ``m ← μ·m + g``, ``d = m`` (``optax.trace``, PyTorch's SGD momentum)
   * ``adam``:     ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²``,
     ``d = m̂ / (sqrt(v̂) + ε)`` with ``m̂ = m/(1−β1^{t+1})``, ``v̂ = v/(1−β2^{t+1})``
   * ``lion``:     ``d = sign(β1·m + (1−β1)·g)``, then ``m ← β2·m + (1−β2)·g`` (Chen et al. 2023)

   Each direction has a meta-learned base learning rate ``η_k = exp(log_learning_rates[k])``, so
   ``u_{l,k} = −η_k·d_{l,k}`` is base optimizer ``k``'s own step.
2. Training-status features, one row per layer, from exponential moving averages with decay ``β``
   (``ema_decay``), bias-corrected (``x̂ = x/(1−β^{t+1})``):

   * progress: ``tanh(10·(t/T − s))`` for the 9 shifts ``s`` in :data:`FRACTION_SHIFTS` (VeLO/Celo's
     "fractional tanh embedding", §0.2), shared by all layers;
   * loss: ``log(|L̂_t| / |ℓ_0|)``, the EMA of the loss relative to the first loss (both floored at
     1e-12), shared by all layers;
   * gradient: ``log(Ĝ_l)`` with ``G_l`` the EMA of the gradient RMS ``‖g_l‖/sqrt(n_l)``;
   * weights: ``log(Ŵ_l)`` with ``W_l`` the EMA of the weight RMS ``‖θ_l‖/sqrt(n_l)`` (at the
     parameters the gradient was taken at). Both floored at 1e-12 before the log.
3. One shared MLP (ReLU hidden layers) maps the ``[L, D + 12]`` matrix of rows
   ``[e_l, status_l]`` (``e_l`` = row ``l`` of the trainable embedding table) to outputs
   ``o_{l,k}`` — a single matmul chain for all layers at once — and the coefficients are

   * ``coefficient_transform="exp"`` (default): ``c_{l,k} = c⁰_k · exp(10·tanh(o_{l,k}/10))``,
   * ``coefficient_transform="linear"``:      ``c_{l,k} = c⁰_k + o_{l,k}``,

   where ``c⁰`` are the ``initial_coefficients``; both give ``c = c⁰`` at ``o = 0``.
4. The update, elementwise: ``Δθ_l = Σ_k c_{l,k}·u_{l,k} = −Σ_k c_{l,k}·η_k·d_{l,k}``.

Evaluation (the ``impl`` field, values of :data:`.fused.IMPLS`): the per-layer part (statistics,
MLP, coefficients) runs on ``[L, ·]`` arrays and is the same in every form; the per-parameter part
is the combination of step 4. ``"fused"`` (what ``"auto"`` resolves to on every backend,
:data:`.fused.AUTO_IMPL`) writes it as a sum of the directions scaled by the scalars
``−c_{l,k}·η_k``, which XLA fuses with the accumulator updates into one elementwise loop (no
per-parameter ``[*shape, K]`` array). ``"reference"`` stacks the directions into a ``[*shape, K]``
tensor and contracts it with the ``[K]`` scales (a ``Precision.HIGHEST`` matmul); it is kept as the
ground truth the tests compare the fused form with. ``"single_pass"`` is the same as ``"fused"``
here: the per-parameter part has no normalised channels, hence no stale norms to keep. L3RS does
reduce two full tensors per layer (the gradient and weight RMS of its status features) before the
elementwise pass; making them one step stale would change the status features (their EMAs would
lag one step), and would save at most one of the ~12 full-size reads and writes of a step (the
weights are read for their RMS only), so it is not done.

At initialisation the last MLP layer is scaled by 1e-3, so ``o ≈ 0`` and with the default
``c⁰ = (0.01, 0.01, 1, 0.01)`` for ``(sgd, momentum, adam, lion)`` a fresh L3RS is Adam(1e-3) plus a
1% admixture of the other directions at their default learning rates: it trains a network out of
the box, and meta-training starts from a good hand-designed optimizer.

Layers and embedding rows: "layer" means one leaf of the params pytree, matched to embedding rows in
``jax.tree.leaves(params)`` order. The optimizer is specialised to one model: ``num_layers`` must
equal that number of leaves and ``init`` raises ``ValueError`` otherwise.

Choices where the paper is unknown (reviewers name SGD and Adam and the feature list; the rest is
ours):

* Base directions: SGD and Adam (named by reviewers) plus heavy-ball momentum and Lion ("a set of
  base optimizers"), selectable by name. Their hyperparameters other than the learning rate (decays,
  ε) are fixed constructor arguments, not meta-learned: reviewer 2 only says the base learning rates
  are tuned, and fixed decays keep the accumulators exactly those of the hand-designed optimizers.
* Default base learning rates (:data:`DEFAULT_LEARNING_RATES`): Adam 1e-3 (Kingma & Ba), Lion 1e-4
  (Chen et al. recommend 3–10× below AdamW's), SGD and heavy-ball momentum 1e-2 (the usual
  fine-tuning rate; with μ = 0.9 momentum's effective step is 10× larger). They are stored as
  ``log η`` so that meta-gradient and ES steps change them by relative amounts.
* Coefficient output: the reviews do not say. ``"exp"`` (default) makes each coefficient a positive
  multiplier of a base learning rate — the "learned learning-rate scheduler" the reviewers describe —
  so no meta-parameter setting can flip a direction into ascent, and, like the log-space base
  learning rates, one ES noise scale changes every effective step size by the same relative amount,
  whatever its magnitude (1e-2 for SGD, 1e-4 for Lion). The ``10·tanh(o/10)`` soft cap (identity
  for ``|o| ≲ 3``) keeps ``exp`` finite for wild perturbations. ``"linear"`` allows negative and
  exactly-zero mixtures and is there to ablate the choice. Under ``"exp"`` the output bias and the
  base log learning rate of a direction are redundant (both add in log space); we keep both so
  that ``η_k`` stays interpretable and the two transforms share one meta-parameter layout.
* Coefficients multiply the base optimizers' *steps* (``−η_k·d_k``), so ``c = 1`` means "base
  optimizer k at its learned base learning rate".
* Training-status features: we read "per layer where applicable" as per-layer gradient and weight
  norms and a global loss and progress. Norms enter as RMS (norm / sqrt(size)), so the one shared
  MLP sees numbers comparable across layers (``log‖x‖ = log RMS + ½·log n``; the difference is a
  per-layer constant the embedding could absorb anyway), and as absolute logs rather than ratios to
  their first value (zero-initialised biases or heads would make ratios infinite). The loss is taken
  relative to the first loss because its scale is task-specific; absolute values make the feature
  finite for negative losses too. One EMA decay (0.9, half-life ≈ 6.6 steps) for all three: it
  smooths minibatch noise while following a ~1000-step fine-tuning run.
* Progress uses the pre-update step ``t`` (0 at the first update), so ``t/T ∈ [0, 1)`` during the
  run; beyond ``T`` the tanh features saturate, they do not wrap.
* MLP size 32×2 (default ``hidden_sizes``): it runs once per step on ``L`` rows (≈ 100 for a
  ResNet-34), so its cost is negligible next to the elementwise work, and with ``D = 8`` it has ~1.9k
  weights: the whole optimizer stays 2–3 orders of magnitude smaller than VeLO (as the paper
  reports) and small enough for NES, whose variance grows with the number of meta-parameters.
* Initialisation: hidden weights ``TruncNormal(−2, 2)/sqrt(fan_in)`` (as small_fc_lopt), last layer
  additionally ×1e-3 (small but non-zero, so meta-gradients reach every weight at once), biases 0,
  embeddings ``N(0, 1)``.
* Non-finite losses or gradients are not filtered (they propagate, as in the hand-designed
  optimizers); wrap the optimizer with a safeguard (e.g. :func:`~.guards.guard_with_loss`).
* Accumulators are kept in at least float32 and the update is cast back to the parameter dtype.
  Square roots use a zero-safe form, so meta-gradients stay finite when a gradient entry or a whole
  tensor is exactly zero (the value is unchanged).

Example (``state.coefficients`` holds the per-layer coefficients of the last step):
  >>> params = {"b": jnp.zeros(3), "w": jnp.ones((2, 3))}
  >>> lopt = L3RS(num_layers=2)
  >>> opt = lopt.make(lopt.init_meta_params(jax.random.key(0)), num_steps=100)
  >>> updates, state = opt.update(params, opt.init(params), params, loss=jnp.float32(1.0))
  >>> state.coefficients.shape
  (2, 4)
"""

import dataclasses
import functools
import itertools
from numbers import Real
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from components.optimizers import features as F
from components.optimizers import fused
from components.optimizers.l3rs_parts import (
    BASE_DIRECTIONS,
    DEFAULT_LEARNING_RATES,
    DIRECTIONS,
    check_decay,
    check_directions,
    check_hidden_sizes,
    float_tuple,
    l3rs_status_features,
    layer_coefficients,
    layer_status,
    loss_arg,
)
from components.optimizers.per_parameter import check_int, check_num_steps, dataclass_config

__all__ = ["COEFFICIENT_TRANSFORMS", "L3RS", "L3RSState"]

COEFFICIENT_TRANSFORMS: tuple[str, ...] = ("exp", "linear")
"""Allowed values of :attr:`L3RS.coefficient_transform`."""

_OUTPUT_INIT_SCALE = 1e-3  # extra scale of the last MLP layer at initialisation
_HIGHEST = jax.lax.Precision.HIGHEST
_DEFAULT_PRIMARY = "adam"  # the direction with initial coefficient 1 (others: _DEFAULT_SECONDARY)
_DEFAULT_SECONDARY = 0.01


# --------------------------------------------------------------------------- optimizer


class L3RSState(NamedTuple):
    """State of an ``l3rs`` transformation.

    Attributes:
      iteration: int32 step counter ``t`` (0 before the first update).
      first_loss: float32 loss at the first update (0 before it).
      loss_ema: float32 EMA of the loss (not bias-corrected).
      grad_rms_ema: float32 ``[L]`` EMAs of the per-layer gradient RMS (not bias-corrected).
      weight_rms_ema: float32 ``[L]`` EMAs of the per-layer weight RMS (not bias-corrected).
      coefficients: float32 ``[L, K]`` coefficients ``c_{l,k}`` of the last update (``c⁰`` before
        the first); kept for logging the learned per-layer schedules.
      buffers: ``{direction name: tuple of params-shaped trees}`` — the accumulators of the base
        directions that have any (``sgd`` has none).
    """

    iteration: jax.Array
    first_loss: jax.Array
    loss_ema: jax.Array
    grad_rms_ema: jax.Array
    weight_rms_ema: jax.Array
    coefficients: jax.Array
    buffers: dict


@dataclasses.dataclass(frozen=True)
class L3RS:
    """Learned per-layer linear combination of base-optimizer updates (L3RS).

    See the module docstring for the update's maths and the choices made.

    Attributes:
      num_layers: number of parameter tensors (pytree leaves) of the model it is specialised to.
      base_directions: names from :data:`BASE_DIRECTIONS`, in output order.
      embedding_dim: width ``D`` of the per-layer embeddings ``e_l`` (8).
      hidden_sizes: widths of the shared MLP's ReLU hidden layers ((32, 32)).
      coefficient_transform: ``"exp"`` (default) or ``"linear"``, see the module docstring.
      initial_learning_rates: initial base learning rates ``η_k``; ``None`` takes
        :data:`DEFAULT_LEARNING_RATES`.
      initial_coefficients: coefficients ``c⁰_k`` at MLP output 0; ``None`` gives 1 to ``adam``
        (or to the first direction when ``adam`` is not used) and 0.01 to the others.
      ema_decay: decay of the loss / gradient-norm / weight-norm EMAs (0.9).
      momentum_decay: ``μ`` of the heavy-ball direction (0.9).
      adam_b1: ``β1`` of the Adam direction (0.9).
      adam_b2: ``β2`` of the Adam direction (0.999).
      adam_eps: ``ε`` of the Adam direction (1e-8).
      lion_b1: interpolation ``β1`` of the Lion direction (0.9).
      lion_b2: momentum decay ``β2`` of the Lion direction (0.99).
      impl: form of the per-parameter combination, one of :data:`.fused.IMPLS`: ``"auto"``
        (default, :func:`.fused.resolve_impl`), ``"fused"`` (elementwise sum), ``"reference"``
        (stacked ``[*shape, K]`` directions contracted with the coefficients) or ``"single_pass"``
        (the same as ``"fused"``: no per-tensor norms to make stale). All are exact; see the module
        docstring.
    """

    num_layers: int
    base_directions: tuple[str, ...] = BASE_DIRECTIONS
    embedding_dim: int = 8
    hidden_sizes: tuple[int, ...] = (32, 32)
    coefficient_transform: str = "exp"
    initial_learning_rates: tuple[float, ...] | None = None
    initial_coefficients: tuple[float, ...] | None = None
    ema_decay: float = 0.9
    momentum_decay: float = 0.9
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    lion_b1: float = 0.9
    lion_b2: float = 0.99
    impl: str = "auto"

    name: ClassVar[str] = "l3rs"

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        set_("num_layers", check_int("L3RS", "num_layers", self.num_layers, 1))
        set_("embedding_dim", check_int("L3RS", "embedding_dim", self.embedding_dim, 1))
        set_("hidden_sizes", check_hidden_sizes(self.hidden_sizes))
        names = check_directions(self.base_directions)
        set_("base_directions", names)
        if self.coefficient_transform not in COEFFICIENT_TRANSFORMS:
            raise ValueError(
                f"L3RS.coefficient_transform must be one of {COEFFICIENT_TRANSFORMS}, "
                f"got {self.coefficient_transform!r}."
            )
        for field in ("ema_decay", "momentum_decay", "adam_b1", "adam_b2", "lion_b1", "lion_b2"):
            set_(field, check_decay(field, getattr(self, field)))
        if isinstance(self.adam_eps, bool) or not isinstance(self.adam_eps, Real) or not self.adam_eps >= 0:
            raise ValueError(f"L3RS.adam_eps must be a number >= 0, got {self.adam_eps!r}.")
        set_("adam_eps", float(self.adam_eps))
        fused.check_impl("L3RS", self.impl)

        k = len(names)
        if self.initial_learning_rates is None:
            lrs = tuple(DEFAULT_LEARNING_RATES[n] for n in names)
        else:
            lrs = float_tuple("initial_learning_rates", self.initial_learning_rates, k, names)
        if not all(lr > 0 for lr in lrs):
            raise ValueError(f"L3RS.initial_learning_rates must all be > 0 (they are stored as logs), got {lrs}.")
        set_("initial_learning_rates", lrs)
        if self.initial_coefficients is None:
            primary = _DEFAULT_PRIMARY if _DEFAULT_PRIMARY in names else names[0]
            coefs = tuple(1.0 if n == primary else _DEFAULT_SECONDARY for n in names)
        else:
            coefs = float_tuple("initial_coefficients", self.initial_coefficients, k, names)
        if self.coefficient_transform == "exp" and not all(c > 0 for c in coefs):
            raise ValueError(
                f"L3RS.initial_coefficients must all be > 0 with coefficient_transform='exp' (it can only "
                f"rescale them), got {coefs}. Use small positive values, or coefficient_transform='linear'."
            )
        set_("initial_coefficients", coefs)

    # ------------------------------------------------------------------ sizes

    @functools.cached_property
    def num_status_features(self) -> int:
        """Number of training-status features per layer (12), counted by tracing the feature code."""
        scalar = jax.ShapeDtypeStruct((), jnp.float32)
        per_layer = jax.ShapeDtypeStruct((2,), jnp.float32)
        shape = jax.eval_shape(l3rs_status_features, scalar, scalar, scalar, per_layer, per_layer).shape
        return int(shape[1])

    @property
    def num_inputs(self) -> int:
        """MLP input width: embedding plus status features (20 by default)."""
        return self.embedding_dim + self.num_status_features

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """MLP widths from input to output, e.g. ``(20, 32, 32, 4)``."""
        return (self.num_inputs, *self.hidden_sizes, len(self.base_directions))

    # ------------------------------------------------------------------ contract

    def config(self) -> dict:
        """JSON-serialisable hyperparameters; ``L3RS(**lopt.config())`` rebuilds it."""
        return dataclass_config(self)

    def frozen_keys(self) -> tuple[str, ...]:
        """Every meta-parameter is trained."""
        return ()

    def init_meta_params(self, key: jax.Array) -> dict:
        """Initial meta-parameters θ.

        Returns:
          ``{"embeddings": [L, D], "mlp": {"w0", "b0", …}, "log_learning_rates": [K]}``; ``w{i}`` has
          shape ``[fan_in, fan_out]`` and is drawn as ``TruncNormal(−2, 2)/sqrt(fan_in)`` (the last
          one further ×1e-3), biases are 0, embeddings ``N(0, 1)`` and the log learning rates are
          ``log(initial_learning_rates)``.
        """
        sizes = self.layer_sizes
        key_embed, key_mlp = jax.random.split(key)
        keys = jax.random.split(key_mlp, len(sizes) - 1)
        mlp = {}
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            w = jax.random.truncated_normal(keys[i], -2.0, 2.0, (fan_in, fan_out), jnp.float32)
            scale = 1.0 / np.sqrt(fan_in) * (_OUTPUT_INIT_SCALE if i == len(sizes) - 2 else 1.0)
            mlp[f"w{i}"] = w * np.float32(scale)
            mlp[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
        return {
            "embeddings": jax.random.normal(key_embed, (self.num_layers, self.embedding_dim), jnp.float32),
            "mlp": mlp,
            "log_learning_rates": jnp.log(jnp.asarray(self.initial_learning_rates, jnp.float32)),
        }

    def _check_num_leaves(self, leaves: list, where: str) -> None:
        if len(leaves) != self.num_layers:
            shapes = [tuple(jnp.shape(x)) for x in leaves]
            raise ValueError(
                f"L3RS.{where}: this optimizer was built with num_layers={self.num_layers} (one embedding row per "
                f"parameter tensor) but the params pytree has {len(leaves)} leaves (jax.tree.leaves order, shapes "
                f"{shapes}). L3RS is specialised to one model: build it with L3RS(num_layers={len(leaves)}, ...) "
                "and meta-train fresh meta-params (init_meta_params); embedding rows cannot be reused across models."
            )

    def _check_meta_params(self, meta_params: Any) -> None:
        missing = {"embeddings", "mlp", "log_learning_rates"} - set(meta_params)
        if missing:
            raise ValueError(
                f"L3RS.make: meta_params lacks {sorted(missing)}; build them with lopt.init_meta_params(key) "
                "(or load a checkpoint)."
            )
        want = (self.num_layers, self.embedding_dim)
        got = tuple(jnp.shape(meta_params["embeddings"]))
        if got != want:
            raise ValueError(
                f"L3RS.make: meta_params['embeddings'] has shape {got}, expected {want} (num_layers, embedding_dim). "
                "Use meta-params made for this model by the same L3RS (under jax.vmap, call make inside the vmap)."
            )
        got = tuple(jnp.shape(meta_params["log_learning_rates"]))
        if got != (len(self.base_directions),):
            raise ValueError(
                f"L3RS.make: meta_params['log_learning_rates'] has shape {got}, expected "
                f"({len(self.base_directions)},), one per base direction {self.base_directions}."
            )

    def make(self, meta_params: Any, *, num_steps: int | jax.Array) -> optax.GradientTransformationExtraArgs:
        """Builds the inner optimizer for meta-parameters θ (which may be traced).

        Args:
          meta_params: θ as returned by :meth:`init_meta_params` (possibly perturbed, or batched
            under ``jax.vmap`` with ``make`` called inside the vmap).
          num_steps: length ``T`` of the inner run (Python int or traced int32 scalar), used by
            the progress features ``t/T``.

        Returns:
          An ``optax.GradientTransformationExtraArgs``. ``update`` needs ``params`` and the extra
          arg ``loss=`` (scalar training loss at ``params``) and ignores any other extra args.

        Raises:
          ValueError: for a non-positive Python ``num_steps`` or meta-params of the wrong layout.
        """
        check_num_steps("L3RS", num_steps)
        self._check_meta_params(meta_params)
        c0 = jnp.asarray(self.initial_coefficients, jnp.float32)
        learning_rates = jnp.exp(meta_params["log_learning_rates"])
        horizon = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
        stacked = fused.resolve_impl(self.impl) == "reference"  # "single_pass" is "fused" here

        def update_fn(updates, state, params=None, **extra_args):
            loss = loss_arg(params, extra_args)
            grads, treedef = jax.tree.flatten(updates)
            self._check_num_leaves(grads, "update")
            param_leaves = treedef.flatten_up_to(params)
            stats, status = layer_status(self.ema_decay, state, loss, grads, param_leaves, horizon)
            coefficients = layer_coefficients(
                meta_params, status, c0, self.coefficient_transform, len(self.layer_sizes) - 1
            )
            scales = -coefficients * learning_rates  # step of base optimizer k is −η_k·d_k
            new_updates, buffers = self._combine(scales, state.buffers, treedef, param_leaves, grads, stats[0], stacked)
            new_state = L3RSState(*stats, coefficients=coefficients.astype(jnp.float32), buffers=buffers)
            return treedef.unflatten(new_updates), new_state

        return optax.GradientTransformationExtraArgs(functools.partial(self._init_state, c0), update_fn)

    def _init_state(self, c0: jax.Array, params: Any) -> L3RSState:
        self._check_num_leaves(jax.tree.leaves(params), "init")
        zeros = lambda p: jnp.zeros(jnp.shape(p), F.accumulator_dtype(jnp.result_type(p)))  # noqa: E731
        buffers = {
            n: tuple(jax.tree.map(zeros, params) for _ in range(DIRECTIONS[n].num_buffers))
            for n in self.base_directions
            if DIRECTIONS[n].num_buffers
        }
        return L3RSState(
            iteration=jnp.zeros([], jnp.int32),
            first_loss=jnp.zeros([], jnp.float32),
            loss_ema=jnp.zeros([], jnp.float32),
            grad_rms_ema=jnp.zeros([self.num_layers], jnp.float32),
            weight_rms_ema=jnp.zeros([self.num_layers], jnp.float32),
            coefficients=jnp.broadcast_to(c0, (self.num_layers, len(self.base_directions))),
            buffers=buffers,
        )

    def _combine(self, scales, buffers, treedef, param_leaves, grads, count, stacked) -> tuple[list, dict]:
        """Every layer's update ``Σ_k scale_{l,k}·d_k`` and the base directions' new accumulators."""
        buffer_leaves = {n: [treedef.flatten_up_to(tree) for tree in trees] for n, trees in buffers.items()}
        new_updates = []
        new_buffer_leaves = {n: [[] for _ in trees] for n, trees in buffers.items()}
        for layer, (p, g) in enumerate(zip(param_leaves, grads, strict=True)):
            g32 = g.astype(F.accumulator_dtype(g.dtype))
            layer_scales = scales[layer].astype(g32.dtype)  # [K]
            steps = []
            for n in self.base_directions:
                old = tuple(trees[layer] for trees in buffer_leaves.get(n, ()))
                direction, new = DIRECTIONS[n].step(self, g32, old, count)
                for b, x in enumerate(new):
                    new_buffer_leaves[n][b].append(x.astype(old[b].dtype))
                steps.append(jnp.broadcast_to(direction, g32.shape).astype(g32.dtype))
            if stacked:  # reference: [*shape, K] directions contracted with the [K] scales
                total = jnp.matmul(jnp.stack(steps, axis=-1), layer_scales, precision=_HIGHEST)
            else:  # fused: a sum of scalar multiples, one elementwise loop with the accumulators
                total = layer_scales[0] * steps[0]
                for k in range(1, len(steps)):
                    total = total + layer_scales[k] * steps[k]
            new_updates.append(total.astype(jnp.result_type(p)))
        return new_updates, {n: tuple(treedef.unflatten(x) for x in trees) for n, trees in new_buffer_leaves.items()}
