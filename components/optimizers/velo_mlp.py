"""The per-parameter MLP shared by VeLO (``HyperV2``) and Celo: features, weights and step.

VeLO (Metz et al. 2022, arXiv 2211.09760) and Celo (Moudgil et al. 2025, arXiv 2501.12670) apply
the same small MLP to every element of every parameter tensor; they differ only in where its
weights come from (a per-tensor hypernetwork for VeLO, one fixed set for Celo). See
``research/algorithms.md`` §1.1 (the feature table) and §2.1.

Maths, for one tensor ``p`` with (clipped) gradient ``g`` and accumulators updated with ``g``
(:mod:`.features`): momentum ``m_k`` (``n_m`` decays), second moment ``v_j`` (``n_v``) and
Adafactor statistics ``r_a, c_a`` or ``v^a_a`` with preconditioned gradients ``fac_g_a`` (``n_a``).

1. Feature channels, grouped as the reference's first layer (one weight matrix ``w0__{i}`` per
   group ``i``), in this order:

   ====  ==============================================  =========================
   i     group                                           width
   ====  ==============================================  =========================
   0     ``g``                                           1
   1     ``clip(g, −0.1, 0.1)``                          1
   2     ``p``                                           1
   3     ``m_k``                                         n_m
   4     ``v_j``                                         n_v
   5     ``m · rsqrt(v + 1e-6)``                         bcast(n_m, n_v)
   6     ``rsqrt(v_j + 1e-6)``                           n_v
   7     ``fac_g_a``                                     n_a
   8     ``g · rsqrt(v_j + 1e-6)``                       n_v
   9     row statistic ``r_a`` (≥ 2 axes) / ``v^a_a``    n_a
   10    column statistic ``c_a`` / ``v^a_a``            n_a
   11    ``rsqrt(r_a + 1e-8)`` / ``rsqrt(v^a_a + 1e-8)``  n_a
   12    ``rsqrt(c_a + 1e-8)`` / ``rsqrt(v^a_a + 1e-8)``  n_a
   13    ``m · rsqrt(r/mean(r)) · rsqrt(c)`` / ``m · (v^a)^−½``  bcast(n_m, n_a)
   ====  ==============================================  =========================

   ``bcast(a, b)`` pairs the two decay vectors like NumPy broadcasting of a trailing axis (equal
   counts pairwise, or a count of 1 against every entry of the other). With the default decays
   (3, 1, 3) that is 30 channels. Unlike ``small_fc_lopt``, the un-factored group 13 has no
   ``+1e-6`` inside the power (the reference's ``HyperV2`` and Celo code). Its value stays finite
   (``v^a ≥ (1−β)·1e-30``), but where an element's gradient was exactly 0 its derivative overflows
   and a *backprop* meta-gradient through the following steps is NaN (ES/PES, with which VeLO and
   Celo were meta-trained, are unaffected). We keep the reference's maths; see the tests.
2. Each channel is normalised by its own second moment over the tensor,
   ``f ← f / sqrt(1e-5 + mean(f²))`` (:func:`normalize_channels`; :mod:`.fused` folds it into the
   first layer). No step-count features.
3. MLP ``C → hidden → … → 3`` with ReLU between layers; outputs ``(d, s, unused)``.
4. Step ``Δ = d · exp(exp_mult·s) · step_mult · RMS(p)`` with ``RMS(p) = sqrt(mean(p²) + 1e-9)``
   (:func:`param_step`); the caller applies ``p ← p − Δ`` (times any learned LR multiplier).

Performance: the optimizers evaluate steps 2–3 with :func:`.fused.normalized_mlp` on the
un-normalised channels of :func:`hyper_features` and the layers of :func:`ff_layers` (the
``w0__i`` blocks concatenated to one ``[C, H]`` first layer), in the form their ``impl`` field
names; all three compute the same function:

* ``"reference"``: the channels stacked to ``[*shape, C]``, normalised and multiplied by the
  weights (the papers' code; XLA writes the stacked input and every ``[*shape, H]`` hidden layer).
  The ground truth the others are tested against.
* ``"fused"`` (what ``"auto"`` picks today): the per-tensor normalisers folded into the first
  layer's weights, every layer a sum of channels times scalar weights with the hidden units as
  separate arrays, and the row / column statistics (groups 9–12 of tensors with ≥ 2 axes, kept
  un-broadcast) mixed in their own small shape before being broadcast once per hidden unit. XLA
  fuses the features and the MLP into elementwise code; no ``[*shape, C]`` or ``[*shape, H]``
  tensor is written. Exact up to float rounding.
* ``"single_pass"``: ``"fused"`` with one-step-stale per-tensor norms kept in the optimizer state
  (the first step estimates them on a subsample), so the MLP need not wait for the reductions.
  This changes the optimizer slightly.

The weights may differ per tensor (VeLO's hypernetwork): each tensor's MLP simply gets its own
layers. The fused forms trace a few ops per weight (~150 weights with the default sizes) for every
parameter tensor, so the trace grows with the number of tensors, and a backprop meta-gradient
through them compiles markedly slower than through ``"reference"`` (on CPU, 20 steps of VeLO on
4 tensors: ~70 s against ~16 s). :func:`apply_ff` and :func:`normalize_channels` are the same
maths on already-normalised channels, for tests and direct use.

Weight layout: ``{"w0__0", …, "w0__13", "w1", …, "b0", …}`` as the reference's haiku parameters of
``_ff_mod`` (module ``~``), so released weights map one to one.

Choices where we deviate from or could not verify the reference:

* Scalars are not reshaped to ``[1]`` (the elementwise form needs no reshape; same maths).
* Row/column statistics are normalised un-tiled (same second moment, up to rounding).
* Incompatible decay counts raise ``ValueError`` here; the reference would fail inside the trace.
* Random draws differ from the reference (different key splitting).

Example:
  >>> import jax, jax.numpy as jnp
  >>> groups = feature_groups(3, 1, 3)
  >>> sum(groups)
  30
  >>> ff = init_ff_params(jax.random.key(0), groups)
  >>> inputs = [jnp.ones((2, 3))] * sum(groups)
  >>> d, s, _ = apply_ff(ff, inputs, groups)
  >>> d.shape
  (2, 3)
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from components.optimizers import features as F
from components.optimizers import fused

__all__ = [
    "apply_ff",
    "feature_groups",
    "ff_layers",
    "hyper_feature_groups",
    "hyper_features",
    "init_ff_params",
    "normalize_channels",
    "param_step",
    "truncated_normal_blocks",
]


def hyper_feature_groups(
    param: jax.Array,
    grad: jax.Array,
    momentum: Sequence[jax.Array],
    rms: Sequence[jax.Array],
    fac_g: Sequence[jax.Array],
    factored: F.FactoredAccumulator,
    *,
    rms_eps: float = 1e-6,
    vector_groups: bool = True,
) -> list[list[jax.Array]]:
    """The un-normalised feature channels of one tensor, grouped as the reference's first layer.

    ``rms_eps`` is the ε of ``rsqrt(rms + ε)`` (Celo / AdafacMLP: 1e-6; Celo2: 1e-8); with
    ``vector_groups=False`` a tensor with < 2 axes gets only the first 9 groups (Celo2) instead of
    the ``v_diag`` stand-ins for the row/column groups.

    Args:
      param: the parameter tensor.
      grad: its (already ±1000-clipped) gradient.
      momentum: updated momentum accumulators, one per momentum decay.
      rms: updated second-moment accumulators, one per RMS decay.
      fac_g: Adafactor-preconditioned gradients, one per Adafactor decay.
      factored: the updated Adafactor statistics.

    Returns:
      14 groups (see the module docstring); each channel is broadcastable to ``param.shape``
      (row/column statistics keep their reduced axis with size 1).

    Raises:
      ValueError: if the decay counts cannot be paired (see the module docstring).
    """
    dtype = F.accumulator_dtype(param.dtype)
    g = grad.astype(dtype)
    p = param.astype(dtype)
    rsqrt_rms = [jax.lax.rsqrt(v + rms_eps) for v in rms]
    groups = [
        [g],
        [jnp.clip(g, -0.1, 0.1)],
        [p],
        list(momentum),
        list(rms),
        [m * r for m, r in F.pair_decays(momentum, rsqrt_rms, "momentum and RMS accumulators")],
        rsqrt_rms,
        list(fac_g),
        [g * r for r in rsqrt_rms],
    ]
    dims = F.factored_dims(param.shape)
    if dims is None and not vector_groups:
        return groups
    if dims is None:
        v = list(factored.v_full)
        inv = [jax.lax.rsqrt(x + 1e-8) for x in v]
        pairs = F.pair_decays(momentum, v, "momentum and Adafactor accumulators")
        groups += [v, v, inv, inv, [m * x**-0.5 for m, x in pairs]]
        return groups
    d1, d0 = dims
    rows = [jnp.expand_dims(r, d0) for r in factored.v_row]
    cols = [jnp.expand_dims(c, d1) for c in factored.v_col]
    factors = [F.factored_preconditioner(r, c, dims) for r, c in zip(factored.v_row, factored.v_col, strict=True)]
    pairs = F.pair_decays(momentum, factors, "momentum and Adafactor accumulators")
    groups += [
        rows,
        cols,
        [jax.lax.rsqrt(r + 1e-8) for r in rows],
        [jax.lax.rsqrt(c + 1e-8) for c in cols],
        [m * rf * cf for m, (rf, cf) in pairs],
    ]
    return groups


def hyper_features(*args) -> list[jax.Array]:
    """The un-normalised feature channels of one tensor, flat, in the reference's order.

    Same arguments as :func:`hyper_feature_groups`; returns its groups concatenated (30 channels
    with the default decays).
    """
    return [c for group in hyper_feature_groups(*args) for c in group]


@functools.lru_cache(maxsize=64)
def feature_groups(num_momentum: int, num_rms: int, num_adafactor: int) -> tuple[int, ...]:
    """Widths of the first-layer input groups, counted by tracing the features abstractly.

    Args:
      num_momentum: number of momentum decays.
      num_rms: number of RMS decays.
      num_adafactor: number of Adafactor decays.

    Returns:
      One width per group ``w0__{i}`` (14 groups); ``(1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)``
      for the defaults (3, 1, 3), summing to 30. The widths do not depend on the tensor's rank.

    Raises:
      ValueError: if a count is below 1 or the counts cannot be paired.
    """
    counts = (num_momentum, num_rms, num_adafactor)
    if not all(isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 1 for n in counts):
        raise ValueError(
            f"feature_groups needs positive integer decay counts (num_momentum, num_rms, num_adafactor), got {counts}."
        )

    def trace(param):
        grad = jnp.zeros_like(param)
        momentum = F.init_momentum(param, num_momentum)
        rms = F.init_rms(param, num_rms)
        factored = F.init_factored(param, num_adafactor)
        fac_g = tuple(grad for _ in range(num_adafactor))
        return hyper_feature_groups(param, grad, momentum, rms, fac_g, factored)

    groups = jax.eval_shape(trace, jax.ShapeDtypeStruct((3, 2), jnp.float32))
    return tuple(len(group) for group in groups)


def _check_sizes(hidden_size: int, hidden_layers: int, num_outputs: int) -> None:
    for name, value, low in (("hidden_size", hidden_size, 1), ("hidden_layers", hidden_layers, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"init_ff_params: {name} must be an int >= {low}, got {value!r}.")
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int | np.integer) or num_outputs < 2:
        raise ValueError(
            f"init_ff_params: num_outputs must be an int >= 2 (direction and magnitude), got {num_outputs!r}."
        )


def init_ff_params(
    key: jax.Array,
    groups: Sequence[int],
    *,
    hidden_size: int = 4,
    hidden_layers: int = 2,
    num_outputs: int = 3,
) -> dict:
    """Initial weights of one per-parameter MLP.

    Every weight is ``TruncNormal(−2, 2) / sqrt(fan_in)`` (haiku's ``TruncatedNormal``, not
    rescaled for the truncation) where ``fan_in`` is the layer's *total* input width (so every
    first-layer group uses ``1/sqrt(sum(groups))``); biases are zero.

    Args:
      key: PRNG key.
      groups: first-layer group widths (:func:`feature_groups`).
      hidden_size: width of the hidden layers.
      hidden_layers: number of hidden layers.
      num_outputs: output width (3 in the reference; only the first 2 are used).

    Returns:
      ``{"w0__{i}": [groups[i], H], "w1": [H, H], …, "w{L}": [H, num_outputs], "b0": [H], …}``
      (with ``hidden_layers = 0`` the first layer maps directly to ``num_outputs``).

    Raises:
      ValueError: for an empty or non-positive ``groups`` or invalid sizes.
    """
    groups = tuple(int(w) for w in groups)
    if not groups or min(groups) < 1:
        raise ValueError(f"init_ff_params: groups must be a non-empty sequence of positive widths, got {groups}.")
    _check_sizes(hidden_size, hidden_layers, num_outputs)
    sizes = [sum(groups), *[int(hidden_size)] * int(hidden_layers), int(num_outputs)]
    names, shapes, stds = [], [], []
    for layer in range(len(sizes) - 1):
        fan_in, fan_out = sizes[layer], sizes[layer + 1]
        blocks = [(f"w0__{i}", width) for i, width in enumerate(groups)] if layer == 0 else [(f"w{layer}", fan_in)]
        for name, rows in blocks:
            names.append(name)
            shapes.append((rows, fan_out))
            stds.append(1.0 / np.sqrt(fan_in))
    weights = truncated_normal_blocks(key, shapes, stds)
    params = dict(zip(names, weights, strict=True))
    for layer in range(len(sizes) - 1):
        params[f"b{layer}"] = jnp.zeros((sizes[layer + 1],), jnp.float32)
    return params


def truncated_normal_blocks(
    key: jax.Array, shapes: Sequence[tuple[int, ...]], stds: Sequence[float]
) -> list[jax.Array]:
    """Float32 arrays ``std · TruncNormal(−2, 2)`` of the given shapes, from one draw.

    One draw split into blocks compiles once, where one draw per weight compiles (slowly on CPU)
    once per shape.
    """
    sizes = [int(np.prod(shape)) for shape in shapes]
    flat = jax.random.truncated_normal(key, -2.0, 2.0, (sum(sizes),), jnp.float32)
    offsets = np.cumsum([0, *sizes])
    return [
        flat[offsets[i] : offsets[i + 1]].reshape(shape) * np.float32(std)
        for i, (shape, std) in enumerate(zip(shapes, stds, strict=True))
    ]


def _num_layers(ff_params: dict) -> int:
    layers = 0
    while f"b{layers}" in ff_params:
        layers += 1
    return layers


def ff_layers(ff_params: dict, groups: Sequence[int]) -> list[tuple[jax.Array, jax.Array]]:
    """One MLP's weights as :mod:`.fused`'s ``layers``: ``[(w0 [C, H], b0), (w1, b1), …]``.

    The first layer is the ``w0__i`` row blocks concatenated in group order (``C = sum(groups)``,
    the channel order of :func:`hyper_features`); the other layers are passed through.

    Args:
      ff_params: one MLP's weights, as :func:`init_ff_params` returns them (for VeLO: the bank
        already reduced to this tensor's weights, no leading bank axis).
      groups: first-layer group widths (:func:`feature_groups`).

    Returns:
      The layers, ReLU between them and none after the last (``fused.normalized_mlp``'s convention).

    Raises:
      ValueError: if the weights do not match ``groups`` (or carry a leading bank axis).
    """
    groups = tuple(int(w) for w in groups)
    first = [ff_params.get(f"w0__{i}") for i in range(len(groups))]
    bad = [
        (i, None if w is None else tuple(w.shape))
        for i, w in enumerate(first)
        if w is None or w.ndim != 2 or w.shape[0] != groups[i]
    ]
    if bad or f"w0__{len(groups)}" in ff_params:
        raise ValueError(
            f"ff_layers: ff_params do not match groups {groups} (mismatched w0__i: {bad}); expected one "
            "[width, hidden] matrix per group, without a leading bank axis. Build them with init_ff_params."
        )
    layers = [(jnp.concatenate(first, axis=0), ff_params["b0"])]
    layers += [(ff_params[f"w{layer}"], ff_params[f"b{layer}"]) for layer in range(1, _num_layers(ff_params))]
    return layers


def apply_ff(ff_params: dict, inputs: Sequence[jax.Array], groups: Sequence[int]) -> list[jax.Array]:
    """Applies one per-parameter MLP elementwise to already-normalised channels.

    ``h⁰_j = Σ_i Σ_c w0__i[c, j]·x_{i,c} + b0_j`` over the groups ``i`` and their channels ``c``,
    then ``hˡ_j = Σ_i W_l[i, j]·relu(hˡ⁻¹_i) + b_l[j]``, evaluated by :func:`.fused.mlp_fused`
    (unit normalisers). The optimizers call :func:`.fused.normalized_mlp` on the un-normalised
    channels instead, which folds the normalisation into the weights; this is the same maths.

    Args:
      ff_params: one MLP's weights (see :func:`ff_layers`).
      inputs: the normalised channels (:func:`normalize_channels`), ``sum(groups)`` of them, each
        broadcastable to the parameter's shape.
      groups: first-layer group widths (:func:`feature_groups`).

    Returns:
      The ``num_outputs`` output channels (``[direction, magnitude, unused]`` by default), each
      broadcast to the common shape of ``inputs``.

    Raises:
      ValueError: if the number of inputs, the groups and the weights disagree.
    """
    groups = tuple(int(w) for w in groups)
    if len(inputs) != sum(groups):
        raise ValueError(
            f"apply_ff: expected {sum(groups)} input channels (sum of groups {groups}), got {len(inputs)}. "
            "Pass the channels of hyper_features after normalize_channels."
        )
    layers = ff_layers(ff_params, groups)
    return fused.mlp_fused(inputs, layers, jnp.ones((len(inputs),), jnp.float32))


def normalize_channels(channels: Sequence[jax.Array]) -> list[jax.Array]:
    """Each channel times its inverse RMS over the tensor: ``f / sqrt(1e-5 + mean(f²))``."""
    return [c * F.inverse_rms(c) for c in channels]


def param_step(
    direction: jax.Array,
    magnitude: jax.Array,
    param: jax.Array,
    *,
    exp_mult: float,
    step_mult: float,
    param_scale_mult: bool = True,
) -> jax.Array:
    """The step ``Δ = d · exp(exp_mult·s) · step_mult · RMS(p)`` (``p ← p − Δ``).

    Args:
      direction: MLP output ``d``.
      magnitude: MLP output ``s``.
      param: the parameter tensor (for ``RMS(p) = sqrt(mean(p²) + 1e-9)``).
      exp_mult: multiplier inside the exponential (0.001 in VeLO / Celo).
      step_mult: overall multiplier (0.001).
      param_scale_mult: multiply by ``RMS(p)`` (the reference's default) or not.

    Returns:
      ``Δ`` in the accumulator dtype, shaped like ``direction``.
    """
    step = direction * jnp.exp(exp_mult * magnitude) * step_mult
    if param_scale_mult:
        step = step * F.param_scale(param)
    return step
