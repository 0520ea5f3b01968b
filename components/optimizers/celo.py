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
import numpy as np
import optax

from components.optimizers import features as F
from components.optimizers import fused
from components.optimizers import lstm as L
from components.optimizers import velo_mlp as V

__all__ = [
    "LR_MULT_SCALE",
    "Celo",
    "CeloAdam",
    "CeloAdamState",
    "CeloState",
    "apply_scheduler",
    "init_scheduler",
    "num_scheduler_features",
    "scheduler_features",
]

LR_MULT_SCALE = 0.1
"""``λ = LR_MULT_SCALE · exp(logit)``: the scheduler's output scale."""

_PHASES = (1, 2)

# --------------------------------------------------------------------------- scheduler


def scheduler_features(iteration: jax.Array, num_steps: jax.Array, loss_features: jax.Array) -> jax.Array:
    """The scheduler's input row ``[tanh(10·(t/T − s_i)) (9), loss features (9)]``, shape ``[18]``.

    The reference builds it per tensor from a dict sorted by key (``fraction_left`` before
    ``loss_features``); every tensor's row is this one.
    """
    fraction = F.fractional_tanh_embedding(iteration, num_steps)
    return jnp.concatenate([fraction, jnp.asarray(loss_features, jnp.float32)])


@functools.cache
def num_scheduler_features() -> int:
    """Input width of the scheduler (18), counted by tracing :func:`scheduler_features`."""

    def row():
        feats = F.loss_buffer_features(F.init_loss_buffer(10))
        return scheduler_features(jnp.zeros([], jnp.int32), jnp.full([], 10, jnp.int32), feats)

    return int(jax.eval_shape(row).shape[0])


def init_scheduler(key: jax.Array, *, input_size: int, hidden_size: int, num_controls: int, mix_layers: bool) -> dict:
    """Initial weights of the scheduler network (``rnn_params``).

    Args:
      key: PRNG key.
      input_size: width of an input row (:func:`num_scheduler_features`).
      hidden_size: width of the mixing layers and of the LSTM.
      num_controls: width of the bank-controls head (``param_inits``); 0 leaves the head out.
      mix_layers: whether to include the cross-tensor mixing block.

    Returns:
      ``{"mix": {"mix_unused", "mix", "input"}, "lstm", "controls", "step_size"}``, each linear layer
      ``{"w": [fan_in, fan_out], "b": [fan_out]}`` with haiku's default init (``mix`` only with
      ``mix_layers``, ``controls`` only with ``num_controls > 0``).
    """
    k_mix, k_lstm, k_controls, k_step = jax.random.split(key, 4)
    params = {}
    lstm_input = input_size
    if mix_layers:
        params["mix"] = L.init_mix(k_mix, input_size, hidden_size)
        lstm_input = hidden_size
    params["lstm"] = L.init_lstm(k_lstm, lstm_input, hidden_size)
    if num_controls:
        params["controls"] = L.linear_init(k_controls, hidden_size, num_controls)
    params["step_size"] = L.linear_init(k_step, hidden_size, 1)
    return params


def apply_scheduler(
    rnn_params: dict, inputs: jax.Array, state: L.LSTMState
) -> tuple[jax.Array, jax.Array | None, L.LSTMState]:
    """One scheduler step on a batch of rows.

    Args:
      rnn_params: weights from :func:`init_scheduler` (the mixing block is applied iff ``"mix"`` is
        present, the controls head iff ``"controls"`` is).
      inputs: ``[rows, input_size]``; the reference uses one (identical) row per parameter tensor,
        the optimizers here a single row.
      state: LSTM state, each ``[rows, hidden]``.

    Returns:
      ``(λ [rows], controls [rows, param_inits] or None, next state)`` with
      ``λ = 0.1·exp(h·w_λ + b_λ)`` and ``controls = softmax(h·W_c + b_c)``.
    """
    x = inputs
    if "mix" in rnn_params:
        x = L.mix_tensors(rnn_params["mix"], x)
    hidden, state = L.lstm_step(rnn_params["lstm"], x, state)
    head = rnn_params["step_size"]
    lr_mult = LR_MULT_SCALE * jnp.exp((hidden @ head["w"] + head["b"])[:, 0])
    controls = None
    if "controls" in rnn_params:
        ctl = rnn_params["controls"]
        controls = jax.nn.softmax(hidden @ ctl["w"] + ctl["b"], axis=-1)
    return lr_mult, controls, state


def _initial_lstm_state(meta_params: dict) -> L.LSTMState:
    init = meta_params["lstm_init_state"]
    return L.LSTMState(hidden=init["hidden"], cell=init["cell"])


def _scheduler_step(rnn_params, iteration, num_steps, loss_buffer, lstm_state):
    """``(λ, controls [P] or None, state)`` from the single shared row."""
    row = scheduler_features(iteration, num_steps, F.loss_buffer_features(loss_buffer))[None]
    lr_mult, controls, lstm_state = apply_scheduler(rnn_params, row, lstm_state)
    return lr_mult[0], None if controls is None else controls[0], lstm_state


# --------------------------------------------------------------------------- shared helpers


def _loss_from(extra_args: dict, name: str) -> jax.Array:
    loss = extra_args.get("loss")
    if loss is None:
        raise TypeError(
            f"{name} reads the current loss (loss-buffer features of its scheduler): call "
            "opt.update(grads, state, params, loss=loss) with the scalar training loss."
        )
    if jnp.ndim(loss) != 0:
        raise TypeError(f"{name}: loss must be a scalar, got shape {jnp.shape(loss)}; pass the mean training loss.")
    return jnp.asarray(loss, jnp.float32)


def _check_num_steps(name: str, num_steps) -> None:
    if num_steps is None:
        raise ValueError(f"{name}.make needs num_steps, e.g. make(meta_params, num_steps=1000).")
    if isinstance(num_steps, int | np.integer) and not isinstance(num_steps, bool) and num_steps < 1:
        raise ValueError(f"{name}.make: num_steps must be >= 1, got {num_steps}.")


def _leaf_paths(tree: Any) -> set[str]:
    """``"rnn_params/lstm/w"``-style paths of the leaves (the checkpoint's key format)."""

    def name(entry) -> str:
        return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))

    return {"/".join(name(e) for e in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_structure(name: str, meta_params: Any, expected: Any) -> None:
    if isinstance(meta_params, dict) and jax.tree.structure(meta_params) == expected:
        return
    want = _leaf_paths(jax.tree.unflatten(expected, [0] * expected.num_leaves))
    got = _leaf_paths(meta_params)
    raise ValueError(
        f"{name}.make: meta_params do not match this architecture (missing leaves: "
        f"{sorted(want - got)[:6]}, unexpected leaves: {sorted(got - want)[:6]}). Build them with "
        "lopt.init_meta_params(key) or load a checkpoint of the same config."
    )


def _structure_of_init(lopt) -> Any:
    return jax.tree.structure(jax.eval_shape(lopt.init_meta_params, jax.random.key(0)))


def _check_int(owner: str, field: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{owner}.{field} must be an int, got {value!r}.")
    if value < low:
        raise ValueError(f"{owner}.{field} must be >= {low}, got {value}.")
    return int(value)


def _check_bool(owner: str, field: str, value) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{owner}.{field} must be True or False, got {value!r}.")
    return bool(value)


def _as_decays(owner: str, field: str, values) -> tuple[float, ...]:
    try:
        decays = tuple(float(v) for v in values)
    except TypeError as err:
        raise TypeError(f"{owner}.{field} must be a sequence of floats, got {values!r}.") from err
    if not decays or not all(0.0 <= d < 1.0 for d in decays):
        raise ValueError(f"{owner}.{field} must be a non-empty sequence of decays in [0, 1), got {values!r}.")
    return decays


def _stop_frozen(meta_params: dict, frozen: tuple[str, ...]) -> dict:
    return {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in meta_params.items()}


# --------------------------------------------------------------------------- Celo


class CeloState(NamedTuple):
    """State of a ``celo`` transformation.

    Attributes:
      iteration: int32 step counter ``t`` (0 before the first update).
      num_steps: int32 run length ``T`` (from ``make``).
      loss_buffer: the :class:`~.features.LossBufferState` of the loss features.
      lstm: the scheduler's :class:`~.lstm.LSTMState`, one shared row ``[1, hidden]`` each.
      momentum: params-shaped tree; each leaf a tuple of momentum accumulators, one per decay.
      rms: params-shaped tree; each leaf a tuple of second-moment accumulators.
      factored: params-shaped tree; each leaf a :class:`~.features.FactoredAccumulator`.
      norms: ``impl="single_pass"`` only: params-shaped tree of ``[C]`` float32 inverse RMS of the
        previous step's feature channels (:func:`.fused.init_norms` at init, unused at step 0);
        ``None`` for the other forms.
    """

    iteration: jax.Array
    num_steps: jax.Array
    loss_buffer: F.LossBufferState
    lstm: L.LSTMState
    momentum: Any
    rms: Any
    factored: Any
    norms: Any = None


@dataclasses.dataclass(frozen=True)
class Celo:
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
      impl: how the per-parameter MLP is evaluated (:mod:`.fused`): ``"auto"`` (default: the
        fastest exact form for the backend, :data:`.fused.AUTO_IMPL`; ``"fused"`` on every backend
        today), ``"reference"`` (stacked channels and matmuls, the ground truth), ``"fused"`` (the
        same function as elementwise sums) or ``"single_pass"`` (``"fused"`` with one-step-stale
        per-tensor norms kept in :attr:`CeloState.norms`; this changes the numerics slightly).
        Params files set it with ``meta_train.lopt_hyperparams: {impl: single_pass}``.
    """

    lstm_hidden_size: int = 64
    ff_hidden_size: int = 4
    ff_hidden_layers: int = 2
    initial_momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    initial_rms_decays: tuple[float, ...] = (0.999,)
    initial_adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
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
        set_("lstm_hidden_size", _check_int(owner, "lstm_hidden_size", self.lstm_hidden_size, 1))
        set_("ff_hidden_size", _check_int(owner, "ff_hidden_size", self.ff_hidden_size, 1))
        set_("ff_hidden_layers", _check_int(owner, "ff_hidden_layers", self.ff_hidden_layers, 0))
        set_("param_inits", _check_int(owner, "param_inits", self.param_inits, 1))
        for field in ("initial_momentum_decays", "initial_rms_decays", "initial_adafactor_decays"):
            set_(field, _as_decays(owner, field, getattr(self, field)))
        for field in ("mix_layers", "param_scale_mult"):
            set_(field, _check_bool(owner, field, getattr(self, field)))
        set_("exp_mult", float(self.exp_mult))
        set_("step_mult", float(self.step_mult))
        if isinstance(self.train_phase, bool) or self.train_phase not in _PHASES:
            raise ValueError(
                f"Celo.train_phase must be one of {list(_PHASES)} (1: train the MLP update rule, "
                f"2: train the scheduler), got {self.train_phase!r}."
            )
        set_("train_phase", int(self.train_phase))
        fused.check_impl(owner, self.impl)
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
        return _structure_of_init(self)

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

    def config(self) -> dict:
        """JSON-serialisable hyperparameters; ``Celo(**lopt.config())`` rebuilds it."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for field in ("initial_momentum_decays", "initial_rms_decays", "initial_adafactor_decays"):
            out[field] = list(out[field])
        return out

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

    def make(self, meta_params: Any, *, num_steps) -> optax.GradientTransformationExtraArgs:
        """Builds the inner optimizer for θ (which may be traced, batched or differentiated).

        Args:
          meta_params: θ as returned by :meth:`init_meta_params`; the :meth:`frozen_keys` subtrees
            pass through ``jax.lax.stop_gradient``.
          num_steps: run length ``T`` (Python int or traced int32 scalar) for the loss-buffer
            half-lives and the progress features.

        Returns:
          An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` and the keyword
          ``loss=`` (the scalar training loss) and ignores any other extra args.

        Raises:
          ValueError: if ``num_steps`` is missing or a non-positive int, or θ has the wrong pytree.
          TypeError: at trace time, from ``update``, if ``loss`` is missing or not a scalar.
        """
        _check_num_steps("Celo", num_steps)
        _check_structure("Celo", meta_params, self._meta_params_structure)
        theta = _stop_frozen(meta_params, self.frozen_keys())
        groups = self.feature_groups
        mom_decays = jnp.asarray(self.initial_momentum_decays, jnp.float32)
        rms_decays = jnp.asarray(self.initial_rms_decays, jnp.float32)
        fac_decays = jnp.asarray(self.initial_adafactor_decays, jnp.float32)
        n_mom, n_rms, n_fac = len(mom_decays), len(rms_decays), len(fac_decays)
        step_kwargs = {
            "exp_mult": self.exp_mult,
            "step_mult": self.step_mult,
            "param_scale_mult": self.param_scale_mult,
        }
        apply_lr_mult = self.train_phase == 2
        uses_scheduler = self.uses_scheduler
        impl = fused.resolve_impl(self.impl)
        single_pass = impl == "single_pass"
        num_features = self.num_features

        def init_fn(params):
            return CeloState(
                iteration=jnp.zeros([], jnp.int32),
                num_steps=jnp.asarray(num_steps, jnp.int32),
                loss_buffer=F.init_loss_buffer(num_steps),
                lstm=_initial_lstm_state(theta),
                momentum=jax.tree.map(lambda p: F.init_momentum(p, n_mom), params),
                rms=jax.tree.map(lambda p: F.init_rms(p, n_rms), params),
                factored=jax.tree.map(lambda p: F.init_factored(p, n_fac), params),
                norms=jax.tree.map(lambda p: fused.init_norms(num_features), params) if single_pass else None,
            )

        def leaf_update(param, grad, momentum, rms, factored, norms, layers, lr_mult, first_step):
            grad = F.clip_gradient(grad.astype(F.accumulator_dtype(param.dtype)))
            momentum = F.update_momentum(momentum, grad, mom_decays)
            rms = F.update_rms(rms, grad, rms_decays)
            factored, fac_g = F.update_factored(factored, grad, fac_decays)
            channels = V.hyper_features(param, grad, momentum, rms, fac_g, factored)
            outputs, norms = fused.normalized_mlp(impl, channels, layers, stale_norms=norms, first_step=first_step)
            step = V.param_step(outputs[0], outputs[1], param, **step_kwargs)
            if apply_lr_mult:
                step = lr_mult * step
            update = jnp.broadcast_to(-step, param.shape).astype(param.dtype)
            return update, momentum, rms, factored, norms

        def update_fn(updates, state, params=None, **extra_args):
            loss = _loss_from(extra_args, "celo")
            if params is None:
                raise ValueError(
                    "celo uses the parameters as a feature: call opt.update(grads, state, params, loss=loss)."
                )
            loss_buffer = F.update_loss_buffer(state.loss_buffer, loss)
            lr_mult, controls, lstm_state = None, None, state.lstm
            if uses_scheduler:
                lr_mult, controls, lstm_state = _scheduler_step(
                    theta["rnn_params"], state.iteration, state.num_steps, loss_buffer, state.lstm
                )
            if controls is None:  # param_inits == 1 in phase 1: softmax of one logit is 1
                controls = jnp.ones((self.param_inits,), jnp.float32)
            ff_params = jax.tree.map(
                lambda w: jnp.mean(w * controls.reshape((-1,) + (1,) * (w.ndim - 1)), axis=0), theta["ff_mod_stack"]
            )
            layers = V.ff_layers(ff_params, groups)
            grads, treedef = jax.tree.flatten(updates)
            norms = fused.stale_norm_leaves("Celo", impl, state.norms, treedef)
            per_leaf = zip(
                treedef.flatten_up_to(params),
                grads,
                treedef.flatten_up_to(state.momentum),
                treedef.flatten_up_to(state.rms),
                treedef.flatten_up_to(state.factored),
                norms,
                strict=True,
            )
            first_step = state.iteration == 0
            results = [leaf_update(*args, layers, lr_mult, first_step) for args in per_leaf]
            new_updates, momentum, rms, factored = (treedef.unflatten([r[i] for r in results]) for i in range(4))
            new_state = CeloState(
                iteration=state.iteration + jnp.ones([], jnp.int32),
                num_steps=state.num_steps,
                loss_buffer=loss_buffer,
                lstm=lstm_state,
                momentum=momentum,
                rms=rms,
                factored=factored,
                norms=treedef.unflatten([r[4] for r in results]) if single_pass else None,
            )
            return new_updates, new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- Celo-Adam


class CeloAdamState(NamedTuple):
    """State of a ``celo_adam`` transformation.

    Attributes:
      iteration: int32 step counter ``t`` (0 before the first update).
      num_steps: int32 run length ``T``.
      loss_buffer: the :class:`~.features.LossBufferState` of the loss features.
      lstm: the scheduler's :class:`~.lstm.LSTMState`, one shared row ``[1, hidden]`` each.
      mu: params-shaped tree of first moments (at least float32).
      nu: params-shaped tree of second moments.
    """

    iteration: jax.Array
    num_steps: jax.Array
    loss_buffer: F.LossBufferState
    lstm: L.LSTMState
    mu: Any
    nu: Any


@dataclasses.dataclass(frozen=True)
class CeloAdam:
    """Celo-Adam: Adam whose learning rate ``0.001·λ_t`` comes from Celo's learned scheduler.

    See the module docstring for the maths. θ = ``{"lstm_init_state", "rnn_params"}`` (no controls
    head, no MLP); nothing is frozen.

    Attributes:
      lstm_hidden_size: width of the scheduler's mixing layers and LSTM (64).
      b1: momentum decay β1 (0.9; the reference's ``initial_momentum_decays=(0.9,)``).
      b2: second-moment decay β2 (0.999; ``initial_rms_decays=(0.999,)``).
      eps: ε added to ``sqrt(v̂ + 1e-10)`` (1e-8; ``initial_epsilon``).
      step_mult: LR multiplier, ``lr = step_mult·λ_t`` (0.001).
      mix_layers: whether the scheduler has the cross-tensor mixing block (True).
      param_scale_mult: multiply the step by ``RMS(p)`` (False, as the reference's default).
      bias_correction: Adam's bias correction of both moments (True; the reference's ``mom_decay``).
    """

    lstm_hidden_size: int = 64
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    step_mult: float = 0.001
    mix_layers: bool = True
    param_scale_mult: bool = False
    bias_correction: bool = True

    name: ClassVar[str] = "celo_adam"

    def __post_init__(self):
        owner = "CeloAdam"
        set_ = functools.partial(object.__setattr__, self)
        set_("lstm_hidden_size", _check_int(owner, "lstm_hidden_size", self.lstm_hidden_size, 1))
        for field in ("b1", "b2"):
            set_(field, _as_decays(owner, field, [getattr(self, field)])[0])
        if not float(self.eps) >= 0.0:
            raise ValueError(f"CeloAdam.eps must be >= 0, got {self.eps!r}.")
        set_("eps", float(self.eps))
        set_("step_mult", float(self.step_mult))
        for field in ("mix_layers", "param_scale_mult", "bias_correction"):
            set_(field, _check_bool(owner, field, getattr(self, field)))

    @functools.cached_property
    def _meta_params_structure(self) -> Any:
        return _structure_of_init(self)

    def config(self) -> dict:
        """JSON-serialisable hyperparameters; ``CeloAdam(**lopt.config())`` rebuilds it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def frozen_keys(self) -> tuple[str, ...]:
        """Nothing is frozen: the reference trains the whole scheduler."""
        return ()

    def init_meta_params(self, key: jax.Array) -> dict:
        """Initial θ: ``{"lstm_init_state": {"hidden", "cell"}, "rnn_params": {"mix", "lstm", "step_size"}}``."""
        hidden = self.lstm_hidden_size
        return {
            "lstm_init_state": {
                "hidden": jnp.zeros((1, hidden), jnp.float32),
                "cell": jnp.zeros((1, hidden), jnp.float32),
            },
            "rnn_params": init_scheduler(
                key, input_size=num_scheduler_features(), hidden_size=hidden, num_controls=0, mix_layers=self.mix_layers
            ),
        }

    def make(self, meta_params: Any, *, num_steps) -> optax.GradientTransformationExtraArgs:
        """Builds the inner optimizer for θ (which may be traced, batched or differentiated).

        Args:
          meta_params: θ as returned by :meth:`init_meta_params`.
          num_steps: run length ``T`` (Python int or traced int32 scalar).

        Returns:
          An ``optax.GradientTransformationExtraArgs``; ``update`` needs the keyword ``loss=`` (and
          ``params`` when ``param_scale_mult``) and ignores any other extra args.

        Raises:
          ValueError: if ``num_steps`` is missing or a non-positive int, or θ has the wrong pytree.
          TypeError: at trace time, from ``update``, if ``loss`` is missing or not a scalar.
        """
        _check_num_steps("CeloAdam", num_steps)
        _check_structure("CeloAdam", meta_params, self._meta_params_structure)
        theta = meta_params
        b1, b2, eps, step_mult = self.b1, self.b2, self.eps, self.step_mult
        bias_correction, param_scale_mult = self.bias_correction, self.param_scale_mult

        def init_fn(params):
            zeros = functools.partial(jax.tree.map, lambda p: jnp.zeros(p.shape, F.accumulator_dtype(p.dtype)))
            return CeloAdamState(
                iteration=jnp.zeros([], jnp.int32),
                num_steps=jnp.asarray(num_steps, jnp.int32),
                loss_buffer=F.init_loss_buffer(num_steps),
                lstm=_initial_lstm_state(theta),
                mu=zeros(params),
                nu=zeros(params),
            )

        def update_fn(updates, state, params=None, **extra_args):
            loss = _loss_from(extra_args, "celo_adam")
            if param_scale_mult and params is None:
                raise ValueError(
                    "celo_adam with param_scale_mult=True scales steps by RMS(params): call "
                    "opt.update(grads, state, params, loss=loss)."
                )
            loss_buffer = F.update_loss_buffer(state.loss_buffer, loss)
            lr_mult, _, lstm_state = _scheduler_step(
                theta["rnn_params"], state.iteration, state.num_steps, loss_buffer, state.lstm
            )
            lr = lr_mult * step_mult
            t = (state.iteration + 1).astype(jnp.float32)
            m_corr = 1.0 - b1**t if bias_correction else 1.0
            v_corr = 1.0 - b2**t if bias_correction else 1.0

            def leaf(grad, mu, nu, param):
                g = F.clip_gradient(grad.astype(mu.dtype))
                (mu,) = F.update_momentum((mu,), g, jnp.asarray([b1], jnp.float32))
                (nu,) = F.update_rms((nu,), g, jnp.asarray([b2], jnp.float32))
                step = (mu / m_corr) * (lr / (eps + jnp.sqrt(nu / v_corr + 1e-10)))
                if param_scale_mult:
                    step = step * F.param_scale(param)
                dtype = grad.dtype if param is None else param.dtype
                return (-step).astype(dtype), mu, nu

            grads, treedef = jax.tree.flatten(updates)
            params_leaves = [None] * len(grads) if params is None else treedef.flatten_up_to(params)
            per_leaf = zip(
                grads, treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu), params_leaves, strict=True
            )
            results = [leaf(*args) for args in per_leaf]
            new_updates, mu, nu = (treedef.unflatten([r[i] for r in results]) for i in range(3))
            new_state = CeloAdamState(
                iteration=state.iteration + jnp.ones([], jnp.int32),
                num_steps=state.num_steps,
                loss_buffer=loss_buffer,
                lstm=lstm_state,
                mu=mu,
                nu=nu,
            )
            return new_updates, new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
