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
  in the state's ``norms``; the first step estimates them on a subsample): a slightly
  different optimizer.

``"auto"`` means ``"reference"`` on CPU (:attr:`MLPLOpt.auto_impl`), unlike :data:`.fused.AUTO_IMPL`:
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

Example (an untrained one, from fresh meta-params; ``create("mlp_lopt", num_steps=100)`` is the same):
  >>> import jax.numpy as jnp
  >>> lopt = MLPLOpt(hidden_size=8)
  >>> opt = lopt.make(lopt.init_meta_params(jax.random.key(0)), num_steps=100)
  >>> w = jnp.ones(4)
  >>> opt.update(w, opt.init(w), w)[0].shape
  (4,)
"""

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from components.optimizers import features as F
from components.optimizers import per_parameter as P

__all__ = ["MLPLOpt", "MomentumAccumulators", "mlp_lopt_features"]

_CPU_FUSED_MAX_WIDTH = 16  # widest hidden layers measured to compile in the fused form on XLA:CPU


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


class MomentumAccumulators(NamedTuple):
    """Accumulators of one tensor: ``momentum``, a tuple with one accumulator per decay."""

    momentum: tuple


@dataclasses.dataclass(frozen=True)
class MLPLOpt(P.PerParameterLOpt):
    """Per-parameter MLP learned optimizer LOLv2 (learned_optimization's ``MLPLOpt``); maths in the module docstring.

    Attributes:
      hidden_size: hidden width (32).
      hidden_layers: how many hidden ReLU layers (2).
      exp_mult: the magnitude output's multiplier inside ``exp`` (0.001).
      step_mult: the step's overall multiplier (0.001).
      decays: the fixed momentum decays (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999).
      impl: how the per-parameter MLP is evaluated, one of :data:`.fused.IMPLS`: ``"auto"``
        (default: ``"reference"`` on CPU (:attr:`auto_impl`), else :data:`.fused.AUTO_IMPL`),
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
    auto_impl: ClassVar[Mapping[str, str]] = {"cpu": "reference"}
    """XLA:CPU cannot compile the fused form of the 32-wide network (module docstring)."""

    def __post_init__(self):
        object.__setattr__(self, "hidden_size", P.check_int("MLPLOpt", "hidden_size", self.hidden_size, 1))
        object.__setattr__(self, "hidden_layers", P.check_int("MLPLOpt", "hidden_layers", self.hidden_layers, 0))
        object.__setattr__(self, "exp_mult", P.check_float("MLPLOpt", "exp_mult", self.exp_mult))
        object.__setattr__(self, "step_mult", P.check_float("MLPLOpt", "step_mult", self.step_mult))
        object.__setattr__(self, "decays", P.check_decays("MLPLOpt", "decays", self.decays))
        self.resolved_impl  # noqa: B018 - validates impl

    # ------------------------------------------------------------------ sizes

    @property
    def num_inputs(self) -> int:
        """MLP input width: feature channels plus the step-embedding features (19 by default)."""
        return self.num_features + len(F.TANH_TIMESCALES)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Widths from input to output, e.g. ``(19, 32, 32, 2)``."""
        return (self.num_inputs, *[self.hidden_size] * self.hidden_layers, 2)

    def fresh_channels(self, param: jax.Array) -> list[jax.Array]:
        return mlp_lopt_features(param, jnp.zeros_like(param), self.init_accumulators(param).momentum)

    # ------------------------------------------------------------------ declarations

    def init_meta_params(self, key: jax.Array) -> dict:
        """Initial meta-parameters θ.

        Returns:
          ``{"nn": {"w0", "b0", …}}``; ``w{l}`` has shape ``[fan_in, fan_out]`` and is drawn as
          ``TruncNormal(−2, 2) / sqrt(fan_in)`` (haiku's default ``Linear`` init), biases are zero.
        """
        return {"nn": P.init_mlp(key, self.layer_sizes)}

    def prepare(self, meta_params: Any, num_steps) -> Any:
        nn = meta_params.get("nn") if isinstance(meta_params, Mapping) else None
        if not isinstance(nn, Mapping):
            raise ValueError(
                "MLPLOpt.make: meta_params must be a dict with an 'nn' entry; build them with "
                f"lopt.init_meta_params(key) (or load a checkpoint), got {type(meta_params).__name__}."
            )
        P.check_mlp_shapes("MLPLOpt", nn, self.layer_sizes)
        if (
            self.resolved_impl != "reference"
            and self.hidden_size > _CPU_FUSED_MAX_WIDTH
            and jax.default_backend() == "cpu"
        ):
            warnings.warn(
                f"MLPLOpt(impl={self.impl!r}, hidden_size={self.hidden_size}): XLA:CPU may need tens of GB and "
                "minutes to compile the fused form of an MLP this wide (measured with jax 0.10.2: 24- and 32-wide "
                "layers ran out of memory); use impl='reference' or 'auto' on CPU.",
                stacklevel=3,
            )
        return nn

    def init_accumulators(self, param: jax.Array) -> MomentumAccumulators:
        return MomentumAccumulators(F.init_momentum(param, len(self.decays)))

    def features(self, hyper, param, grad, acc):
        momentum = F.update_momentum(acc.momentum, grad, jnp.asarray(self.decays, jnp.float32))
        return grad, MomentumAccumulators(momentum), mlp_lopt_features(param, grad, momentum)

    def step_context(self, hyper, state, leaves, accumulators, extra_args):
        del leaves, accumulators, extra_args  # the loss is accepted for the common contract, not used
        step_features = F.tanh_step_embedding(state.iteration)
        layers = P.fold_step_features(hyper, self.num_features, step_features, precision=jax.lax.Precision.HIGHEST)
        return layers, state.context

    def network(self, hyper, step, index):
        return step

    def output(self, hyper, step, index, param, grad, acc, outputs):
        """``Δp = −d · exp(exp_mult·s) · step_mult``."""
        return P.exp_magnitude_step(outputs, self.exp_mult, self.step_mult)
