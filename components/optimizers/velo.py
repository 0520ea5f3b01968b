"""``velo``: VeLO's hypernetwork learned optimizer (``HyperV2``) as an optax transformation.

Re-implementation of learned_optimization's ``research/general_lopt/hyper_v2.py`` (Metz et al.
2022, "VeLO: Training Versatile Learned Optimizers by Scaling Up", arXiv 2211.09760), with the
``ff_mult`` argument of Celo's copy (``amoudgl/celo``, ``celo/optimizers/velo.py``). See
``research/algorithms.md`` §2.1 (architecture), §0.2 (accumulators, loss buffer) and §1.1 (the
per-parameter MLP it shares with Celo, :mod:`.velo_mlp`).

A per-tensor LSTM reads statistics of every parameter tensor and, per tensor, emits the weights of
a small per-parameter MLP (as a mixture of a bank of MLPs) and a learning-rate multiplier. Per
update at step ``t`` (counted from 0) of a run of ``T`` steps, with loss ``ℓ``:

1. ``g ← clip(g, ±1000)``; the loss buffer (initialised with the true ``T``) takes ``ℓ`` and gives
   9 loss features ``L`` (:func:`~.features.update_loss_buffer`).
2. Per-tensor LSTM input (:func:`tensor_lstm_features`), from the current ``p`` and the momentum
   ``m_k`` and second moment ``v_j`` accumulators *before* this step's update, each rescaled by
   ``μ = 1/sqrt(max(1e-9, mean(p²)))``; concatenated in the sorted order of their names:

   * ``fraction_left``: ``tanh(10·(t/T − s))``, 9 shifts ``s``;
   * ``loss_features``: ``L`` (9);
   * ``mean_rms``: ``a(mean(μ·v_j))`` per RMS decay;
   * ``rank``: one-hot (5 classes) of the number of axes of size > 1;
   * ``var_m``: ``a(mean((μ·m_k − mean(μ·m_k))²))`` per momentum decay;
   * ``var_rms``: ``a(mean((μ·v_j − mean(μ·m_k))²))`` — the reference subtracts the *momentum*
     mean (a quirk we keep for checkpoint compatibility); ``(j, k)`` broadcast like NumPy over the
     two decay vectors, so there are ``max(n_m, n_v)`` entries (3 with the defaults, not 1);

   with ``a(x) = 0.5·clip(log(1e-8 + |10·x|), −5, 5)``: 30 inputs with the default decays.
3. The rows (one per tensor) go through the mixing layer and the LSTM
   (:func:`~.lstm.mix_tensors`, :func:`~.lstm.lstm_step`), whose state ``[n_tensors, H]`` is kept in
   the optimizer state and starts from the meta-learned ``lstm_init_state``; heads
   ``c = Linear(K)(h)`` (no softmax) and ``λ = Linear(1)(h)`` (linear, may be negative).
4. Tensor ``i``'s MLP weights: ``θ_i = ff_mult · mean_k(c_ik · θ_k)`` over the bank
   ``θ_1..θ_K`` (:func:`mix_ff_params`); every leaf, biases included, is mixed.
5. Accumulators are updated with ``g``; the 30 per-parameter features (:mod:`.velo_mlp`), each
   normalised over the tensor, go through the MLP ``30 → 4 → 4 → 3`` to ``(d, s, ·)`` and
   ``Δ = λ_i · d · exp(exp_mult·s) · step_mult · sqrt(mean(p²) + 1e-9)``; the update is ``−Δ``.
   The MLP is evaluated by :func:`.fused.normalized_mlp` in the form the ``impl`` field names.

Meta-parameters mirror the released checkpoint's structure (no loader is provided; a converter
would map these names one to one):

* ``lstm_init_state``: ``{"hidden", "cell"}`` each ``[1, H]`` (haiku ``LSTMState``, zeros at init);
* ``rnn_params``: ``mix`` = ``{"mix_unused", "mix", "input"}`` (haiku ``linear``, ``linear_1``,
  ``linear_2``; the first is created but unused by the reference), ``lstm`` (``rnn/linear``),
  ``rnn_to_controls`` and ``step_size``, each ``{"w", "b"}``;
* ``ff_mod_stack``: the MLP bank, ``{"w0__0", …, "w0__13", "w1", "w2", "b0", "b1", "b2"}`` each with a
  leading axis of size ``param_inits`` (haiku nests them under ``"~"``).

Sizes: the default is VeLO-S as configured by Celo (``velo_s``: LSTM 64, 32 MLPs, ``ff_mult=1``);
:meth:`VeLO.released_sizes` gives the released VeLO's (LSTM 512, 256 MLPs, ``ff_mult=100``, Celo's
``velo_4000``).

Performance: each tensor's MLP has its own weights (its own ``layers`` for :mod:`.fused`), so its
elementwise sums read that tensor's scalars; the work stays elementwise per tensor (one small
``[n_tensors, K] @ [K, …]`` matmul per bank leaf mixes the weights of all tensors at once). The
``impl`` field picks the form of the per-parameter MLP (:mod:`.velo_mlp`, "Performance"). The
trace grows with the number of tensors.

Choices where the reference was unclear or that we made differently:

* Only the fixed (correct) behaviour is offered: ``use_bugged_loss_features=False`` (loss buffer
  with the true ``T``) and ``use_bugged_next_lstm_state=False`` (the LSTM state is carried). The
  released checkpoint was trained with the first flag on; loading it would need that option.
* Not exposed: ablation flags, ``mix_layers=False``, ``precondition_output``, ``rnn_state_decay``,
  ``clip_param_scale_amount``, the validation-mode feature and ``constant_loss`` (all off in the
  reference's VeLO configs). Accumulator decays are fixed (not meta-learned), as in the reference.
* ``T`` may be traced; ``t/T`` uses ``max(T, 1)``. It is stored in the state (as the reference).
* The reference rescales ``g`` for the LSTM features but never uses it; we do not compute it.
* Accumulators are kept in at least float32 and the update is cast back to the parameter dtype.
* An empty parameter tree gets empty updates (the reference's max-pool would fail).
* Kept from the reference although hazardous: the un-factored ``m·(v^a)^−½`` feature
  (:mod:`.velo_mlp`) makes backprop meta-gradients NaN a step after an exactly-zero gradient entry
  of a 0-/1-D tensor (a bias at its optimum, a dead unit); ES/PES meta-gradients are unaffected.
* Random draws differ from the reference (different key splitting).

Example:
  >>> import jax, jax.numpy as jnp
  >>> lopt = VeLO(lstm_hidden_size=8, param_inits=4)
  >>> meta_params = lopt.init_meta_params(jax.random.key(0))
  >>> opt = lopt.make(meta_params, num_steps=100)
  >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
  >>> state = opt.init(params)
  >>> grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5), params)
  >>> updates, state = opt.update(grads, state, params, loss=jnp.float32(1.0))
  >>> updates["w"].shape, state.lstm.hidden.shape
  ((3, 2), (2, 8))
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from components.optimizers import features as F
from components.optimizers import lstm as L
from components.optimizers import velo_mlp
from components.optimizers.per_parameter import (
    AccumulatorDecays,
    PerParameterLOpt,
    check_bool,
    check_decays,
    check_float,
    check_int,
)

__all__ = ["VeLO", "VeLOContext", "mix_ff_params", "tensor_lstm_features"]

NUM_RANK_CLASSES = 5
"""Classes of the one-hot rank feature (ranks ≥ 5 give all zeros, as ``jax.nn.one_hot``)."""


def _clip_log_abs(x: jax.Array, scale: float = 10.0) -> jax.Array:
    """``0.5 · clip(log(1e-8 + |scale·x|), −5, 5)``."""
    return 0.5 * jnp.clip(jnp.log(1e-8 + jnp.abs(x * scale)), -5.0, 5.0)


def tensor_lstm_features(
    param: jax.Array,
    momentum: Sequence[jax.Array],
    rms: Sequence[jax.Array],
    iteration: jax.Array,
    num_steps: jax.Array,
    loss_features: jax.Array,
) -> jax.Array:
    """The LSTM input of one tensor (step 2 of the module docstring).

    Args:
      param: the parameter tensor ``p``.
      momentum: momentum accumulators ``m_k`` (the reference uses them *before* this step's update).
      rms: second-moment accumulators ``v_j`` (likewise before the update).
      iteration: step ``t`` (may be traced).
      num_steps: run length ``T`` (may be traced).
      loss_features: the 9 loss-buffer features.

    Returns:
      A float32 vector: fraction embedding (9), loss features (9), ``mean_rms`` (``n_v``), rank
      one-hot (5), ``var_m`` (``n_m``), ``var_rms`` (``max(n_m, n_v)``).

    Raises:
      ValueError: if the momentum and RMS decay counts cannot be paired for ``var_rms``.
    """
    p = param.astype(jnp.float32)
    mult = jax.lax.rsqrt(jnp.maximum(1e-9, jnp.mean(jnp.square(p))))
    m = [x.astype(jnp.float32) * mult for x in momentum]
    v = [x.astype(jnp.float32) * mult for x in rms]
    mean_m = [jnp.mean(x) for x in m]
    pairs = F.pair_decays(v, mean_m, "RMS accumulators and momentum means (var_rms)")
    rank = int(np.sum(np.asarray(param.shape) > 1))
    inputs = {
        "fraction_left": F.fractional_tanh_embedding(iteration, num_steps),
        "loss_features": jnp.asarray(loss_features, jnp.float32),
        "mean_rms": _clip_log_abs(jnp.stack([jnp.mean(x) for x in v])),
        "rank": jax.nn.one_hot(rank, NUM_RANK_CLASSES, dtype=jnp.float32),
        "var_m": _clip_log_abs(jnp.stack([jnp.mean(jnp.square(x - mu)) for x, mu in zip(m, mean_m, strict=True)])),
        # quirk kept from the reference: centred on the momentum mean, not the RMS mean
        "var_rms": _clip_log_abs(jnp.stack([jnp.mean(jnp.square(x - mu)) for x, mu in pairs])),
    }
    return jnp.concatenate([inputs[k] for k in sorted(inputs)])


def mix_ff_params(ff_mod_stack: dict, controls: jax.Array, ff_mult: float) -> dict:
    """Per-tensor MLP weights ``θ_i = ff_mult · mean_k(c_ik · θ_k)`` for every leaf of the bank.

    Args:
      ff_mod_stack: the bank, each leaf ``[K, …]``.
      controls: ``[n_tensors, K]`` mixing coefficients.
      ff_mult: the overall multiplier (1 for VeLO-S, 100 for released VeLO).

    Returns:
      The same dict with each leaf ``[n_tensors, …]``.
    """

    def mix(bank):
        k = bank.shape[0]
        flat = bank.reshape(k, -1)
        mixed = (controls @ flat) * (ff_mult / k)
        return mixed.reshape((controls.shape[0], *bank.shape[1:]))

    return jax.tree.map(mix, ff_mod_stack)


class VeLOContext(NamedTuple):
    """VeLO's per-run state outside the tensors (``PerParameterState.context``).

    Attributes:
      num_steps: int32 run length ``T`` (possibly traced when the state was built).
      loss_buffer: the loss EMAs (:class:`~.features.LossBufferState`).
      lstm: :class:`~.lstm.LSTMState` with one ``[H]`` row per parameter tensor (leaf order).
    """

    num_steps: jax.Array
    loss_buffer: F.LossBufferState
    lstm: L.LSTMState


class _VeLOStep(NamedTuple):
    ff: dict  # the mixed MLP weights, each leaf [n_tensors, ...]
    lr_mults: jax.Array  # [n_tensors]


_INT_FIELDS = (("lstm_hidden_size", 1), ("param_inits", 1), ("ff_hidden_size", 1), ("ff_hidden_layers", 0))
_META_KEYS = ("lstm_init_state", "rnn_params", "ff_mod_stack")


@dataclasses.dataclass(frozen=True)
class VeLO(AccumulatorDecays, PerParameterLOpt):
    """VeLO's per-tensor LSTM hypernetwork over a bank of per-parameter MLPs (``HyperV2``).

    See the module docstring for the maths and the reference.

    Attributes:
      lstm_hidden_size: width ``H`` of the mixing layer and the LSTM (64; released VeLO 512).
      param_inits: size ``K`` of the MLP bank (32; released 256).
      ff_mult: multiplier of the mixed MLP weights (1; released 100).
      ff_hidden_size: hidden width of the per-parameter MLP (4).
      ff_hidden_layers: hidden layers of the per-parameter MLP (2).
      exp_mult: multiplier of the magnitude output inside the exponential (0.001).
      step_mult: overall step multiplier (0.001).
      param_scale_mult: multiply steps by ``RMS(p)`` (True).
      initial_momentum_decays: momentum decays (fixed).
      initial_rms_decays: second-moment decays (fixed).
      initial_adafactor_decays: Adafactor decays (fixed).
      impl: the form of the per-parameter MLPs, one of :data:`.fused.IMPLS` (``"auto"`` by default;
        :mod:`.fused` describes each).
    """

    lstm_hidden_size: int = 64
    param_inits: int = 32
    ff_mult: float = 1.0
    ff_hidden_size: int = 4
    ff_hidden_layers: int = 2
    exp_mult: float = 0.001
    step_mult: float = 0.001
    param_scale_mult: bool = True
    impl: str = "auto"

    name: ClassVar[str] = "velo"

    def __post_init__(self):
        for field, low in _INT_FIELDS:
            object.__setattr__(self, field, check_int("VeLO", field, getattr(self, field), low))
        for field in ("ff_mult", "exp_mult", "step_mult"):
            object.__setattr__(self, field, check_float("VeLO", field, getattr(self, field)))
        object.__setattr__(self, "param_scale_mult", check_bool("VeLO", "param_scale_mult", self.param_scale_mult))
        for field in ("initial_momentum_decays", "initial_rms_decays", "initial_adafactor_decays"):
            object.__setattr__(self, field, check_decays("VeLO", field, getattr(self, field)))
        self.resolved_impl  # noqa: B018 - validates impl
        _ = self.num_lstm_inputs  # validates that the decay counts can be combined

    @classmethod
    def released_sizes(cls, **overrides) -> "VeLO":
        """The released VeLO's sizes (Celo's ``velo_4000``): LSTM 512, 256 MLPs, ``ff_mult=100``."""
        return cls(**({"lstm_hidden_size": 512, "param_inits": 256, "ff_mult": 100.0} | overrides))

    # ------------------------------------------------------------------ sizes

    @property
    def feature_groups(self) -> tuple[int, ...]:
        """First-layer group widths of the per-parameter MLP (:func:`.velo_mlp.feature_groups`)."""
        return velo_mlp.feature_groups(*self.decay_counts)

    @functools.cached_property
    def num_lstm_inputs(self) -> int:
        """Width of the per-tensor LSTM input (30 by default), traced from :func:`tensor_lstm_features`."""
        n_m, n_v, _ = self.decay_counts
        p = jnp.zeros((3, 2), jnp.float32)

        def trace(p):
            return tensor_lstm_features(
                p, F.init_momentum(p, n_m), F.init_rms(p, n_v), 0, 1, jnp.zeros((F.NUM_LOSS_EMAS - 1,))
            )

        _ = self.feature_groups  # validates the per-parameter decay pairings too
        return int(jax.eval_shape(trace, p).shape[0])

    # ------------------------------------------------------------------ contract

    def init_meta_params(self, key: jax.Array) -> dict:
        """Initial meta-parameters θ (structure in the module docstring).

        Every linear layer is haiku's default ``TruncNormal(−2, 2)/sqrt(fan_in)`` with zero biases
        (the layout of :func:`.lstm.init_mix`, :func:`.lstm.init_lstm` and :func:`.lstm.linear_init`,
        drawn at once); the bank's ``K`` MLPs are drawn independently
        (:func:`.velo_mlp.init_ff_params`); the LSTM's initial state is zeros.
        """
        h, k = self.lstm_hidden_size, self.param_inits
        k_ff, k_rnn = jax.random.split(key)
        groups = self.feature_groups
        init_one = functools.partial(
            velo_mlp.init_ff_params,
            groups=groups,
            hidden_size=self.ff_hidden_size,
            hidden_layers=self.ff_hidden_layers,
        )
        # (name, fan_in, fan_out) of every linear layer, as lstm.init_mix / init_lstm / linear_init
        # lay them out; drawn at once (one compile) by truncated_normal_blocks.
        n_in = self.num_lstm_inputs
        layers = [
            (("mix", "mix_unused"), n_in, h),
            (("mix", "mix"), n_in, h),
            (("mix", "input"), n_in, h),
            (("lstm",), 2 * h, 4 * h),
            (("rnn_to_controls",), h, k),
            (("step_size",), h, 1),
        ]
        weights = velo_mlp.truncated_normal_blocks(
            k_rnn, [(fan_in, fan_out) for _, fan_in, fan_out in layers], [1.0 / np.sqrt(f) for _, f, _ in layers]
        )
        rnn: dict = {"mix": {}}
        for (path, _, fan_out), w in zip(layers, weights, strict=True):
            target = rnn["mix"] if path[0] == "mix" else rnn
            target[path[-1]] = {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}
        return {
            "lstm_init_state": {"hidden": jnp.zeros((1, h), jnp.float32), "cell": jnp.zeros((1, h), jnp.float32)},
            "rnn_params": rnn,
            "ff_mod_stack": jax.vmap(init_one)(jax.random.split(k_ff, k)),
        }

    @property
    def num_features(self) -> int:
        """Number of normalised per-parameter feature channels (30 by default)."""
        return sum(self.feature_groups)

    # ------------------------------------------------------------------ declarations (see PerParameterLOpt)

    def prepare(self, meta_params: Any, num_steps) -> Any:
        missing = set(_META_KEYS) - set(meta_params)
        if missing:
            raise ValueError(
                f"VeLO.make: meta_params lacks {sorted(missing)}; build them with lopt.init_meta_params(key)."
            )
        return meta_params

    def init_accumulators(self, param: jax.Array) -> F.Accumulators:
        return F.init_accumulators(param, *self.decay_counts)

    def init_context(self, hyper: Any, params: Any, num_steps) -> VeLOContext:
        n = len(jax.tree.leaves(params))
        init_state = hyper["lstm_init_state"]
        return VeLOContext(
            num_steps=jnp.asarray(num_steps).astype(jnp.int32),
            loss_buffer=F.init_loss_buffer(num_steps),
            lstm=L.LSTMState(hidden=jnp.tile(init_state["hidden"], (n, 1)), cell=jnp.tile(init_state["cell"], (n, 1))),
        )

    def step_context(self, hyper: Any, state, leaves, accumulators, extra_args):
        """The loss buffer and the per-tensor LSTM: each tensor's MLP weights and learning-rate multiplier."""
        loss = extra_args.get("loss")
        if loss is None:
            raise TypeError(
                "velo needs the current loss as a keyword extra arg: call opt.update(grads, state, params, loss=loss)."
            )
        context = state.context
        loss_buffer = F.update_loss_buffer(context.loss_buffer, loss)
        if not leaves:
            return None, context._replace(loss_buffer=loss_buffer)
        rnn = hyper["rnn_params"]
        loss_feats = F.loss_buffer_features(loss_buffer)
        rows = jnp.stack(
            [
                tensor_lstm_features(p, a.momentum, a.rms, state.iteration, context.num_steps, loss_feats)
                for p, a in zip(leaves, accumulators, strict=True)
            ]
        )
        hidden, lstm_state = L.lstm_step(rnn["lstm"], L.mix_tensors(rnn["mix"], rows), context.lstm)
        controls = hidden @ rnn["rnn_to_controls"]["w"] + rnn["rnn_to_controls"]["b"]
        lr_mults = (hidden @ rnn["step_size"]["w"] + rnn["step_size"]["b"])[:, 0]
        step = _VeLOStep(mix_ff_params(hyper["ff_mod_stack"], controls, self.ff_mult), lr_mults)
        lstm = L.LSTMState(
            hidden=lstm_state.hidden.astype(context.lstm.hidden.dtype),
            cell=lstm_state.cell.astype(context.lstm.cell.dtype),
        )
        return step, context._replace(loss_buffer=loss_buffer, lstm=lstm)

    def features(self, hyper: Any, param, grad, acc):
        grad = F.clip_gradient(grad)
        decays = (self.initial_momentum_decays, self.initial_rms_decays, self.initial_adafactor_decays)
        acc, fac_g = F.update_accumulators(acc, grad, *(jnp.asarray(d, jnp.float32) for d in decays))
        return grad, acc, velo_mlp.hyper_features(param, grad, acc.momentum, acc.rms, fac_g, acc.factored)

    def network(self, hyper: Any, step: _VeLOStep, index: int):
        return velo_mlp.ff_layers({name: w[index] for name, w in step.ff.items()}, self.feature_groups)

    def output(self, hyper: Any, step: _VeLOStep, index: int, param, grad, acc, outputs):
        """``−λ_i·Δ``, ``Δ`` from :func:`.velo_mlp.param_step`."""
        direction, magnitude = outputs[:2]
        scale = self.param_scale_mult
        update = velo_mlp.param_step(
            direction, magnitude, param, exp_mult=self.exp_mult, step_mult=self.step_mult, param_scale_mult=scale
        )
        return -step.lr_mults[index] * update
