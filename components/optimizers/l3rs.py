"""``l3rs``: a learned per-layer rate times a learned convex mix of normalised base directions (L3RS).

Re-implementation of the update rule of Kristiansen, Sandler, Zhmoginov, Miller, Goyal, Lee and
Vladymyrov, "Narrowing the Focus: Learned Optimizers for Pretrained Models" (arXiv 2408.09310, 2024)
as an optax transformation; ``research/algorithms.md`` §5 and its 2026-12 addition ("L3RS as
published"). Sources: the abstract and introduction of arXiv 2408.09310 (v1 and v3; the only parts of
the paper text that could be retrieved here), the ICLR-2025 OpenReview record (its summary names Adam
and SGD as examples of the base optimizers) and the reviews summarised in §5, and the third-party
summary of the paper's rule in the 2026-12 addition: ``Δθ_l = λ_l Σ_p μ_{l,p} d̂_{l,p}`` with
normalised directions ``d̂``, mixing weights ``μ_{l,·}`` normalised across the base optimizers, a
separate per-layer rate ``λ_l`` and EMAs of the inputs at several timescales. Every detail those
sources leave open is listed under "Choices where the text is silent", with the reading chosen and
why.

The maths, for parameter tensor (= pytree leaf, "layer") ``l`` of ``L`` with gradient ``g_l`` at step
``t`` (counted from 0) of a run of ``T`` steps (``num_steps``):

1. Base directions ``d_{l,p}`` (elementwise, accumulators updated with ``g_l`` first), for the
   configured subset of :data:`~.l3rs_parts.BASE_DIRECTIONS`; each is the direction its optimizer
   would step *against*:

   * ``sgd``:      ``d = g``
   * ``momentum``: heavy ball ``m ← β·m + g``, ``d = m`` (``optax.trace``, PyTorch's SGD momentum)
   * ``adam``:     ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²``,
     ``d = m̂ / (sqrt(v̂) + ε)`` with ``m̂ = m/(1−β1^{t+1})``, ``v̂ = v/(1−β2^{t+1})``
   * ``lion``:     ``d = sign(β1·m + (1−β1)·g)``, then ``m ← β2·m + (1−β2)·g`` (Chen et al. 2023)

2. Normalised directions: ``d̂_{l,p} = d_{l,p} / (RMS(d_{l,p}) + ε_n)`` with
   ``RMS(x) = ‖x‖₂/sqrt(n_l)`` over the whole tensor and ``ε_n = 1e-12`` (:data:`~.l3rs_parts.NORM_EPS`).
   Scaling a direction by ``c > 0`` leaves ``d̂`` unchanged (up to ``ε_n``).
3. Training-status features, one row per layer, from EMAs at the ``M`` decays ``β_i``
   (``ema_decays``, default ``(0.9, 0.99, 0.999)``), bias-corrected (``x̂ = x/(1−β_i^{t+1})``):

   * progress: ``tanh(10·(t/T − s))`` for the 9 shifts ``s`` of
     :data:`.features.FRACTION_SHIFTS` (:func:`.features.fractional_tanh_embedding`, VeLO / Celo's
     "fractional tanh embedding"), shared by all layers;
   * loss: ``log(|L̂_{t,i}| / |ℓ_0|)`` per timescale ``i``, the EMA of the loss relative to the first
     loss (both floored at 1e-12), shared by all layers;
   * gradient: ``log Ĝ_{l,i}`` with ``G_{l,i}`` the EMA of the gradient RMS ``‖g_l‖/sqrt(n_l)``;
   * weights: ``log Ŵ_{l,i}`` with ``W_{l,i}`` the EMA of the weight RMS (at the parameters the
     gradient was taken at). Both floored at 1e-12 before the log.

   That is ``9 + 3M`` features per layer (18 by default).
4. One shared MLP (ReLU hidden layers) maps the ``[L, D + 9 + 3M]`` matrix of rows
   ``[e_l, status_l]`` (``e_l`` = row ``l`` of the trainable embedding table) to ``K + 1`` outputs
   per layer, ``K`` mixing logits ``z_{l,p}`` and one rate output ``o_l`` (one matmul chain for all
   layers at once):

   * mixing weights ``μ_{l,·} = softmax(z_{l,·} + log μ⁰)`` — positive, ``Σ_p μ_{l,p} = 1``, and
     ``μ = μ⁰`` (``initial_mixing``) at ``z = 0``;
   * rate ``λ_l = λ₀ · exp(10·tanh(o_l/10))`` with ``λ₀ = exp(log_rate)``, a meta-learned scalar (shape ``[1]``)
     initialised at ``initial_rate``.
5. The update: ``Δθ_l = −λ_l · Σ_p μ_{l,p} · d̂_{l,p}``.

Because ``Σ_p μ_{l,p} = 1`` and every ``d̂`` has unit RMS, the step of layer ``l`` has RMS at most
``λ_l`` (equal when the directions agree): ``λ_l`` is the layer's learned learning rate, ``μ_{l,·}``
only chooses the direction.

Evaluation (the ``impl`` field, values of :data:`.fused.IMPLS`): the per-layer part (statistics,
MLP, μ and λ) runs on ``[L, ·]`` arrays and is the same in every form; the per-parameter part is the
combination of step 5. Both forms first reduce each direction to its RMS (step 2), then:
``"fused"`` (what ``"auto"`` resolves to on every backend, :data:`.fused.AUTO_IMPL`) writes the
combination as a sum of the raw directions scaled by the scalars ``−λ_l·μ_{l,p}/(RMS(d_{l,p}) + ε_n)``,
which XLA fuses with the accumulator updates into one elementwise loop (no per-parameter
``[*shape, K]`` array); ``"reference"`` divides each direction by its normaliser, stacks the ``d̂``
into a ``[*shape, K]`` tensor and contracts it with ``−λ_l·μ_{l,·}`` (a ``Precision.HIGHEST``
matmul); it is the ground truth the tests compare the fused form with. ``"single_pass"`` is the same
as ``"fused"`` here (exact): a one-step-stale variant would have to make the status features *and*
the direction norms stale (both are reductions the elementwise pass waits for), which changes the
rule the paper describes; it is not implemented.

At initialisation the last MLP layer is scaled by 1e-3, so ``z ≈ 0``, ``o ≈ 0``: a fresh L3RS steps
``−λ₀·Σ_p μ⁰_p d̂_p`` with the default ``λ₀ = 1e-3`` and ``μ⁰`` = 0.97 on ``adam`` and 0.01 on each
other direction — normalised Adam at rate 1e-3 with a 3% admixture: it trains a network out of the
box, and meta-training starts from a good hand-designed optimizer.

Layers and embedding rows: "layer" means one leaf of the params pytree, matched to embedding rows in
``jax.tree.leaves(params)`` order. The optimizer is specialised to one model: ``num_layers`` must
equal that number of leaves and ``init`` raises ``ValueError`` otherwise.

Choices where the text is silent (the reading chosen, and why):

* Base optimizers: SGD and Adam (named by the reviewers) plus heavy-ball momentum and Lion ("a set
  of base optimizers"), selectable by name; all four by default. Their hyperparameters (decays, ε)
  are fixed constructor arguments, not meta-learned: with normalised directions a base learning
  rate has no effect (it cancels in ``d̂``), so the only rates are ``λ``, and fixed decays keep the
  accumulators exactly those of the hand-designed optimizers.
* How directions are normalised: by their RMS over the whole tensor, per layer and per base
  optimizer. A unit-L2-norm reading (``d/‖d‖``) differs from this only by the per-layer constant
  ``sqrt(n_l)``, which ``λ_l`` (an output of a network that sees a per-layer embedding) absorbs, so
  both readings span the same rules; the RMS form makes ``λ`` a per-entry step size comparable
  across layers and with a hand-designed learning rate, so one ``initial_rate`` suits every layer.
  ``ε_n = 1e-12`` (added to the RMS, not under the root) keeps an all-zero direction (a layer with
  zero gradient, Lion's ``sign(0)``) at ``d̂ = 0`` with finite meta-gradients, while leaving the
  scale invariance exact for any direction of RMS ≫ 1e-12.
* How ``μ`` is normalised: a softmax across the base optimizers (positive weights summing to 1: a
  convex combination, so no meta-parameter setting turns a direction into ascent and the step size
  is left to ``λ``). The initial weights ``μ⁰`` enter as a fixed logit offset ``log μ⁰``.
* How ``λ`` is parameterised: ``exp`` of a meta-learned global log rate plus the MLP's per-layer
  output, soft-capped as ``10·tanh(o/10)`` (identity for ``|o| ≲ 3``, keeps ``exp`` finite under
  wild ES perturbations). Positive, and one ES noise scale changes it by the same relative amount
  at any magnitude. The global ``log_rate`` is the "base learning rate tuned during meta-learning"
  of the reviews (the MLP's output bias could learn it too; a separate scalar keeps it readable).
* Timescales: decays ``(0.9, 0.99, 0.999)``, i.e. horizons of 10, 100 and 1000 steps (``γ^i`` with
  ``γ = 10``), spanning one step's noise to the paper's ~1000-step fine-tuning runs.
* Feature scales: norms as RMS and as absolute logs (a log ratio to the first value would be
  infinite for zero-initialised biases or heads), the loss relative to the first loss (its scale is
  task-specific; absolute values keep it finite for negative losses); per-layer gradient and weight
  norms, a global loss and progress ("per layer where applicable").
* Progress uses the pre-update step ``t`` (0 at the first update), so ``t/T ∈ [0, 1)`` during the
  run; beyond ``T`` the tanh features saturate, they do not wrap.
* MLP size 32×2 (default ``hidden_sizes``), embedding width ``D = 8``: it runs once per step on
  ``L`` rows, so its cost is negligible next to the elementwise work, and with ~2.1k weights the
  optimizer stays 2–3 orders of magnitude smaller than VeLO (as the paper reports) and small enough
  for NES, whose variance grows with the number of meta-parameters.
* Initialisation: hidden weights ``TruncNormal(−2, 2)/sqrt(fan_in)`` (as small_fc_lopt), last layer
  additionally ×1e-3 (small but non-zero, so meta-gradients reach every weight at once), biases 0,
  embeddings ``N(0, 1)``, ``log_rate = log(initial_rate)``.
* Non-finite losses or gradients are not filtered (they propagate, as in the hand-designed
  optimizers); wrap the optimizer with a safeguard (e.g. :func:`~.guards.guard_with_loss`).
* Accumulators are kept in at least float32 and the update is cast back to the parameter dtype.
  Square roots use a zero-safe form, so meta-gradients stay finite when a gradient entry or a whole
  tensor is exactly zero (the value is unchanged).

The rule this replaces (raw, un-normalised directions with independent ``exp`` coefficients per
direction, per-direction learned base rates and one EMA at β = 0.9) was written before the paper's
rule was known; nothing committed was trained with it, so it is not kept.

Example (``state.mixing`` / ``state.rates`` hold the per-layer ``μ`` and ``λ`` of the last step):
  >>> params = {"b": jnp.zeros(3), "w": jnp.ones((2, 3))}
  >>> lopt = L3RS(num_layers=2)
  >>> opt = lopt.make(lopt.init_meta_params(jax.random.key(0)), num_steps=100)
  >>> updates, state = opt.update(params, opt.init(params), params, loss=jnp.float32(1.0))
  >>> state.mixing.shape, state.rates.shape
  ((2, 4), (2,))
"""

import dataclasses
import functools
import itertools
import math
from numbers import Real
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from components.optimizers import features as F
from components.optimizers import fused
from components.optimizers.l3rs_parts import (
    BASE_DIRECTIONS,
    DEFAULT_EMA_DECAYS,
    DIRECTIONS,
    L3RSState,
    check_decay,
    check_directions,
    check_ema_decays,
    check_hidden_sizes,
    check_mixing,
    direction_rms,
    l3rs_status_features,
    layer_status,
    loss_arg,
    mixing_and_rates,
)
from components.optimizers.per_parameter import check_int, check_num_steps, dataclass_config

__all__ = ["L3RS", "L3RSState"]

_OUTPUT_INIT_SCALE = 1e-3  # extra scale of the last MLP layer at initialisation
_HIGHEST = jax.lax.Precision.HIGHEST
_DEFAULT_PRIMARY = "adam"  # the direction with the largest initial weight
_DEFAULT_SECONDARY = 0.01  # initial weight of every other direction


# --------------------------------------------------------------------------- optimizer


@dataclasses.dataclass(frozen=True)
class L3RS:
    """Learned per-layer rate times a learned convex mix of normalised base directions (L3RS).

    See the module docstring for the update's maths and the choices made.

    Attributes:
      num_layers: number of parameter tensors (pytree leaves) of the model it is specialised to.
      base_directions: names from :data:`~.l3rs_parts.BASE_DIRECTIONS`, in output order.
      embedding_dim: width ``D`` of the per-layer embeddings ``e_l`` (8).
      hidden_sizes: widths of the shared MLP's ReLU hidden layers ((32, 32)).
      initial_rate: ``λ₀`` at initialisation (1e-3), stored as ``log_rate``.
      initial_mixing: mixing weights ``μ⁰`` at MLP output 0 (positive, summing to 1); ``None`` gives
        0.01 to every direction but ``adam`` (or the first direction when ``adam`` is not used),
        which gets the rest.
      ema_decays: decays ``β_i`` of the loss / gradient-norm / weight-norm EMAs ((0.9, 0.99, 0.999)).
      momentum_decay: ``β`` of the heavy-ball direction (0.9).
      adam_b1: ``β1`` of the Adam direction (0.9).
      adam_b2: ``β2`` of the Adam direction (0.999).
      adam_eps: ``ε`` of the Adam direction (1e-8).
      lion_b1: interpolation ``β1`` of the Lion direction (0.9).
      lion_b2: momentum decay ``β2`` of the Lion direction (0.99).
      impl: form of the per-parameter combination, one of :data:`.fused.IMPLS`: ``"auto"``
        (default, :func:`.fused.resolve_impl`), ``"fused"`` (elementwise sum of raw directions with
        folded scales), ``"reference"`` (stacked ``[*shape, K]`` normalised directions contracted
        with ``λμ``) or ``"single_pass"`` (the same as ``"fused"``). All are exact; see the module
        docstring.
    """

    num_layers: int
    base_directions: tuple[str, ...] = BASE_DIRECTIONS
    embedding_dim: int = 8
    hidden_sizes: tuple[int, ...] = (32, 32)
    initial_rate: float = 1e-3
    initial_mixing: tuple[float, ...] | None = None
    ema_decays: tuple[float, ...] = DEFAULT_EMA_DECAYS
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
        set_("ema_decays", check_ema_decays(self.ema_decays))
        for field in ("momentum_decay", "adam_b1", "adam_b2", "lion_b1", "lion_b2"):
            set_(field, check_decay(field, getattr(self, field)))
        if isinstance(self.adam_eps, bool) or not isinstance(self.adam_eps, Real) or not self.adam_eps >= 0:
            raise ValueError(f"L3RS.adam_eps must be a number >= 0, got {self.adam_eps!r}.")
        set_("adam_eps", float(self.adam_eps))
        rate = self.initial_rate
        if isinstance(rate, bool) or not isinstance(rate, Real) or not (math.isfinite(rate) and rate > 0):
            raise ValueError(
                f"L3RS.initial_rate must be a finite number > 0 (it is stored as a log), got {rate!r}; "
                "e.g. 1e-3, a typical fine-tuning learning rate."
            )
        set_("initial_rate", float(rate))
        fused.check_impl("L3RS", self.impl)
        if self.initial_mixing is None:
            primary = _DEFAULT_PRIMARY if _DEFAULT_PRIMARY in names else names[0]
            rest = 1.0 - _DEFAULT_SECONDARY * (len(names) - 1)
            mixing = tuple(rest if n == primary else _DEFAULT_SECONDARY for n in names)
        else:
            mixing = check_mixing(self.initial_mixing, names)
        set_("initial_mixing", mixing)

    # ------------------------------------------------------------------ sizes

    @functools.cached_property
    def num_status_features(self) -> int:
        """Number of training-status features per layer (18 by default), counted by tracing the feature code."""
        scalar = jax.ShapeDtypeStruct((), jnp.float32)
        per_scale = jax.ShapeDtypeStruct((len(self.ema_decays),), jnp.float32)
        per_layer = jax.ShapeDtypeStruct((2, len(self.ema_decays)), jnp.float32)
        shape = jax.eval_shape(l3rs_status_features, scalar, scalar, per_scale, scalar, per_layer, per_layer).shape
        return int(shape[1])

    @property
    def num_inputs(self) -> int:
        """MLP input width: embedding plus status features (26 by default)."""
        return self.embedding_dim + self.num_status_features

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """MLP widths from input to output: ``K`` mixing logits and one rate output, e.g. ``(26, 32, 32, 5)``."""
        return (self.num_inputs, *self.hidden_sizes, len(self.base_directions) + 1)

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
          ``{"embeddings": [L, D], "mlp": {"w0", "b0", …}, "log_rate": [1]}``; ``w{i}`` has shape
          ``[fan_in, fan_out]`` and is drawn as ``TruncNormal(−2, 2)/sqrt(fan_in)`` (the last one
          further ×1e-3), biases are 0, embeddings ``N(0, 1)`` and ``log_rate = log(initial_rate)``.
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
            "log_rate": jnp.log(jnp.full((1,), self.initial_rate, jnp.float32)),
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
        missing = {"embeddings", "mlp", "log_rate"} - set(meta_params)
        if missing:
            raise ValueError(
                f"L3RS.make: meta_params lacks {sorted(missing)}; build them with lopt.init_meta_params(key) "
                "(or load a checkpoint made by this version of l3rs)."
            )
        want = (self.num_layers, self.embedding_dim)
        got = tuple(jnp.shape(meta_params["embeddings"]))
        if got != want:
            raise ValueError(
                f"L3RS.make: meta_params['embeddings'] has shape {got}, expected {want} (num_layers, embedding_dim). "
                "Use meta-params made for this model by the same L3RS (under jax.vmap, call make inside the vmap)."
            )
        got = tuple(jnp.shape(meta_params["log_rate"]))
        if got != (1,):
            raise ValueError(
                f"L3RS.make: meta_params['log_rate'] has shape {got}, expected (1,) (one global log rate)."
            )
        got = tuple(jnp.shape(meta_params["mlp"][f"b{len(self.layer_sizes) - 2}"]))
        if got != (self.layer_sizes[-1],):
            raise ValueError(
                f"L3RS.make: the MLP's last bias has shape {got}, expected ({self.layer_sizes[-1]},): "
                f"{len(self.base_directions)} mixing logits for {self.base_directions} and one rate output."
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
          arg ``loss=`` (scalar training loss at ``params``) and ignores any other extra args. Its
          state starts with ``mixing = μ⁰`` and ``rates = exp(log_rate)`` (θ's global rate).

        Raises:
          ValueError: for a non-positive Python ``num_steps`` or meta-params of the wrong layout.
        """
        check_num_steps("L3RS", num_steps)
        self._check_meta_params(meta_params)
        log_mixing0 = jnp.log(jnp.asarray(self.initial_mixing, jnp.float32))
        stacked = fused.resolve_impl(self.impl) == "reference"  # "single_pass" is "fused" here
        num_mlp_layers = len(self.layer_sizes) - 1

        def init_fn(params):
            return self._init_state(jnp.exp(jnp.asarray(meta_params["log_rate"], jnp.float32)[0]), params)

        def update_fn(updates, state, params=None, **extra_args):
            loss = loss_arg(params, extra_args)
            grads, treedef = jax.tree.flatten(updates)
            self._check_num_leaves(grads, "update")
            param_leaves = treedef.flatten_up_to(params)
            stats, status = layer_status(self.ema_decays, state, loss, grads, param_leaves, num_steps)
            mixing, rates = mixing_and_rates(meta_params, status, log_mixing0, num_mlp_layers)
            weights = -rates[:, None] * mixing  # [L, K]: Δθ_l = Σ_p weights_{l,p}·d̂_{l,p}
            new_updates, buffers = self._combine(
                weights, state.buffers, treedef, param_leaves, grads, stats[0], stacked
            )
            new_state = L3RSState(
                *stats, mixing=mixing.astype(jnp.float32), rates=rates.astype(jnp.float32), buffers=buffers
            )
            return treedef.unflatten(new_updates), new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    def _init_state(self, rate0: jax.Array, params: Any) -> L3RSState:
        self._check_num_leaves(jax.tree.leaves(params), "init")
        zeros = lambda p: jnp.zeros(jnp.shape(p), F.accumulator_dtype(jnp.result_type(p)))  # noqa: E731
        buffers = {
            n: tuple(jax.tree.map(zeros, params) for _ in range(DIRECTIONS[n].num_buffers))
            for n in self.base_directions
            if DIRECTIONS[n].num_buffers
        }
        num_scales = len(self.ema_decays)
        return L3RSState(
            iteration=jnp.zeros([], jnp.int32),
            first_loss=jnp.zeros([], jnp.float32),
            loss_ema=jnp.zeros([num_scales], jnp.float32),
            grad_rms_ema=jnp.zeros([self.num_layers, num_scales], jnp.float32),
            weight_rms_ema=jnp.zeros([self.num_layers, num_scales], jnp.float32),
            mixing=jnp.broadcast_to(
                jnp.asarray(self.initial_mixing, jnp.float32), (self.num_layers, len(self.base_directions))
            ),
            rates=jnp.broadcast_to(rate0, (self.num_layers,)),
            buffers=buffers,
        )

    def _combine(self, weights, buffers, treedef, param_leaves, grads, count, stacked) -> tuple[list, dict]:
        """Every layer's update ``Σ_p w_{l,p}·d̂_{l,p}`` and the base directions' new accumulators."""
        buffer_leaves = {n: [treedef.flatten_up_to(tree) for tree in trees] for n, trees in buffers.items()}
        new_updates = []
        new_buffer_leaves = {n: [[] for _ in trees] for n, trees in buffers.items()}
        for layer, (p, g) in enumerate(zip(param_leaves, grads, strict=True)):
            g32 = g.astype(F.accumulator_dtype(g.dtype))
            directions = []
            for n in self.base_directions:
                old = tuple(trees[layer] for trees in buffer_leaves.get(n, ()))
                direction, new = DIRECTIONS[n].step(self, g32, old, count)
                for b, x in enumerate(new):
                    new_buffer_leaves[n][b].append(x.astype(old[b].dtype))
                directions.append(jnp.broadcast_to(direction, g32.shape).astype(g32.dtype))
            norms = jnp.stack([direction_rms(d) for d in directions])  # [K] float32: RMS(d) + ε_n
            if stacked:  # reference: [*shape, K] normalised directions contracted with the [K] weights
                unit = jnp.stack([d / norms[k].astype(d.dtype) for k, d in enumerate(directions)], axis=-1)
                total = jnp.matmul(unit, weights[layer].astype(g32.dtype), precision=_HIGHEST)
            else:  # fused: the normalisers folded into the scalars, one elementwise loop
                scales = (weights[layer] / norms).astype(g32.dtype)
                total = scales[0] * directions[0]
                for k in range(1, len(directions)):
                    total = total + scales[k] * directions[k]
            new_updates.append(total.astype(jnp.result_type(p)))
        return new_updates, {n: tuple(treedef.unflatten(x) for x in trees) for n, trees in new_buffer_leaves.items()}
