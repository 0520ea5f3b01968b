"""The learned-optimizer contract and the one engine of the per-parameter learned optimizers.

:class:`LearnedOptimizer` is what meta-training, checkpoints and the registry rely on: a frozen
object with ``name``, ``config()``, ``init_meta_params(key)``, ``make(meta_params, *, num_steps)`` and
``frozen_keys()``; optionally ``meta_penalty(meta_params)`` (see below).

:class:`PerParameterLOpt` implements ``make`` once for every learned optimizer whose step is "per
tensor: update accumulators, build feature channels, run a small MLP on the normalised channels,
turn its outputs into the update" (``small_fc_lopt``, ``star``, ``mlp_lopt``, ``celo``, ``velo``).
A subclass declares only:

* its **features** — :meth:`~PerParameterLOpt.init_accumulators` (one tensor's accumulators) and
  :meth:`~PerParameterLOpt.features` (update them with the gradient, return the channels);
* its **network** — :meth:`~PerParameterLOpt.network` (the MLP's layers for tensor ``i`` at this
  step, step features folded into the first bias), from what :meth:`~PerParameterLOpt.prepare`
  derives from θ once per ``make`` and :meth:`~PerParameterLOpt.step_context` once per step
  (Celo's and VeLO's LSTMs live there, with their own state in :attr:`PerParameterState.context`);
* its **output rule** — :meth:`~PerParameterLOpt.output` (the update of one tensor from the MLP's
  outputs).

The engine owns the rest: the state (:class:`PerParameterState`), the walk over the leaves, the
``impl`` selection (:func:`.fused.resolve_impl`, with the class's :attr:`~PerParameterLOpt.auto_impl`
departures) and the three forms of :mod:`.fused` (``"single_pass"``'s stale norms included), the
cast of the update to the parameter dtype, and ``config()`` (the dataclass fields, tuples as lists).
"""

import dataclasses
import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from components.optimizers import fused

__all__ = [
    "AccumulatorDecays",
    "LearnedOptimizer",
    "PerParameterLOpt",
    "PerParameterState",
    "check_bool",
    "check_decays",
    "check_float",
    "check_int",
    "check_mlp_shapes",
    "check_num_steps",
    "dataclass_config",
    "exp_magnitude_step",
    "fold_step_features",
    "init_mlp",
]


@runtime_checkable
class LearnedOptimizer(Protocol):
    """What every learned optimizer provides (per-parameter ones through :class:`PerParameterLOpt`)."""

    name: ClassVar[str]

    def config(self) -> dict:
        """JSON-serialisable hyperparameters; ``type(lopt)(**lopt.config())`` rebuilds it."""

    def init_meta_params(self, key: jax.Array) -> Any:
        """Fresh meta-parameters θ (a pytree of float32 arrays)."""

    def make(self, meta_params: Any, *, num_steps: int) -> optax.GradientTransformationExtraArgs:
        """The inner optimizer for θ (which may be traced, batched or differentiated)."""

    def frozen_keys(self) -> tuple[str, ...]:
        """Top-level θ keys that get no meta-gradient (empty for most)."""


# An optional hook, not part of the protocol: ``meta_penalty(meta_params) -> scalar``, a term the
# meta-trainer adds to the meta-objective (STAR's weight decay on θ). Optimizers without one do not
# define it, so the meta-trainer adds nothing (not even a zero gradient).


# --------------------------------------------------------------------------- checks


def dataclass_config(lopt: Any) -> dict:
    """A frozen dataclass's fields as a JSON-serialisable dict (tuples as lists): its ``config()``."""
    out = {}
    for field in dataclasses.fields(lopt):
        value = getattr(lopt, field.name)
        out[field.name] = list(value) if isinstance(value, tuple) else value
    return out


def check_int(owner: str, field: str, value, minimum: int) -> int:
    """``value`` as an int ``>= minimum`` (``TypeError`` / ``ValueError`` naming ``owner.field``)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{owner}.{field} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{owner}.{field} must be >= {minimum}, got {value}.")
    return int(value)


def check_float(owner: str, field: str, value, *, nonnegative: bool = False) -> float:
    """``value`` as a finite float (and ``>= 0`` when ``nonnegative``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{owner}.{field} must be a float, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or (nonnegative and value < 0.0):
        kind = "a finite float >= 0" if nonnegative else "a finite float"
        raise ValueError(f"{owner}.{field} must be {kind}, got {value!r}.")
    return value


def check_bool(owner: str, field: str, value) -> bool:
    """``value`` as a bool (NumPy bools accepted)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{owner}.{field} must be a bool, got {value!r}.")
    return bool(value)


def check_decays(owner: str, field: str, values) -> tuple[float, ...]:
    """``values`` as a non-empty tuple of decays in ``[0, 1)``."""
    try:
        decays = tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{owner}.{field} must be a sequence of floats, e.g. (0.9, 0.99), got {values!r}.") from err
    if not decays or not all(0.0 <= d < 1.0 for d in decays):
        raise ValueError(f"{owner}.{field} must be a non-empty sequence of decays in [0, 1), got {values!r}.")
    return decays


def check_num_steps(owner: str, num_steps) -> None:
    """``make``'s ``num_steps``: required; a concrete int must be ``>= 1`` (a traced one is not checked)."""
    if num_steps is None:
        raise ValueError(f"{owner}.make needs num_steps, e.g. make(meta_params, num_steps=1000).")
    if isinstance(num_steps, int | np.integer) and not isinstance(num_steps, bool) and num_steps < 1:
        raise ValueError(f"{owner}.make: num_steps must be >= 1, got {num_steps}.")


# --------------------------------------------------------------------------- plain MLPs


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> dict:
    """``{"w0", "b0", …}`` for widths ``sizes``: ``w ~ TruncNormal(−2, 2)/sqrt(fan_in)``, zero biases.

    This is haiku's default ``Linear`` init (the reference's), one key per layer from ``key``.
    """
    keys = jax.random.split(key, len(sizes) - 1)
    nn = {}
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = jax.random.truncated_normal(keys[layer], -2.0, 2.0, (fan_in, fan_out), jnp.float32)
        nn[f"w{layer}"] = w / np.sqrt(fan_in).astype(np.float32)
        nn[f"b{layer}"] = jnp.zeros((fan_out,), jnp.float32)
    return nn


def check_mlp_shapes(owner: str, nn: Mapping, sizes: Sequence[int]) -> None:
    """Raises ``ValueError`` unless ``nn`` holds exactly the layers of :func:`init_mlp` for ``sizes``."""
    want = {}
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        want[f"w{layer}"] = (fan_in, fan_out)
        want[f"b{layer}"] = (fan_out,)
    got = {k: tuple(jnp.shape(v)) for k, v in nn.items()}
    if got != want:
        raise ValueError(
            f"{owner}.make: meta_params['nn'] has shapes {got}, expected {want} for "
            f"layer_sizes={tuple(sizes)}. Build them with this lopt's init_meta_params(key)."
        )


def fold_step_features(
    nn: Mapping, num_features: int, step_features: jax.Array, *, precision=None
) -> list[tuple[jax.Array, jax.Array]]:
    """``[(w0 [F, H], b0'), (w1, b1), …]`` for :func:`.fused.normalized_mlp`.

    The (global) step features are inputs ``F…`` of the first layer; their contribution is folded
    into its bias once per step, ``b0' = b0 + t @ w0[F:]`` (matmul at ``precision``).
    """
    w0 = nn["w0"]
    first_bias = nn["b0"] + jnp.matmul(step_features, w0[num_features:], precision=precision)
    return [(w0[:num_features], first_bias)] + [(nn[f"w{layer}"], nn[f"b{layer}"]) for layer in range(1, len(nn) // 2)]


def exp_magnitude_step(outputs: Sequence[jax.Array], exp_mult: float, step_mult: float) -> jax.Array:
    """learned_optimization's output rule ``Δp = −d · exp(exp_mult·s) · step_mult`` from ``(d, s)``."""
    direction, magnitude = outputs
    step = direction * jnp.exp(exp_mult * magnitude) * step_mult
    return -step


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccumulatorDecays:
    """The decay fields of the optimizers with momentum / RMS / Adafactor accumulators (keyword-only).

    small_fc_lopt and STAR learn offsets from these initial decays; Celo and VeLO keep them fixed.
    """

    initial_momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    initial_rms_decays: tuple[float, ...] = (0.999,)
    initial_adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)

    @property
    def decay_counts(self) -> tuple[int, int, int]:
        """Numbers of momentum, RMS and Adafactor decays."""
        return len(self.initial_momentum_decays), len(self.initial_rms_decays), len(self.initial_adafactor_decays)


# --------------------------------------------------------------------------- the engine


class PerParameterState(NamedTuple):
    """State of every per-parameter learned optimizer.

    Attributes:
      iteration: int32 step counter ``t`` (0 before the first update).
      accumulators: params-shaped tree; each leaf the tensor's accumulators, as the optimizer's
        :meth:`~PerParameterLOpt.init_accumulators` lays them out (e.g. ``momentum``, ``rms``,
        ``factored``).
      norms: ``impl="single_pass"`` only: params-shaped tree of float32 ``[num_features]`` inverse
        RMS of the previous step's feature channels (:func:`.fused.init_norms` before the first
        update, which does not use them); ``None`` for the other forms.
      context: the optimizer's per-run state outside the tensors (Celo / VeLO: run length, loss
        buffer, LSTM state); ``None`` for the others.
    """

    iteration: jax.Array
    accumulators: Any
    norms: Any = None
    context: Any = None


class PerParameterLOpt:
    """Base of the per-parameter learned optimizers (subclasses are frozen dataclasses).

    Subclasses set :attr:`name`, have an ``impl`` field (:data:`.fused.IMPLS`) and define
    :meth:`init_meta_params`, :meth:`prepare`, :meth:`init_accumulators`, :meth:`features`,
    :meth:`step_context`, :meth:`network` and :meth:`output`; :meth:`init_context` only when the step
    has per-run state (a loss buffer, an LSTM), :meth:`fresh_channels` (for :attr:`num_features`)
    unless they override that.
    """

    name: ClassVar[str]
    auto_impl: ClassVar[Mapping[str, str]] = {}
    """Backends where this optimizer's ``impl="auto"`` departs from :data:`.fused.AUTO_IMPL`."""

    # ------------------------------------------------------------------ contract

    def config(self) -> dict:
        """JSON-serialisable hyperparameters (:func:`dataclass_config`)."""
        return dataclass_config(self)

    def frozen_keys(self) -> tuple[str, ...]:
        """Top-level θ keys that get no meta-gradient: none unless the optimizer says otherwise."""
        return ()

    @property
    def resolved_impl(self) -> str:
        """``impl`` with ``"auto"`` resolved for JAX's backend (:func:`.fused.resolve_impl`)."""
        fused.check_impl(type(self).__name__, self.impl)
        return fused.resolve_impl(self.impl, overrides=self.auto_impl)

    @functools.cached_property
    def num_features(self) -> int:
        """Number of normalised per-parameter feature channels (traced on a 2-D tensor)."""
        return len(jax.eval_shape(self.fresh_channels, jax.ShapeDtypeStruct((3, 2), jnp.float32)))

    # ------------------------------------------------------------------ declarations

    def fresh_channels(self, param: jax.Array) -> list[jax.Array]:
        """The channels of ``param`` at a zero gradient and fresh accumulators (for counting)."""
        raise NotImplementedError(f"{type(self).__name__} must define fresh_channels or num_features.")

    def prepare(self, meta_params: Any, num_steps) -> Any:
        """Checks θ and derives what the step needs from it, once per ``make`` (the "hyper")."""
        raise NotImplementedError

    def init_accumulators(self, param: jax.Array) -> Any:
        """The accumulators of one tensor (a NamedTuple of arrays / tuples of arrays)."""
        raise NotImplementedError

    def init_context(self, hyper: Any, params: Any, num_steps) -> Any:
        """Per-run state outside the tensors (default: none)."""
        del hyper, params, num_steps

    def step_context(self, hyper: Any, state: PerParameterState, leaves: list, accumulators: list, extra_args: dict):
        """``(step, context)``: this step's shared inputs of :meth:`network` / :meth:`output` and the new context.

        Called once per update with the leaves of the params and of the accumulators (before this
        step's update) and the update's keyword extra args (``loss`` …).
        """
        raise NotImplementedError

    def features(self, hyper: Any, param: jax.Array, grad: jax.Array, acc: Any) -> tuple[jax.Array, Any, list]:
        """``(grad, acc, channels)``: the gradient as the output rule sees it, new accumulators, channels."""
        raise NotImplementedError

    def network(self, hyper: Any, step: Any, index: int) -> list[tuple[jax.Array, jax.Array]]:
        """The MLP ``[(w0 [C, H], b0), …]`` of tensor ``index`` (step features folded into ``b0``)."""
        raise NotImplementedError

    def output(self, hyper: Any, step: Any, index: int, param, grad, acc, outputs: list) -> jax.Array:
        """The update of tensor ``index`` from the MLP's ``outputs`` (cast to the parameter dtype by the engine)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the engine

    def make(self, meta_params: Any, *, num_steps) -> optax.GradientTransformationExtraArgs:
        """Builds the inner optimizer for meta-parameters θ (which may be traced, batched or differentiated).

        Args:
          meta_params: θ as returned by ``init_meta_params`` (possibly perturbed, or batched under
            ``jax.vmap`` with ``make`` called inside the vmap).
          num_steps: length ``T`` of the inner run (Python int or traced int32 scalar); used by the
            optimizers with loss or progress features, required of all by the common contract.

        Returns:
          An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` (a feature) and
          ``loss=`` where the optimizer reads the loss, and ignores any other keyword extra args.

        Raises:
          ValueError: if ``num_steps`` is missing or a non-positive int, or θ does not match this
            architecture.
        """
        check_num_steps(type(self).__name__, num_steps)
        hyper = self.prepare(meta_params, num_steps)
        return _transform(self, hyper, self.resolved_impl, num_steps)


def _transform(lopt: PerParameterLOpt, hyper: Any, impl: str, num_steps) -> optax.GradientTransformationExtraArgs:
    single_pass = impl == "single_pass"
    num_features = lopt.num_features

    def init_fn(params):
        return PerParameterState(
            iteration=jnp.zeros([], jnp.int32),
            accumulators=jax.tree.map(lopt.init_accumulators, params),
            norms=jax.tree.map(lambda _: fused.init_norms(num_features), params) if single_pass else None,
            context=lopt.init_context(hyper, params, num_steps),
        )

    def leaf_update(index, param, grad, acc, norms, step, first_step):
        grad, acc, channels = lopt.features(hyper, param, grad, acc)
        layers = lopt.network(hyper, step, index)
        outputs, norms = fused.normalized_mlp(impl, channels, layers, stale_norms=norms, first_step=first_step)
        update = lopt.output(hyper, step, index, param, grad, acc, outputs)
        return jnp.broadcast_to(update, param.shape).astype(param.dtype), acc, norms

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                f"{lopt.name} uses the parameters as a feature: call opt.update(grads, state, params, loss=loss)."
            )
        grads, treedef = jax.tree.flatten(updates)
        leaves = treedef.flatten_up_to(params)
        accumulators = treedef.flatten_up_to(state.accumulators)
        step, context = lopt.step_context(hyper, state, leaves, accumulators, extra_args)
        norms = fused.stale_norm_leaves(lopt.name, impl, state.norms, treedef)
        first_step = state.iteration == 0
        per_leaf = enumerate(zip(leaves, grads, accumulators, norms, strict=True))
        results = [leaf_update(i, *args, step, first_step) for i, args in per_leaf]
        new_updates, accumulators = (treedef.unflatten([r[i] for r in results]) for i in range(2))
        return new_updates, PerParameterState(
            iteration=state.iteration + jnp.ones([], jnp.int32),
            accumulators=accumulators,
            norms=treedef.unflatten([r[2] for r in results]) if single_pass else None,
            context=context,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
