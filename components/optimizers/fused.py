"""One engine for the per-parameter MLPs of the learned optimizers: reference, fused, single-pass.

Every per-parameter learned optimizer here (``mlp_lopt``, ``small_fc_lopt``, STAR, VeLO / Celo's
per-parameter MLP) ends the same way: a list of feature *channels* (arrays broadcastable to the
parameter's shape), each normalised by its inverse RMS over the tensor
``n_i = 1/sqrt(1e-5 + mean(f_i²))``, fed to an MLP with ReLU hidden layers whose outputs give the
step. This module evaluates that MLP in three ways that compute the same function:

``"reference"``
    The textbook form of the papers' code (learned_optimization stacks the features): the
    channels are broadcast and stacked into a ``[*shape, C]`` tensor, normalised, and pushed through
    ``x @ W_l + b_l`` (float32 ``HIGHEST`` precision). XLA materialises the ``[*shape, C]`` input
    and every ``[*shape, H]`` hidden tensor: ~C·4 + 2·H·4 bytes of extra traffic per parameter.
    Kept as the ground truth the other forms are tested against.
``"fused"``
    The same function written so that XLA fuses it into elementwise code (DESIGN.md, "Performance
    model"): the normalisers are folded into the first layer (``w'_ij = n_i·w_ij``, a ``[C, H]``
    scalar op), every layer is a sum of channels scaled by scalars, with the hidden units on a
    leading axis (``[H, *shape]``; the tensor's axes stay minor), and channels that are constant
    along some axes (Adafactor's row / column statistics, per-tensor scalars) are mixed in their own
    small shape first and broadcast once per hidden unit. No ``[*shape, C]`` or ``[*shape, H]``
    tensor is written. It still needs two passes over the parameters: the norms (one reduction
    per full-size channel), then the MLP.
``"single_pass"``
    ``"fused"`` with the per-tensor norms one step stale: step ``t`` normalises its channels with
    the norms of step ``t − 1``'s channels (stored in the optimizer state) and computes its own
    channels' norms for step ``t + 1`` from the same values it feeds the MLP. The MLP then no longer
    waits for a reduction, so a compiler that fuses reductions with elementwise outputs (XLA on
    GPU: multi-output fusion) reads each input once. The first step has no previous norms and uses
    an estimate on a strided subsample of its own channels (:func:`subsample_inverse_rms`; exact
    for channels of at most 4096 elements). This changes the optimizer (slightly): the norms are
    second moments of slowly moving accumulators, so they drift by O(1−β) per step (early in a run,
    while the accumulators warm up, single steps differ by up to tens of percent); the tests train
    with both forms and
    compare the outcomes. On CPU, XLA emits every reduction as its own loop either way, so this
    form is not faster there (see ``benchmarks/results/optimizer_step_cpu.txt``).

:func:`resolve_impl` maps ``"auto"`` to the implementation measured fastest on the current backend
(:data:`AUTO_IMPL`, or an optimizer's own departures); every learned optimizer takes an ``impl`` field (params files:
``meta_train.lopt_hyperparams: {impl: ...}``) to override it.

Caveat of ``"single_pass"``: when the features' scale jumps between two steps (a huge first step of
an aggressive optimizer), the stale norms feed the MLP inputs far from unit scale, and a network
whose outputs enter an ``exp`` can overflow where the exact forms stay finite (seen with STAR at
``step_mult = 0.01``). The MLP is evaluated in float32 in every form.

Pallas: a hand-written GPU kernel is not part of this module. It could not be measured against
XLA on a GPU in the session that built this (no device was lent), and the issue asks for one only
where it beats XLA.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from components.optimizers import features as F

__all__ = [
    "AUTO_IMPL",
    "IMPLS",
    "apply_mlp",
    "channel_inverse_rms",
    "check_impl",
    "init_norms",
    "mlp_fused",
    "mlp_reference",
    "normalized_mlp",
    "resolve_impl",
    "stale_norm_leaves",
    "subsample_inverse_rms",
]

SUBSAMPLE = 4096
"""Elements per channel (at most) behind the first step's norm estimate in ``"single_pass"``."""

IMPLS: tuple[str, ...] = ("auto", "reference", "fused", "single_pass")
"""Accepted values of a learned optimizer's ``impl`` field."""

AUTO_IMPL: dict[str, str] = {"cpu": "fused", "gpu": "fused", "cuda": "fused", "rocm": "fused", "tpu": "fused"}
"""What ``"auto"`` means per JAX backend.

``"fused"`` everywhere: it is exact (equal to the reference up to float rounding) and on CPU it
is 4-5x faster than ``"reference"`` for the 4-wide MLPs (small_fc_lopt, STAR, Celo, VeLO;
``benchmarks/optimizer_step.py --impls``). An optimizer may depart from it: ``mlp_lopt`` keeps
``"reference"`` on CPU because XLA:CPU cannot compile the elementwise loop of its 32-wide network
(see :mod:`.mlp_lopt`). ``"single_pass"`` changes the optimizer's numerics, so it is never chosen
silently; opt in with ``impl: single_pass``.
"""

_HIGHEST = jax.lax.Precision.HIGHEST


def check_impl(owner: str, impl: str) -> str:
    """Validates an ``impl`` field value; returns it."""
    if impl not in IMPLS:
        raise ValueError(
            f"{owner}.impl must be one of {list(IMPLS)}, got {impl!r}. 'auto' picks the fastest exact form for "
            "the backend; 'single_pass' uses one-step-stale per-tensor norms."
        )
    return impl


def resolve_impl(impl: str, backend: str | None = None, overrides: Mapping[str, str] | None = None) -> str:
    """``impl`` with ``"auto"`` replaced for ``backend`` (default: JAX's).

    ``"auto"`` means ``overrides[backend]`` where an optimizer departs from the default for that
    backend (``PerParameterLOpt.auto_impl``; e.g. ``mlp_lopt`` on CPU), else :data:`AUTO_IMPL`.
    """
    check_impl("resolve_impl", impl)
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    if overrides and backend in overrides:
        return overrides[backend]
    return AUTO_IMPL.get(backend, "fused")


# --------------------------------------------------------------------------- norms


def channel_inverse_rms(channels: Sequence[jax.Array], eps: float = 1e-5) -> jax.Array:
    """``[C]`` inverse RMS ``1/sqrt(eps + mean(f_i²))`` of every channel over the tensor.

    A channel may be passed un-broadcast (size-1 axes where it is constant): its mean of squares
    over the broadcast tensor is the same, so the reduction runs over the small array.
    """
    return jnp.stack([F.inverse_rms(c, eps) for c in channels]).astype(jnp.float32)


def subsample_inverse_rms(channels: Sequence[jax.Array], max_elements: int = SUBSAMPLE) -> jax.Array:
    """``[C]`` inverse RMS of every channel estimated on a strided subsample of the tensor.

    A channel of more than ``max_elements`` elements (in its own, un-broadcast shape) is strided
    evenly along every axis, so the subsample spans all rows and columns; smaller ones (and row /
    column statistics of moderate tensors) are used whole, so the estimate is exact for them.
    XLA evaluates the channels only at the sampled elements, so this costs ``O(max_elements)``, not a
    pass over the parameters. Used for the first step of ``"single_pass"`` only.
    """
    out = []
    for c in channels:
        shape = tuple(jnp.shape(c))
        size = int(np.prod(shape)) if shape else 1
        if size > max_elements:
            per_axis = max_elements ** (1.0 / len(shape))
            c = c[tuple(slice(None, None, max(1, int(np.ceil(n / per_axis)))) for n in shape)]
        out.append(F.inverse_rms(c))
    return jnp.stack(out).astype(jnp.float32)


def init_norms(num_channels: int) -> jax.Array:
    """Initial stale norms of ``"single_pass"`` (ones; the first step never uses them)."""
    return jnp.ones((num_channels,), jnp.float32)


def stale_norm_leaves(owner: str, impl: str, norms: Any, treedef: Any) -> list:
    """The per-leaf ``stale_norms`` to pass to :func:`.fused.normalized_mlp`, from an optimizer state.

    Args:
      owner: the optimizer's name, for the error message.
      impl: the resolved ``impl``; only ``"single_pass"`` reads the norms.
      norms: the state's ``norms`` field: a params-shaped tree of ``[C]`` arrays, or ``None``.
      treedef: the parameters' tree structure.

    Returns:
      One ``[C]`` array per leaf for ``"single_pass"``, else one ``None`` per leaf.

    Raises:
      ValueError: for ``"single_pass"`` with ``norms=None`` (a state built with another ``impl``).
    """
    if impl != "single_pass":
        return [None] * treedef.num_leaves
    if norms is None:
        raise ValueError(
            f"{owner} with impl='single_pass' needs the norms in its state, but state.norms is None: "
            "build the state with opt.init of an optimizer made with the same impl."
        )
    return treedef.flatten_up_to(norms)


# --------------------------------------------------------------------------- forms


def _check_layers(channels, layers, where):
    if not layers:
        raise ValueError(f"{where}: the MLP needs at least one layer [(w0, b0), ...], got none.")
    w0 = layers[0][0]
    if w0.ndim != 2 or w0.shape[0] != len(channels):
        raise ValueError(
            f"{where}: the first layer's weights must be [num_channels={len(channels)}, fan_out], got "
            f"{tuple(w0.shape)}. Fold extra inputs (step features) into the first bias before calling."
        )


def mlp_reference(
    channels: Sequence[jax.Array],
    layers: Sequence[tuple[jax.Array, jax.Array]],
    inv_rms: jax.Array | None = None,
) -> list[jax.Array]:
    """The reference form: stack, normalise, matmul (see the module docstring).

    Args:
      channels: C arrays broadcastable to one common shape.
      layers: ``[(w0 [C, H], b0 [H]), (w1, b1), …]``; ReLU between layers, none after the last.
      inv_rms: ``[C]`` normalisers; ``None`` computes them over the stacked tensor.

    Returns:
      The MLP's outputs, one array of the common shape per output unit.
    """
    _check_layers(channels, layers, "mlp_reference")
    shape = jnp.broadcast_shapes(*(jnp.shape(c) for c in channels))
    x = jnp.stack([jnp.broadcast_to(c, shape).astype(jnp.float32) for c in channels], axis=-1)
    if inv_rms is None:
        axes = tuple(range(len(shape)))
        x = x * jax.lax.rsqrt(1e-5 + jnp.mean(jnp.square(x), axis=axes, keepdims=True))
    else:
        x = x * inv_rms
    for layer, (w, b) in enumerate(layers):
        if layer:
            x = jax.nn.relu(x)
        x = jnp.matmul(x, w, precision=_HIGHEST) + b
    return [x[..., j] for j in range(x.shape[-1])]


def mlp_fused(
    channels: Sequence[jax.Array],
    layers: Sequence[tuple[jax.Array, jax.Array]],
    inv_rms: jax.Array | None = None,
) -> list[jax.Array]:
    """The fused form: normalisers folded into the weights, elementwise sums, small groups first.

    Same arguments and result as :func:`mlp_reference`.
    """
    _check_layers(channels, layers, "mlp_fused")
    shape = tuple(jnp.broadcast_shapes(*(jnp.shape(c) for c in channels)))
    if inv_rms is None:
        inv_rms = channel_inverse_rms(channels)
    w0, b0 = layers[0]
    w0 = w0.astype(jnp.float32) * inv_rms[:, None]  # n_i·w_ij: [C, H] scalars, no per-element n_i
    fan_out = w0.shape[1]

    # Group the channels by their own (un-broadcast) shape: the full-size ones are mixed per
    # element, the others (row / column statistics, scalars) in their small shape, broadcast once.
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(channels):
        own = (1,) * (len(shape) - jnp.ndim(c)) + tuple(jnp.shape(c))
        groups.setdefault(own, []).append(i)
    hidden = [b0[j] for j in range(fan_out)]
    small = []
    for own, idx in groups.items():
        xs = [jnp.reshape(channels[i], own).astype(jnp.float32) for i in idx]
        parts = []
        for j in range(fan_out):
            part = w0[idx[0], j] * xs[0]
            for i, x in zip(idx[1:], xs[1:], strict=True):
                part = part + w0[i, j] * x
            parts.append(part)
        if own == shape:
            hidden = [h + part for h, part in zip(hidden, parts, strict=True)]
        else:
            small.append(parts)
    if small:
        # The barrier keeps XLA from fusing the small groups' sums back into the per-element loop,
        # where they would be recomputed for every element instead of once per row / column.
        small = jax.lax.optimization_barrier(small)
        for parts in small:
            hidden = [h + part for h, part in zip(hidden, parts, strict=True)]
    # Hidden units are separate arrays (not a leading axis): slicing a stacked [H, *shape] array
    # makes XLA write it out, a list keeps every layer inside one elementwise loop.
    for w, b in layers[1:]:
        active = [jax.nn.relu(h) for h in hidden]
        hidden = []
        for j in range(w.shape[1]):
            acc = b[j] + w[0, j] * active[0]
            for i in range(1, w.shape[0]):
                acc = acc + w[i, j] * active[i]
            hidden.append(acc)
    return [jnp.broadcast_to(h, shape) for h in hidden]


def apply_mlp(
    impl: str,
    channels: Sequence[jax.Array],
    layers: Sequence[tuple[jax.Array, jax.Array]],
    inv_rms: jax.Array | None = None,
) -> list[jax.Array]:
    """Dispatches to :func:`mlp_reference` (``"reference"``) or :func:`mlp_fused` (the others).

    ``impl`` must be resolved (not ``"auto"``); ``"single_pass"`` differs from ``"fused"`` only in
    which ``inv_rms`` the caller passes.
    """
    if impl == "reference":
        return mlp_reference(channels, layers, inv_rms)
    if impl in ("fused", "single_pass"):
        return mlp_fused(channels, layers, inv_rms)
    raise ValueError(f"apply_mlp: impl must be resolved to one of reference / fused / single_pass, got {impl!r}.")


def normalized_mlp(
    impl: str,
    channels: Sequence[jax.Array],
    layers: Sequence[tuple[jax.Array, jax.Array]],
    *,
    stale_norms: jax.Array | None = None,
    first_step: jax.Array | bool = False,
) -> tuple[list[jax.Array], jax.Array | None]:
    """The per-parameter MLP on normalised channels, in the form ``impl`` names.

    Args:
      impl: ``"reference"``, ``"fused"`` or ``"single_pass"`` (resolved, see :func:`resolve_impl`).
      channels: the un-normalised feature channels of one tensor.
      layers: ``[(w0 [C, H], b0), …]`` (step features already folded into ``b0``).
      stale_norms: ``"single_pass"`` only: the ``[C]`` norms of the previous step's channels.
      first_step: ``"single_pass"`` only: true at the first update, when there are no previous
        norms; the norms are then estimated on a subsample of this step's channels
        (:func:`subsample_inverse_rms`; exact for tensors of at most :data:`SUBSAMPLE` elements).

    Returns:
      ``(outputs, next_norms)``: the MLP's outputs (each of the tensor's shape) and, for
      ``"single_pass"``, this step's exact channel norms for the next step (else ``None``).
    """
    if impl == "reference":
        return mlp_reference(channels, layers), None
    if impl == "fused":
        return mlp_fused(channels, layers), None
    if impl == "single_pass":
        if stale_norms is None:
            raise ValueError("normalized_mlp: impl 'single_pass' needs stale_norms from the optimizer state.")
        used = jnp.where(first_step, subsample_inverse_rms(channels), stale_norms)
        return mlp_fused(channels, layers, used), channel_inverse_rms(channels)
    raise ValueError(f"normalized_mlp: impl must be resolved to one of reference / fused / single_pass, got {impl!r}.")
