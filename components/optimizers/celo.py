"""``celo`` and ``celo_adam``: a per-parameter MLP update rule (or Adam) scaled by a learned LSTM scheduler.

Re-implementation of Celo (Moudgil, Knyazev, Lajoie, Belilovsky, "Celo: Training Versatile Learned
Optimizers on a Compute Diet", TMLR 2025, arXiv 2501.12670; reference code ``amoudgl/celo``,
``celo/optimizers/celo.py`` and ``celo_adam.py``) as optax transformations. See
``research/algorithms.md`` §1.1 (architecture) and §0.2 (accumulators and global features).

Celo, for one parameter tensor ``p`` with gradient ``g`` at step ``t`` (counted from 0) of a run of
``T`` steps, with current loss ``ℓ``:

1. ``g ← clip(g, −1000, 1000)``; the loss buffer (10 loss EMAs with half-lives
   ``logspace(1, log10 T, 10)``) takes ``ℓ`` and gives 9 loss features ``φ_ℓ`` (§0.2).
2. The accumulators are updated with ``g`` *before* the features: momentum (decays 0.9, 0.99,
   0.999), RMS (0.999) and Adafactor statistics (0.9, 0.99, 0.999).
3. 30 per-parameter feature channels (14 groups, :mod:`.velo_mlp`), each normalised by its own
   second moment over the tensor; no step-count features. The MLP below is evaluated by
   :func:`.fused.normalized_mlp` in the form the ``impl`` field names (:class:`Celo`).
4. An MLP 30 → 4 → 4 → 3 (ReLU) gives a direction ``d`` and a magnitude ``s`` per element and the
   step ``Δ = d · exp(0.001·s) · 0.001 · RMS(p)``, ``RMS(p) = sqrt(mean(p²) + 1e-9)``.
5. **Phase 2 only**: ``Δ ← λ_t·Δ`` with ``λ_t`` from the learned scheduler:
   ``x_t = [tanh(10·(t/T − s_i)) for the 9 shifts s_i, φ_ℓ]`` (18 inputs, the same for every
   tensor), ``x ← W_in·x + b_in + max_rows(relu(W_mix·x + b_mix))`` (mixing block),
   ``h_t, c_t = LSTM_64(x, (h_{t−1}, c_{t−1}))`` from the learned initial state ``lstm_init_state``,
   ``λ_t = 0.1·exp(w_λ·h_t + b_λ)`` and the bank controls ``softmax(W_c·h_t + b_c)`` (one weight per
   MLP of the bank, ``param_inits`` of them; the MLP used is ``mean_k(c_k·θ_k)``, which is ``θ_0``
   for the default ``param_inits = 1``).
6. ``p ← p − Δ``: the returned update is ``−Δ``.

Celo-Adam keeps the scheduler (without the controls head) and replaces 2–4 by Adam's direction:
``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²``, ``m̂ = m/(1−β1^(t+1))``, ``v̂ = v/(1−β2^(t+1))``
and ``Δ = m̂ · λ_t·0.001 / (ε + sqrt(v̂ + 1e-10))``, i.e. Adam with learning rate ``0.001·λ_t``
(``≈ 1e-4`` at initialisation).

Meta-parameters θ (nested dicts of float32 arrays) and the reference's haiku names:

* ``lstm_init_state``: ``{"hidden": [1, 64], "cell": [1, 64]}``, zeros at init (``LSTMState``).
* ``rnn_params``: ``mix`` = ``{mix_unused, mix, input}`` (haiku ``linear``, ``linear_1``,
  ``linear_2``; the first is created but never used by the reference, kept for the layout),
  ``lstm`` (``rnn/linear``), ``controls`` (``rnn_to_controls``; Celo only) and ``step_size``.
* ``ff_mod_stack`` (Celo only): the MLP weights ``w0__0 … w0__13, w1, w2, b0, b1, b2`` with a
  leading bank axis of size ``param_inits`` (haiku module ``~`` of the vmapped ``ff_mod`` init).

Two-phase meta-training (§1.2): phase 1 trains the MLP without the scheduler; phase 2 freezes the
MLP and trains the scheduler. Both phases use the same θ pytree, so phase-1 meta-params are passed
unchanged to ``lopt.with_phase(2)`` (i.e. ``Celo(train_phase=2)``). :meth:`Celo.frozen_keys` names the
frozen subset (``lstm_init_state``, ``rnn_params`` in phase 1; ``ff_mod_stack`` in phase 2) and
:meth:`Celo.make` stops gradients through it, so its meta-gradient is exactly 0.

Choices where the reference was unclear or that we made differently:

* **One scheduler row.** The reference stacks one identical 18-feature row per parameter tensor and
  runs the mixing block and the LSTM on the ``[n_tensors, ·]`` batch. Every row is the same (the
  inputs are global), the max-pool over identical rows returns that row and the LSTM acts row-wise,
  so every tensor gets the same ``λ_t``: we compute one row and broadcast it. The result is
  identical (tested), the LSTM state is ``[1, 64]`` instead of ``[n_tensors, 64]``.
* **Phase 1 skips the scheduler network** when ``param_inits == 1``: the reference evaluates it and
  discards ``λ`` (and the controls are ``softmax`` of one logit, always 1), so the updates are the
  same; the LSTM state then stays at its initial value. With ``param_inits > 1`` the controls are
  still computed in phase 1, as the reference does.
* The bank interpolation follows the reference's ``mean`` over the bank (``(1/P)·Σ c_k θ_k``, not
  ``Σ c_k θ_k``); only ``param_inits = 1`` is used by Celo, where it is exactly ``θ_0``.
* The controls head uses haiku's default ``Linear`` init (as the reference's ``rnn_to_controls``
  inside the scheduler; its separately built zero-init copy is never used).
* ``train_phase`` defaults to 2 (the reference factory's ``celo``, used for meta-testing; its class
  default is 1); ``Celo(train_phase=1)`` is the factory's ``celo_phase1``.
* ``T`` is stored in the state (int32, as the reference) and floored at 1; ``t/T`` uses the step
  count before the update, the loss features the buffer after adding ``ℓ`` (as the reference).
* Accumulators are kept in at least float32 and updates cast back to the parameter dtype; 0-D
  parameters are not reshaped to ``[1]`` (same maths, see :mod:`.velo_mlp`).
* Random draws differ from the reference (different key splitting); shapes and init scales match.
* Celo-Adam: the reference's ``mom_decay=True`` bias correction is kept (``bias_correction``); its
  unused Adafactor accumulators are not computed; ``param_scale_mult`` defaults to ``False`` as there.

Example:
  >>> import jax, jax.numpy as jnp
  >>> lopt = Celo()
  >>> meta_params = lopt.init_meta_params(jax.random.key(0))
  >>> opt = lopt.make(meta_params, num_steps=100)
  >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  >>> state = opt.init(params)
  >>> grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.ones(2)}
  >>> updates, state = opt.update(grads, state, params, loss=jnp.float32(1.0))
  >>> updates["w"].shape
  (3, 2)
  >>> phase1 = lopt.with_phase(1).make(meta_params, num_steps=100)  # same θ; no scheduler
  >>> updates, _ = phase1.update(grads, phase1.init(params), params, loss=1.0)
"""

import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from components.optimizers import features as F
from components.optimizers import lstm as L
from components.optimizers import velo_mlp as V
from components.optimizers.celo_scheduler import (
    check_structure,
    init_scheduler,
    initial_lstm_state,
    loss_from,
    num_scheduler_features,
    scheduler_step,
    structure_of_init,
)
from components.optimizers.per_parameter import AccumulatorDecays, PerParameterLOpt, check_bool, check_decays, check_int

__all__ = ["Celo", "CeloContext"]

_PHASES = (1, 2)


def _stop_frozen(meta_params: dict, frozen: tuple[str, ...]) -> dict:
    return {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in meta_params.items()}


# --------------------------------------------------------------------------- Celo


class CeloContext(NamedTuple):
    """Celo's per-run state outside the tensors (``PerParameterState.context``).

    Attributes:
      num_steps: int32 run length ``T`` (from ``make``).
      loss_buffer: the :class:`~.features.LossBufferState` of the loss features.
      lstm: the scheduler's :class:`~.lstm.LSTMState`, one shared row ``[1, hidden]`` each.
    """

    num_steps: jax.Array
    loss_buffer: F.LossBufferState
    lstm: L.LSTMState


class _CeloStep(NamedTuple):
    layers: list
    lr_mult: Any


@dataclasses.dataclass(frozen=True)
class Celo(AccumulatorDecays, PerParameterLOpt):
    """Celo: per-parameter MLP update rule scaled by a learned LSTM LR scheduler.

    See the module docstring for the maths, θ's layout and the reference.

    Attributes:
      lstm_hidden_size: width of the scheduler's mixing layers and LSTM (64).
      ff_hidden_size: width of the MLP's hidden layers (4).
      ff_hidden_layers: number of hidden layers of the MLP (2).
      initial_momentum_decays: momentum decays (fixed, not learned).
      initial_rms_decays: second-moment decays (fixed).
      initial_adafactor_decays: Adafactor decays (fixed).
      param_inits: size of the MLP bank interpolated by the scheduler's controls (1).
      mix_layers: whether the scheduler has the cross-tensor mixing block (True).
      exp_mult: multiplier of the magnitude output inside the exponential (0.001).
      step_mult: overall step multiplier (0.001).
      param_scale_mult: multiply the step by ``RMS(p)`` (True).
      train_phase: 1 (MLP alone, scheduler frozen and unused) or 2 (``λ_t·Δ``, MLP frozen).
      impl: how the per-parameter MLP is evaluated: one of :data:`.fused.IMPLS` (see
        :class:`~.per_parameter.PerParameterLOpt` and :mod:`.fused`; ``"auto"`` by default).
    """

    lstm_hidden_size: int = 64
    ff_hidden_size: int = 4
    ff_hidden_layers: int = 2
    param_inits: int = 1
    mix_layers: bool = True
    exp_mult: float = 0.001
    step_mult: float = 0.001
    param_scale_mult: bool = True
    train_phase: int = 2
    impl: str = "auto"

    name: ClassVar[str] = "celo"

    def __post_init__(self):
        owner = "Celo"
        set_ = functools.partial(object.__setattr__, self)
        set_("lstm_hidden_size", check_int(owner, "lstm_hidden_size", self.lstm_hidden_size, 1))
        set_("ff_hidden_size", check_int(owner, "ff_hidden_size", self.ff_hidden_size, 1))
        set_("ff_hidden_layers", check_int(owner, "ff_hidden_layers", self.ff_hidden_layers, 0))
        set_("param_inits", check_int(owner, "param_inits", self.param_inits, 1))
        for field in ("initial_momentum_decays", "initial_rms_decays", "initial_adafactor_decays"):
            set_(field, check_decays(owner, field, getattr(self, field)))
        for field in ("mix_layers", "param_scale_mult"):
            set_(field, check_bool(owner, field, getattr(self, field)))
        set_("exp_mult", float(self.exp_mult))
        set_("step_mult", float(self.step_mult))
        if isinstance(self.train_phase, bool) or self.train_phase not in _PHASES:
            raise ValueError(
                f"Celo.train_phase must be one of {list(_PHASES)} (1: train the MLP update rule, "
                f"2: train the scheduler), got {self.train_phase!r}."
            )
        set_("train_phase", int(self.train_phase))
        self.resolved_impl  # noqa: B018 - validates impl
        _ = self.feature_groups  # validates that the decay counts can be paired

    # ------------------------------------------------------------------ sizes

    @functools.cached_property
    def feature_groups(self) -> tuple[int, ...]:
        """Widths of the MLP's 14 first-layer input groups (traced from :mod:`.velo_mlp`)."""
        return V.feature_groups(
            len(self.initial_momentum_decays), len(self.initial_rms_decays), len(self.initial_adafactor_decays)
        )

    @functools.cached_property
    def _meta_params_structure(self) -> Any:
        return structure_of_init(self)

    @property
    def num_features(self) -> int:
        """Number of normalised per-parameter feature channels (30 by default)."""
        return sum(self.feature_groups)

    @property
    def uses_scheduler(self) -> bool:
        """Whether ``update`` evaluates the scheduler network (phase 2, or a bank to interpolate)."""
        return self.train_phase == 2 or self.param_inits > 1

    def with_phase(self, train_phase: int) -> "Celo":
        """The same architecture in another phase; θ carries over unchanged (same pytree)."""
        return dataclasses.replace(self, train_phase=train_phase)

    # ------------------------------------------------------------------ contract

    def frozen_keys(self) -> tuple[str, ...]:
        """Top-level θ keys that get no meta-gradient: the scheduler in phase 1, the MLP in phase 2."""
        return ("lstm_init_state", "rnn_params") if self.train_phase == 1 else ("ff_mod_stack",)

    def init_meta_params(self, key: jax.Array) -> dict:
        """Initial θ: ``{"lstm_init_state", "rnn_params", "ff_mod_stack"}`` (see the module docstring).

        MLP weights are ``TruncNormal(−2, 2)/sqrt(fan_in)`` with ``fan_in`` the layer's total input
        width, biases 0; one MLP per bank entry (leading axis ``param_inits``).
        """
        k_ff, k_rnn = jax.random.split(key)
        init_ff = functools.partial(
            V.init_ff_params,
            groups=self.feature_groups,
            hidden_size=self.ff_hidden_size,
            hidden_layers=self.ff_hidden_layers,
            num_outputs=3,
        )
        hidden = self.lstm_hidden_size
        return {
            "lstm_init_state": {
                "hidden": jnp.zeros((1, hidden), jnp.float32),
                "cell": jnp.zeros((1, hidden), jnp.float32),
            },
            "rnn_params": init_scheduler(
                k_rnn,
                input_size=num_scheduler_features(),
                hidden_size=hidden,
                num_controls=self.param_inits,
                mix_layers=self.mix_layers,
            ),
            "ff_mod_stack": jax.vmap(init_ff)(jax.random.split(k_ff, self.param_inits)),
        }

    # ------------------------------------------------------------------ declarations (see PerParameterLOpt)

    def prepare(self, meta_params: Any, num_steps) -> dict:
        """θ checked, with the :meth:`frozen_keys` subtrees through ``jax.lax.stop_gradient``."""
        check_structure("Celo", meta_params, self._meta_params_structure)
        return _stop_frozen(meta_params, self.frozen_keys())

    def init_accumulators(self, param: jax.Array) -> F.Accumulators:
        return F.init_accumulators(param, *self.decay_counts)

    def init_context(self, hyper: dict, params: Any, num_steps) -> CeloContext:
        return CeloContext(
            num_steps=jnp.asarray(num_steps, jnp.int32),
            loss_buffer=F.init_loss_buffer(num_steps),
            lstm=initial_lstm_state(hyper),
        )

    def step_context(self, hyper: dict, state, leaves, accumulators, extra_args):
        """The loss buffer and the scheduler (λ, the bank's controls), once per step."""
        loss = loss_from(extra_args, "celo")
        context = state.context
        loss_buffer = F.update_loss_buffer(context.loss_buffer, loss)
        lr_mult, controls, lstm_state = None, None, context.lstm
        if self.uses_scheduler:
            lr_mult, controls, lstm_state = scheduler_step(
                hyper["rnn_params"], state.iteration, context.num_steps, loss_buffer, context.lstm
            )
        if controls is None:  # param_inits == 1 in phase 1: softmax of one logit is 1
            controls = jnp.ones((self.param_inits,), jnp.float32)
        ff_params = jax.tree.map(
            lambda w: jnp.mean(w * controls.reshape((-1,) + (1,) * (w.ndim - 1)), axis=0), hyper["ff_mod_stack"]
        )
        step = _CeloStep(V.ff_layers(ff_params, self.feature_groups), lr_mult)
        return step, context._replace(loss_buffer=loss_buffer, lstm=lstm_state)

    def features(self, hyper: dict, param, grad, acc):
        grad = F.clip_gradient(grad.astype(F.accumulator_dtype(param.dtype)))
        decays = (self.initial_momentum_decays, self.initial_rms_decays, self.initial_adafactor_decays)
        acc, fac_g = F.update_accumulators(acc, grad, *(jnp.asarray(d, jnp.float32) for d in decays))
        return grad, acc, V.hyper_features(param, grad, acc.momentum, acc.rms, fac_g, acc.factored)

    def network(self, hyper: dict, step: _CeloStep, index: int):
        return step.layers

    def output(self, hyper: dict, step: _CeloStep, index: int, param, grad, acc, outputs):
        """``−Δ`` (phase 1) or ``−λ_t·Δ`` (phase 2), ``Δ`` from :func:`.velo_mlp.param_step`."""
        settings = {"exp_mult": self.exp_mult, "step_mult": self.step_mult, "param_scale_mult": self.param_scale_mult}
        update = V.param_step(outputs[0], outputs[1], param, **settings)
        if self.train_phase == 2:
            update = step.lr_mult * update
        return -update
