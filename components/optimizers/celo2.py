"""``celo2``: a learned per-element MLP update, Newton–Schulz orthogonalised, with AdamW for vectors.

Re-implementation of Celo2 (Moudgil, Knyazev, Belilovsky, "Celo2: Towards Learned Optimization Free
Lunch", ICLR 2026, arXiv 2602.19142; reference code ``amoudgl/celo``, ``celo/optimizers/celo2.py``
(the meta-training wrapper, class ``Celo2``) and ``celo2_optax.py`` (``Celo2Transformation``), and
the usage notes of ``amoudgl/celo2``'s README). See ``research/algorithms.md`` §1.4.

Every parameter leaf goes to one of two branches (the *routing rule*, below). With learning rate
``η_t`` (a float or an optax schedule of the step count ``t``, counted from 0) and weight decay
``λ``, the update of leaf ``p`` with gradient ``g`` is

* **learned branch** (hidden matrices, and whatever the rule does not route to AdamW):
  ``u = −η_t · (Δ + λ·p)`` where ``Δ`` is

  1. ``g ← clip(g, −1000, 1000)``; the accumulators are updated with ``g`` first (no bias
     correction): momentum ``m_k`` (decays 0.9, 0.99, 0.999), second moment ``v`` (0.95) and
     Adafactor statistics (0.9, 0.99, 0.999; :mod:`.features`).
  2. Feature channels (``r = rsqrt(v + 1e-8)``), in the reference's group order:
     ``g``, ``clip(g, ±0.1)``, ``p``, ``m_k``, ``v``, ``m_k·r``, ``r``, ``fac_g_a``, ``g·r`` and,
     for tensors with ≥ 2 axes only, the Adafactor row and column statistics, their
     ``rsqrt(· + 1e-8)`` and ``m_k · rsqrt(row/mean(row)) · rsqrt(col)`` — 30 channels for a
     matrix, 15 for a vector or a scalar (which use only the first 9 groups' weights).
  3. Each channel is normalised by its second moment over the **last two axes of p** (all axes of
     a 1-D tensor, none of a scalar): ``f ← f · rsqrt(1e-9 + mean(f²))``.
  4. MLP ``C → 8 → 8 → 3`` (ReLU); outputs ``(d, s, unused)``; ``Δ = d · exp(exp_mult · s)`` with
     ``exp_mult = 0`` (so ``Δ = d``); no ``RMS(p)`` factor.
  5. If ``orthogonalize`` and ``p`` has ≥ 2 axes: ``Δ ← NS(Δ)``, the quintic Newton–Schulz
     iteration on the last two axes (:func:`newton_schulz`).
  6. ``Δ ← Δ · rsqrt(1e-9 + mean(Δ²))`` over the same axes as 3 (per-tensor RMS normalisation).

* **AdamW branch** (vectors, scalars and embeddings): ``u = −mult_1d·η_t · (μ·rsqrt(ν + ε) + λ·p)``
  with ``μ ← β1·μ + (1−β1)·g``, ``ν ← β2·ν + (1−β2)·g²`` (``β = (0.9, 0.95)``, ``ε = 1e-8``,
  ``mult_1d = 20``), un-clipped gradients and no bias correction (``adam_bias_correction``).

``newton_schulz(X)``: transpose if ``X`` has more rows than columns; ``X ← X / (‖X‖_F + eps)``;
five times ``A = X Xᵀ``, ``X ← a·X + (b·A + c·A²)·X`` with ``(a, b, c) = (3.4445, −4.7750, 2.0315)``;
transpose back. It maps every singular value ``σ ∈ (0, 1]`` of the normalised ``X`` through the
odd quintic ``q(σ) = aσ + bσ³ + cσ⁵`` five times and keeps the singular vectors, so the result is
``U·diag(q⁵(σ))·Vᵀ``: the polar factor's singular vectors ``U Vᵀ`` with singular values in a band
around 1 (``[0.68, 1.21]`` for normalised singular values ``σ ≥ 3e-3``; smaller ones stay smaller),
not exactly orthogonal.

**Routing rule** (which leaves take AdamW). ``adam_regex=None`` (default) is the rule of the
reference's optax usage (``amoudgl/celo2`` README): a leaf goes to AdamW when it has ≤ 1 axis or
its path contains ``embed``; we add our transformer's positional table, a 2-D leaf named ``pos``
(``components/tasks/transformer.py``), since it is an embedding that the reference's word match
would miss. Every other leaf — hidden matrices, conv kernels *and* output heads (the reference
does not single out output layers) — takes the learned branch. ``adam_regex="..."`` replaces the
rule by the meta-training one (``Celo2(regex_1d=...)``): AdamW exactly for the leaves whose path,
keys joined by ``/`` (``dense0/b``; sequence indices as numbers), matches the Python regex
(``re.search``); the reference's meta-training command uses ``/b$`` (biases), which on our MLP and
conv tasks routes the same leaves as the default rule. :func:`adam_leaf_mask` shows the routing.

Meta-parameters θ: ``{"ff_mod_stack": {"w0__0" … "w0__13", "w1", "w2", "b0", "b1", "b2"}}``, the
reference's haiku names of ``_ff_mod`` (its module ``~`` flattened away), drawn from ``key`` by
haiku's default ``Linear`` init: ``TruncNormal(−2, 2)/sqrt(fan_in)`` with ``fan_in`` the layer's
total input width on a matrix (30 for the first layer), zero biases.

Choices where the reference was unclear, where its two sources differ, or where we deviate:

* **AdamW branch**: the meta-training wrapper (``celo2.py``; factory ``celo2``: ``adam_b2=0.95``,
  bias correction off, ``ε`` inside the square root) is followed, because θ is trained with it. The
  README's deployment recipe uses ``optax.adamw(20·η, 0.9, 0.95)`` instead (bias-corrected, ``ε``
  outside the root); ``adam_bias_correction=True`` gives the bias correction, the ``ε`` placement
  stays the wrapper's (the two agree once ``ν ≫ ε``).
* **Weight decay** is decoupled and scaled by the branch's learning rate (``η·λ·p`` and
  ``20·η·λ·p``), as both the wrapper and ``optax.adamw`` / ``add_decayed_weights`` then
  ``scale_by_learning_rate`` do; default ``λ = 0`` (the reference's flag default).
* **Learning rate**: the reference's ``step_mult = 0.001`` (meta-training) is our default
  ``learning_rate = 1e-3``; a schedule is evaluated at the step count before the update (as
  ``optax.scale_by_learning_rate``). A schedule cannot be written to a checkpoint's JSON config:
  ``config()`` then raises and asks for a float (schedule the result with ``optax`` instead, e.g.
  ``optax.chain(opt, optax.scale_by_schedule(...))`` with ``learning_rate=1.0``).
* **Scalars** are treated as the reference does (expanded to one element: no factored features,
  normalisation over that one element) without reshaping; **0-D and ≥ 3-D** leaves follow the same
  "last two axes" rule (a conv kernel ``[k, k, cin, cout]`` is normalised and orthogonalised per
  ``(k, k)`` position, as the reference's batched ``@`` does).
* The learned MLP is evaluated in the stacked ("reference") form in float32 at ``HIGHEST``
  precision; the fused forms of :mod:`.fused` normalise over the whole tensor with ``eps = 1e-5``,
  not over the last two axes with ``1e-9``, so Celo2 does not use the ``PerParameterLOpt`` engine
  (the update is also not per-element: Newton–Schulz mixes a whole matrix). Accumulators are kept
  in at least float32 and updates cast back to the parameter dtype.
* ``num_steps`` is required by the common ``make`` contract but unused (Celo2 has no loss, step or
  progress features). Random draws differ from the reference (different key splitting).
* The reference's unused switches (``with_*`` feature flags, ``param_scale_mult``,
  ``precondition_output``, ``aggregate_mag``, ``rmsmult``, ``bias_correction`` of the learned
  branch) are fixed at Celo2's values and not exposed.

Example:
  >>> import jax, jax.numpy as jnp
  >>> lopt = Celo2(learning_rate=1e-3, weight_decay=0.1)
  >>> meta_params = lopt.init_meta_params(jax.random.key(0))
  >>> opt = lopt.make(meta_params, num_steps=100)
  >>> params = {"dense0": {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}}
  >>> grads = {"dense0": {"w": jnp.full((3, 2), 0.5), "b": jnp.ones(2)}}
  >>> updates, state = opt.update(grads, opt.init(params), params)
  >>> adam_leaf_mask(params)  # leaves in order: dense0/b, dense0/w
  [True, False]
"""

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from components.optimizers import features as F
from components.optimizers import velo_mlp as V
from components.optimizers.celo2_parts import (
    NS_COEFFS,
    AdamMoments,
    Celo2State,
    adam_leaf_mask,
    celo2_feature_groups,
    celo2_features,
    newton_schulz,
    normalize_last_two_axes,
)
from components.optimizers.features import leaf_path
from components.optimizers.per_parameter import (
    check_bool,
    check_decays,
    check_float,
    check_int,
    check_num_steps,
    dataclass_config,
)

__all__ = [
    "NS_COEFFS",
    "AdamMoments",
    "Celo2",
    "Celo2State",
    "adam_leaf_mask",
    "celo2_features",
    "leaf_path",
    "newton_schulz",
    "normalize_last_two_axes",
]

_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------- the optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Celo2:
    """Celo2: learned MLP update rule with Newton–Schulz for matrices and AdamW for vectors / embeddings.

    See the module docstring for the maths, the routing rule, θ's layout and the reference.

    Attributes:
      learning_rate: ``η`` — a float or an optax schedule ``t -> η_t`` (1e-3, the reference's
        ``step_mult``).
      weight_decay: decoupled weight decay ``λ`` (0.0), scaled by each branch's learning rate.
      mult_1d: learning-rate multiplier of the AdamW branch (20).
      adam_b1, adam_b2, adam_eps: the AdamW branch's ``β1, β2, ε`` (0.9, 0.95, 1e-8).
      adam_bias_correction: bias-correct the AdamW moments (False, as in meta-training).
      adam_regex: ``None`` (default routing rule) or a regex over leaf paths that selects the
        AdamW leaves (e.g. ``"/b$"``, the reference's meta-training rule).
      orthogonalize: Newton–Schulz on learned steps of leaves with ≥ 2 axes (True; False is
        "Celo2-base"'s update for those leaves).
      ns_coeffs, ns_steps, ns_eps: the iteration's coefficients, count and norm epsilon.
      ff_hidden_size, ff_hidden_layers: the MLP's hidden width (8) and depth (2).
      initial_momentum_decays, initial_rms_decays, initial_adafactor_decays: the fixed decays of
        the learned branch's accumulators ((0.9, 0.99, 0.999), (0.95,), (0.9, 0.99, 0.999)).
      exp_mult: multiplier of the magnitude output inside ``exp`` (0.0: the magnitude is unused).
    """

    learning_rate: float | Callable = 1e-3
    weight_decay: float = 0.0
    mult_1d: float = 20.0
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    adam_eps: float = 1e-8
    adam_bias_correction: bool = False
    adam_regex: str | None = None
    orthogonalize: bool = True
    ns_coeffs: tuple[float, ...] = NS_COEFFS
    ns_steps: int = 5
    ns_eps: float = 1e-8
    ff_hidden_size: int = 8
    ff_hidden_layers: int = 2
    initial_momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    initial_rms_decays: tuple[float, ...] = (0.95,)
    initial_adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    exp_mult: float = 0.0

    name: ClassVar[str] = "celo2"

    def __post_init__(self):
        owner = "Celo2"
        set_ = functools.partial(object.__setattr__, self)
        if not callable(self.learning_rate):
            lr = check_float(owner, "learning_rate", self.learning_rate, nonnegative=True)
            set_("learning_rate", lr)
        for field in ("weight_decay", "mult_1d", "adam_eps", "ns_eps"):
            set_(field, check_float(owner, field, getattr(self, field), nonnegative=True))
        for field in ("adam_b1", "adam_b2"):
            value = check_float(owner, field, getattr(self, field))
            if not 0.0 <= value < 1.0:
                raise ValueError(f"Celo2.{field} must be in [0, 1), got {value}.")
            set_(field, value)
        set_("exp_mult", check_float(owner, "exp_mult", self.exp_mult))
        for field in ("adam_bias_correction", "orthogonalize"):
            set_(field, check_bool(owner, field, getattr(self, field)))
        if self.adam_regex is not None:
            if not isinstance(self.adam_regex, str):
                got = self.adam_regex
                raise TypeError(f"Celo2.adam_regex must be None or a regex string (e.g. '/b$'), got {got!r}.")
            try:
                re.compile(self.adam_regex)
            except re.error as err:
                raise ValueError(f"Celo2.adam_regex {self.adam_regex!r} is not a valid Python regex: {err}.") from err
        try:
            coeffs = tuple(float(c) for c in self.ns_coeffs)
        except (TypeError, ValueError) as err:
            raise TypeError(f"Celo2.ns_coeffs must be 3 floats (a, b, c), got {self.ns_coeffs!r}.") from err
        if len(coeffs) != 3:
            raise ValueError(f"Celo2.ns_coeffs must be 3 floats (a, b, c), e.g. {NS_COEFFS}, got {self.ns_coeffs!r}.")
        set_("ns_coeffs", coeffs)
        set_("ns_steps", check_int(owner, "ns_steps", self.ns_steps, 0))
        set_("ff_hidden_size", check_int(owner, "ff_hidden_size", self.ff_hidden_size, 1))
        set_("ff_hidden_layers", check_int(owner, "ff_hidden_layers", self.ff_hidden_layers, 0))
        for field in ("initial_momentum_decays", "initial_rms_decays", "initial_adafactor_decays"):
            set_(field, check_decays(owner, field, getattr(self, field)))
        _ = self.feature_groups  # validates that the decay counts can be paired

    # ------------------------------------------------------------------ sizes

    @functools.cached_property
    def feature_groups(self) -> tuple[int, ...]:
        """Widths of the first layer's 14 input groups (traced on a matrix; 30 channels by default)."""

        def trace(param):
            grad = jnp.zeros_like(param)
            acc = self._init_learned(param)
            fac_g = tuple(grad for _ in self.initial_adafactor_decays)
            return celo2_feature_groups(param, grad, acc.momentum, acc.rms, fac_g, acc.factored)

        groups = jax.eval_shape(trace, jax.ShapeDtypeStruct((3, 2), jnp.float32))
        return tuple(len(group) for group in groups)

    @functools.cached_property
    def _meta_params_shapes(self) -> dict:
        tree = jax.eval_shape(self.init_meta_params, jax.random.key(0))
        return {k: tuple(v.shape) for k, v in tree["ff_mod_stack"].items()}

    # ------------------------------------------------------------------ contract

    def config(self) -> dict:
        """JSON-serialisable hyperparameters (tuples as lists).

        Raises:
          TypeError: when ``learning_rate`` is a schedule (it cannot be written to JSON).
        """
        if callable(self.learning_rate):
            raise TypeError(
                "Celo2.config(): learning_rate is a schedule, which a checkpoint's config.json cannot hold. "
                "Build the saved optimizer with a float learning_rate (e.g. 1.0) and apply the schedule "
                "outside it, e.g. optax.chain(celo2, optax.scale_by_schedule(schedule))."
            )
        return dataclass_config(self)

    def frozen_keys(self) -> tuple[str, ...]:
        """No frozen subtree: the whole MLP is meta-trained (one phase)."""
        return ()

    def init_meta_params(self, key: jax.Array) -> dict:
        """θ ``{"ff_mod_stack": {w0__0 … w0__13, w1, w2, b0, b1, b2}}``, deterministic in ``key``."""
        ff = V.init_ff_params(
            key,
            self.feature_groups,
            hidden_size=self.ff_hidden_size,
            hidden_layers=self.ff_hidden_layers,
            num_outputs=3,
        )
        return {"ff_mod_stack": ff}

    def adam_leaf_mask(self, params: Any) -> list[bool]:
        """:func:`adam_leaf_mask` with this optimizer's ``adam_regex``."""
        return adam_leaf_mask(params, self.adam_regex)

    def make(self, meta_params: Any, *, num_steps) -> optax.GradientTransformationExtraArgs:
        """The inner optimizer for θ (which may be traced, batched or differentiated).

        Args:
          meta_params: θ from :meth:`init_meta_params`.
          num_steps: the run length (required by the common contract; unused by Celo2).

        Returns:
          An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` (a feature and
          the weight decay) and ignores every keyword extra arg (``loss`` …).

        Raises:
          ValueError: if ``num_steps`` is missing or not positive, or θ does not match this architecture.
        """
        check_num_steps("Celo2", num_steps)
        ff = self._check_meta_params(meta_params)
        return _transform(self, ff)

    # ------------------------------------------------------------------ pieces

    def _check_meta_params(self, meta_params: Any) -> dict:
        if not isinstance(meta_params, dict) or set(meta_params) != {"ff_mod_stack"}:
            got = sorted(meta_params) if isinstance(meta_params, dict) else type(meta_params).__name__
            raise ValueError(
                f"Celo2.make: meta_params must be {{'ff_mod_stack': {{...}}}}, got {got}. "
                "Build them with Celo2(...).init_meta_params(key)."
            )
        ff = meta_params["ff_mod_stack"]
        got = {k: tuple(jnp.shape(v)) for k, v in ff.items()} if isinstance(ff, dict) else None
        if got != self._meta_params_shapes:
            raise ValueError(
                f"Celo2.make: meta_params['ff_mod_stack'] has shapes {got}, expected {self._meta_params_shapes} "
                f"for ff_hidden_size={self.ff_hidden_size}, ff_hidden_layers={self.ff_hidden_layers} and these "
                "decays. Build them with the same Celo2(...).init_meta_params(key)."
            )
        return ff

    def _init_learned(self, param: jax.Array) -> F.Accumulators:
        counts = (len(self.initial_momentum_decays), len(self.initial_rms_decays), len(self.initial_adafactor_decays))
        return F.init_accumulators(param, *counts)

    def learned_step(self, ff: dict, param: jax.Array, grad: jax.Array, acc: F.Accumulators):
        """``(Δ, new accumulators)`` of the learned branch for one leaf (steps 1–6 of the module docstring)."""
        grad = F.clip_gradient(grad.astype(F.accumulator_dtype(param.dtype)))
        decays = (self.initial_momentum_decays, self.initial_rms_decays, self.initial_adafactor_decays)
        acc, fac_g = F.update_accumulators(acc, grad, *(jnp.asarray(d, jnp.float32) for d in decays))
        channels = celo2_features(param, grad, acc.momentum, acc.rms, fac_g, acc.factored)
        shape = param.shape
        x = jnp.stack([jnp.broadcast_to(c, shape) for c in channels], axis=-1)
        x = normalize_last_two_axes(x, param.ndim)
        used = len(channels)  # 15 below 2 axes: only the first 9 groups' weights
        num_groups = next(i for i in range(len(self.feature_groups) + 1) if sum(self.feature_groups[:i]) == used)
        w0 = jnp.concatenate([ff[f"w0__{i}"] for i in range(num_groups)], axis=0)
        layers = [(w0, ff["b0"])] + [(ff[f"w{k}"], ff[f"b{k}"]) for k in range(1, self.ff_hidden_layers + 1)]
        h = x
        for k, (w, b) in enumerate(layers):
            h = jnp.matmul(h, w, precision=_HIGHEST) + b
            if k < len(layers) - 1:
                h = jax.nn.relu(h)
        step = h[..., 0] * jnp.exp(self.exp_mult * h[..., 1])
        if self.orthogonalize and param.ndim >= 2:
            step = newton_schulz(step, self.ns_coeffs, self.ns_steps, self.ns_eps)
        return normalize_last_two_axes(step, param.ndim), acc

    def adam_step(self, grad: jax.Array, moments: AdamMoments, count: jax.Array):
        """``(direction, new moments)`` of the AdamW branch for one leaf (``count``: updates including this one)."""
        dtype = moments.mu.dtype
        g = grad.astype(dtype)
        mu = self.adam_b1 * moments.mu + (1.0 - self.adam_b1) * g
        nu = self.adam_b2 * moments.nu + (1.0 - self.adam_b2) * g * g
        m_hat, v_hat = mu, nu
        if self.adam_bias_correction:
            t = count.astype(dtype)
            m_hat = mu / (1.0 - self.adam_b1**t)
            v_hat = nu / (1.0 - self.adam_b2**t)
        return m_hat * jax.lax.rsqrt(v_hat + self.adam_eps), AdamMoments(mu, nu)


def _transform(lopt: Celo2, ff: dict) -> optax.GradientTransformationExtraArgs:
    def learning_rate(count):
        if callable(lopt.learning_rate):
            return lopt.learning_rate(count)
        return lopt.learning_rate

    def init_fn(params):
        leaves, treedef = jax.tree.flatten(params)
        mask = lopt.adam_leaf_mask(params)
        states = []
        for leaf, is_adam in zip(leaves, mask, strict=True):
            if is_adam:
                zeros = jnp.zeros(jnp.shape(leaf), F.accumulator_dtype(leaf.dtype))
                states.append(AdamMoments(zeros, zeros))
            else:
                states.append(lopt._init_learned(leaf))
        return Celo2State(count=jnp.zeros([], jnp.int32), leaves=treedef.unflatten(states))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args  # Celo2 reads no loss
        if params is None:
            raise ValueError("celo2 uses the parameters as a feature: call opt.update(grads, state, params).")
        grads, treedef = jax.tree.flatten(updates)
        leaves = treedef.flatten_up_to(params)
        states = treedef.flatten_up_to(state.leaves)
        mask = lopt.adam_leaf_mask(params)
        count = state.count + jnp.ones([], jnp.int32)
        lr = learning_rate(state.count)
        new_updates, new_states = [], []
        for param, grad, leaf_state, is_adam in zip(leaves, grads, states, mask, strict=True):
            p = param.astype(F.accumulator_dtype(param.dtype))
            if is_adam:
                direction, leaf_state = lopt.adam_step(grad, leaf_state, count)
                scale = lr * lopt.mult_1d
            else:
                direction, leaf_state = lopt.learned_step(ff, param, grad, leaf_state)
                scale = lr
            update = -scale * (direction + lopt.weight_decay * p)
            new_updates.append(update.astype(param.dtype))
            new_states.append(leaf_state)
        return treedef.unflatten(new_updates), Celo2State(count=count, leaves=treedef.unflatten(new_states))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
