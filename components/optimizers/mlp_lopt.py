"""``mlp_lopt``: the per-parameter MLP learned optimizer LOLv2 (Metz et al. 2019).

Re-implementation of learned_optimization's ``MLPLOpt`` (``learned_optimizers/mlp_lopt.py``; the
model of Metz et al. 2019, "Understanding and correcting pathologies in the training of learned
optimizers", ICML 2019, arXiv 1810.10180) as an optax transformation. See
``research/algorithms.md`` §2.3.

The maths, for one parameter tensor ``p`` with gradient ``g`` at step ``t`` (counted from 0):

1. Momentum accumulators, updated with ``g`` *before* the features are built, for the fixed
   (not meta-learned) decays ``β ∈ {0.1, 0.5, 0.9, 0.99, 0.999, 0.9999}``:
   ``m_k ← β_k·m_k + (1−β_k)·g`` (no bias correction, zero initial state).
2. 8 feature channels ``g, p, m_1, …, m_6``, each normalised by its own second moment over the
   tensor: ``f ← f / sqrt(1e-5 + mean(f²))``.
3. 11 un-normalised step features ``tanh(t/τ − 1)``, τ ∈ {1, 3, …, 1e5}: 19 inputs in all.
4. An MLP 19 → 32 → 32 → 2 (ReLU on the hidden layers, none on the output) gives a direction
   ``d`` and a magnitude ``s`` per parameter; the update is
   ``Δp = −d · exp(exp_mult·s) · step_mult`` with ``exp_mult = step_mult = 0.001``.

With the defaults the meta-parameters are the 1762 MLP weights
(19·32 + 32 + 32·32 + 32 + 32·2 + 2); the decays are fixed.

Evaluation: the step features are the same for every element of every tensor, so their
first-layer contribution ``t·w0[8:]`` is folded into the first bias instead of being tiled to
``[..., 11]`` (the same function as the reference's concatenated input). The 8 un-normalised
channels and the layers then go to :func:`.fused.normalized_mlp`, in the form named by the ``impl``
field (see :mod:`.fused`):

* ``"reference"`` stacks the normalised channels on a trailing axis and multiplies with
  ``Precision.HIGHEST`` matmuls (float32 results do not depend on the accelerator's default matmul
  precision). It writes ``[*shape, 8]`` and ``[*shape, 32]`` tensors.
* ``"fused"`` (exact) folds the normalisers into ``w0`` and writes every layer as elementwise sums
  with the hidden units as separate arrays: 19·32 + 32·32 + 32·2 scalar products per element in
  one loop, no per-parameter hidden tensor.
* ``"single_pass"`` is ``"fused"`` with the per-tensor norms of the previous step's channels (kept
  in :attr:`MLPLOptState.norms`; the first step estimates them on a subsample): a slightly
  different optimizer.

``"auto"`` means ``"reference"`` on CPU (:data:`AUTO_IMPL`), unlike :data:`.fused.AUTO_IMPL`:
with jax/jaxlib 0.10.2, XLA:CPU cannot compile the fused loop of a 32-wide (or ≥ 24-wide)
two-hidden-layer MLP over tensors of realistic size — LLVM's code generation at the default backend
optimisation level grows past 20 GB of memory (measured; 16-wide compiles in ~4 s, a single 32-wide
hidden layer in ~1 s; a [5, 3] tensor compiles at any width). With
``--xla_backend_optimization_level=1`` it does compile (20–35 s for a 4-tensor model) and runs at
1e5 parameters about as fast as the reference (17 vs 20 ms per step), at 1e6 in 140–165 ms against
the reference's 165–450 ms (which writes ``[1e6, 32]`` hidden tensors and slows down with the load
of a shared 2-core machine). Until the fused form compiles at the default level, the reference is
the only usable form on CPU. On other backends ``"auto"`` follows :data:`.fused.AUTO_IMPL`. Setting
``impl`` to ``"fused"`` / ``"single_pass"`` explicitly with ``hidden_size > 16`` on CPU warns at
:meth:`MLPLOpt.make`.

Choices where the reference was unclear or that we made differently:

* Weight init follows the reference's ``hk.nets.MLP`` (``hk.Linear`` defaults): ``w`` drawn as
  ``TruncNormal(−2, 2) / sqrt(fan_in)`` (haiku's ``TruncatedNormal`` does not rescale for the
  truncation, so the actual std is ≈ 0.88/sqrt(fan_in)), biases zero. Random draws differ from the
  reference (different key splitting). The reference's ``init`` hard-codes 19 inputs; here the
  input width is derived from the features, so other ``decays`` give a consistent network.
* Parameter layout ``{"nn": {"w0", "b0", "w1", …}}`` with ``w{l}`` of shape ``[fan_in, fan_out]``,
  as :class:`~.small_fc_lopt.SmallFcLOpt`; the reference's haiku names map one to one
  (``mlp/~/linear_{l}/w`` → ``nn/w{l}``, ``…/b`` → ``nn/b{l}``).
* 0-D parameters: the reference reshapes them to ``[1]``; here they are used as they are (each
  channel is normalised over its single element, the same maths).
* Momentum is kept in at least float32 (the reference uses the parameter dtype) and the update is
  cast back to the parameter dtype, so the state dtypes never change between steps.
* ``num_steps`` (required by the common contract) and the ``loss`` extra argument (required by the
  reference's ``update`` signature) are accepted and unused: this optimizer has neither horizon nor
  loss features. The reference's summary logging is not reproduced.

Example:
  >>> import jax, jax.numpy as jnp
  >>> lopt = MLPLOpt()
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
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from components.optimizers import features as F
from components.optimizers import fused

__all__ = ["AUTO_IMPL", "MLPLOpt", "MLPLOptState", "mlp_lopt_features", "resolve_impl"]

_HIGHEST = jax.lax.Precision.HIGHEST

AUTO_IMPL: dict[str, str] = {"cpu": "reference"}
"""Backends where ``MLPLOpt(impl="auto")`` departs from :data:`.fused.AUTO_IMPL` (module docstring: why)."""

_CPU_FUSED_MAX_WIDTH = 16  # widest hidden layers measured to compile in the fused form on XLA:CPU


def resolve_impl(impl: str, backend: str | None = None) -> str:
    """``impl`` with ``"auto"`` replaced by this optimizer's choice for ``backend`` (default: JAX's).

    :data:`AUTO_IMPL` where it names the backend, else :func:`.fused.resolve_impl`.
    """
    fused.check_impl("MLPLOpt", impl)
    backend = backend or jax.default_backend()
    if impl == "auto" and backend in AUTO_IMPL:
        return AUTO_IMPL[backend]
    return fused.resolve_impl(impl, backend)


def mlp_lopt_features(param: jax.Array, grad: jax.Array, momentum: Sequence[jax.Array]) -> list[jax.Array]:
    """The un-normalised feature channels of one tensor, in the reference's order ``g, p, m_1…m_k``.

    Args:
      param: the parameter tensor.
      grad: its gradient.
      momentum: the updated momentum accumulators, one per decay.

    Returns:
      A list of arrays shaped like ``param`` (in the accumulator dtype); its length (8 with the
      default decays) is the number of normalised inputs of the MLP.
    """
    dtype = F.accumulator_dtype(param.dtype)
    return [grad.astype(dtype), param.astype(dtype), *momentum]


class MLPLOptState(NamedTuple):
    """State of an ``mlp_lopt`` transformation.

    Attributes:
      iteration: int32 step counter ``t`` (0 before the first update).
      momentum: params-shaped tree; each leaf is a tuple of momentum accumulators, one per decay.
      norms: ``impl="single_pass"`` only: params-shaped tree of float32 ``[num_features]`` inverse
        RMS of the previous step's feature channels (:func:`.fused.init_norms` before the first
        update, when they are not used); ``None`` for the other forms.
    """

    iteration: jax.Array
    momentum: Any
    norms: Any = None


def _check_int(owner: str, field: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{owner}.{field} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{owner}.{field} must be >= {minimum}, got {value}.")
    return int(value)


def _check_float(owner: str, field: str, value, *, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{owner}.{field} must be a float, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or (nonnegative and value < 0.0):
        kind = "a finite float >= 0" if nonnegative else "a finite float"
        raise ValueError(f"{owner}.{field} must be {kind}, got {value!r}.")
    return value


def _check_decays(owner: str, field: str, values) -> tuple[float, ...]:
    try:
        decays = tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{owner}.{field} must be a sequence of floats, e.g. (0.9, 0.99), got {values!r}.") from err
    if not decays or not all(0.0 <= d < 1.0 for d in decays):
        raise ValueError(f"{owner}.{field} must be a non-empty sequence of decays in [0, 1), got {values!r}.")
    return decays


@dataclasses.dataclass(frozen=True)
class MLPLOpt:
    """Per-parameter MLP learned optimizer LOLv2 (learned_optimization's ``MLPLOpt``).

    See the module docstring for the update's maths and the reference.

    Attributes:
      hidden_size: width of the hidden layers (32).
      hidden_layers: number of hidden layers (2).
      exp_mult: multiplier of the magnitude output inside the exponential (0.001).
      step_mult: overall step multiplier (0.001).
      decays: the fixed momentum decays (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999).
      impl: how the per-parameter MLP is evaluated, one of :data:`.fused.IMPLS`: ``"auto"``
        (default: :func:`resolve_impl`, i.e. ``"reference"`` on CPU, else :data:`.fused.AUTO_IMPL`),
        ``"reference"`` (stacked features, matmuls), ``"fused"`` (elementwise, exact) or
        ``"single_pass"`` (fused with one-step-stale per-tensor norms: a slightly different
        optimizer). See the module docstring and :mod:`.fused`.
    """

    hidden_size: int = 32
    hidden_layers: int = 2
    exp_mult: float = 0.001
    step_mult: float = 0.001
    decays: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
    impl: str = "auto"

    name: ClassVar[str] = "mlp_lopt"

    def __post_init__(self):
        object.__setattr__(self, "hidden_size", _check_int("MLPLOpt", "hidden_size", self.hidden_size, 1))
        object.__setattr__(self, "hidden_layers", _check_int("MLPLOpt", "hidden_layers", self.hidden_layers, 0))
        object.__setattr__(self, "exp_mult", _check_float("MLPLOpt", "exp_mult", self.exp_mult))
        object.__setattr__(self, "step_mult", _check_float("MLPLOpt", "step_mult", self.step_mult))
        object.__setattr__(self, "decays", _check_decays("MLPLOpt", "decays", self.decays))
        fused.check_impl("MLPLOpt", self.impl)

    # ------------------------------------------------------------------ sizes

    @functools.cached_property
    def num_features(self) -> int:
        """Number of normalised per-parameter feature channels (8 by default).

        Counted by tracing :func:`mlp_lopt_features` abstractly on a 2-D tensor.
        """
        param = jax.ShapeDtypeStruct((3, 2), jnp.float32)
        return len(jax.eval_shape(self._features_of_fresh_state, param))

    @property
    def num_inputs(self) -> int:
        """MLP input width: feature channels plus the step-embedding features (19 by default)."""
        return self.num_features + len(F.TANH_TIMESCALES)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Widths from input to output, e.g. ``(19, 32, 32, 2)``."""
        return (self.num_inputs, *[self.hidden_size] * self.hidden_layers, 2)

    def _features_of_fresh_state(self, param: jax.Array) -> list[jax.Array]:
        momentum = F.init_momentum(param, len(self.decays))
        return mlp_lopt_features(param, jnp.zeros_like(param), momentum)

    # ------------------------------------------------------------------ contract

    def config(self) -> dict:
        """JSON-serialisable hyperparameters; ``MLPLOpt(**lopt.config())`` rebuilds it."""
        return {
            "hidden_size": self.hidden_size,
            "hidden_layers": self.hidden_layers,
            "exp_mult": self.exp_mult,
            "step_mult": self.step_mult,
            "decays": list(self.decays),
            "impl": self.impl,
        }

    def init_meta_params(self, key: jax.Array) -> dict:
        """Initial meta-parameters θ.

        Returns:
          ``{"nn": {"w0", "b0", …}}``; ``w{l}`` has shape ``[fan_in, fan_out]`` and is drawn as
          ``TruncNormal(−2, 2) / sqrt(fan_in)`` (haiku's default ``Linear`` init), biases are zero.
        """
        sizes = self.layer_sizes
        keys = jax.random.split(key, len(sizes) - 1)
        nn = {}
        for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            w = jax.random.truncated_normal(keys[layer], -2.0, 2.0, (fan_in, fan_out), jnp.float32)
            nn[f"w{layer}"] = w / np.sqrt(fan_in).astype(np.float32)
            nn[f"b{layer}"] = jnp.zeros((fan_out,), jnp.float32)
        return {"nn": nn}

    def _check_meta_params(self, meta_params: Any) -> None:
        nn = meta_params.get("nn") if isinstance(meta_params, Mapping) else None
        if not isinstance(nn, Mapping):
            raise ValueError(
                "MLPLOpt.make: meta_params must be a dict with an 'nn' entry; build them with "
                f"lopt.init_meta_params(key) (or load a checkpoint), got {type(meta_params).__name__}."
            )
        want = {}
        for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(self.layer_sizes)):
            want[f"w{layer}"] = (fan_in, fan_out)
            want[f"b{layer}"] = (fan_out,)
        got = {k: tuple(jnp.shape(v)) for k, v in nn.items()}
        if got != want:
            raise ValueError(
                f"MLPLOpt.make: meta_params['nn'] has shapes {got}, expected {want} for "
                f"layer_sizes={self.layer_sizes}. Build them with this lopt's init_meta_params(key)."
            )

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
          ValueError: if ``num_steps`` is missing or a non-positive integer, or ``meta_params`` do
            not match this architecture.
        """
        if num_steps is None:
            raise ValueError("MLPLOpt.make needs num_steps, e.g. make(meta_params, num_steps=1000).")
        if isinstance(num_steps, int | np.integer) and num_steps < 1:
            raise ValueError(f"MLPLOpt.make: num_steps must be >= 1, got {num_steps}.")
        self._check_meta_params(meta_params)

        nn = meta_params["nn"]
        impl = resolve_impl(self.impl)
        if impl != "reference" and self.hidden_size > _CPU_FUSED_MAX_WIDTH and jax.default_backend() == "cpu":
            warnings.warn(
                f"MLPLOpt(impl={self.impl!r}, hidden_size={self.hidden_size}): XLA:CPU may need tens of GB and "
                "minutes to compile the fused form of an MLP this wide (measured with jax 0.10.2: 24- and 32-wide "
                "layers ran out of memory); use impl='reference' or 'auto' on CPU.",
                stacklevel=2,
            )
        single_pass = impl == "single_pass"
        decays = jnp.asarray(self.decays, jnp.float32)
        num_decays = len(self.decays)
        num_features = self.num_features
        num_layers = self.hidden_layers + 1
        exp_mult, step_mult = self.exp_mult, self.step_mult
        later_layers = [(nn[f"w{layer}"], nn[f"b{layer}"]) for layer in range(1, num_layers)]

        def init_fn(params):
            return MLPLOptState(
                iteration=jnp.zeros([], jnp.int32),
                momentum=jax.tree.map(lambda p: F.init_momentum(p, num_decays), params),
                norms=jax.tree.map(lambda _: fused.init_norms(num_features), params) if single_pass else None,
            )

        def leaf_update(param, grad, momentum, norms, first_bias, first_step):
            momentum = F.update_momentum(momentum, grad, decays)
            feats = mlp_lopt_features(param, grad, momentum)
            layers = [(nn["w0"][:num_features], first_bias), *later_layers]
            (direction, magnitude), next_norms = fused.normalized_mlp(
                impl, feats, layers, stale_norms=norms, first_step=first_step
            )
            step = direction * jnp.exp(exp_mult * magnitude) * step_mult
            return (-step).astype(param.dtype), momentum, next_norms

        def update_fn(updates, state, params=None, **extra_args):
            del extra_args  # loss / loss_fn are accepted for the common contract, not used
            if params is None:
                raise ValueError(
                    "mlp_lopt uses the parameters as a feature: call opt.update(grads, state, params, loss=loss)."
                )
            step_features = F.tanh_step_embedding(state.iteration)
            # the step features are global: fold their first-layer contribution into the bias
            first_bias = nn["b0"] + jnp.matmul(step_features, nn["w0"][num_features:], precision=_HIGHEST)
            grads, treedef = jax.tree.flatten(updates)
            norm_leaves = fused.stale_norm_leaves("mlp_lopt", impl, state.norms, treedef)
            first_step = state.iteration == 0
            results = [
                leaf_update(p, g, m, n, first_bias, first_step)
                for p, g, m, n in zip(
                    treedef.flatten_up_to(params),
                    grads,
                    treedef.flatten_up_to(state.momentum),
                    norm_leaves,
                    strict=True,
                )
            ]
            new_updates = treedef.unflatten([r[0] for r in results])
            momentum = treedef.unflatten([r[1] for r in results])
            norms = treedef.unflatten([r[2] for r in results]) if single_pass else None
            return new_updates, MLPLOptState(
                iteration=state.iteration + jnp.ones([], jnp.int32), momentum=momentum, norms=norms
            )

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
