"""``celo_adam``: Adam whose learning rate comes from Celo's learned scheduler.

The update (see :mod:`.celo` for the scheduler and the reference, ``amoudgl/celo``
``celo/optimizers/celo_adam.py``): ``g ← clip(g, ±1000)``, Adam's moments with bias correction,
``Δp = −0.001·λ_t · m̂ / (eps + sqrt(v̂ + 1e-10))`` (times ``RMS(p)`` with ``param_scale_mult``),
``λ_t`` from the scheduler fed by the loss buffer. Not a per-parameter MLP, so it does not use
:class:`~.per_parameter.PerParameterLOpt`.
"""

import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from components.optimizers import celo_scheduler as S
from components.optimizers import features as F
from components.optimizers import lstm as L
from components.optimizers.per_parameter import check_bool, check_decays, check_int, check_num_steps

__all__ = ["CeloAdam", "CeloAdamState"]


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
        set_("lstm_hidden_size", check_int(owner, "lstm_hidden_size", self.lstm_hidden_size, 1))
        for field in ("b1", "b2"):
            set_(field, check_decays(owner, field, [getattr(self, field)])[0])
        if not float(self.eps) >= 0.0:
            raise ValueError(f"CeloAdam.eps must be >= 0, got {self.eps!r}.")
        set_("eps", float(self.eps))
        set_("step_mult", float(self.step_mult))
        for field in ("mix_layers", "param_scale_mult", "bias_correction"):
            set_(field, check_bool(owner, field, getattr(self, field)))

    @functools.cached_property
    def _meta_params_structure(self) -> Any:
        return S.structure_of_init(self)

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
            "rnn_params": S.init_scheduler(
                key,
                input_size=S.num_scheduler_features(),
                hidden_size=hidden,
                num_controls=0,
                mix_layers=self.mix_layers,
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
        check_num_steps("CeloAdam", num_steps)
        S.check_structure("CeloAdam", meta_params, self._meta_params_structure)
        theta = meta_params
        b1, b2, eps, step_mult = self.b1, self.b2, self.eps, self.step_mult
        bias_correction, param_scale_mult = self.bias_correction, self.param_scale_mult

        def init_fn(params):
            zeros = functools.partial(jax.tree.map, lambda p: jnp.zeros(p.shape, F.accumulator_dtype(p.dtype)))
            return CeloAdamState(
                iteration=jnp.zeros([], jnp.int32),
                num_steps=jnp.asarray(num_steps, jnp.int32),
                loss_buffer=F.init_loss_buffer(num_steps),
                lstm=S.initial_lstm_state(theta),
                mu=zeros(params),
                nu=zeros(params),
            )

        def update_fn(updates, state, params=None, **extra_args):
            loss = S.loss_from(extra_args, "celo_adam")
            if param_scale_mult and params is None:
                raise ValueError(
                    "celo_adam with param_scale_mult=True scales steps by RMS(params): call "
                    "opt.update(grads, state, params, loss=loss)."
                )
            loss_buffer = F.update_loss_buffer(state.loss_buffer, loss)
            lr_mult, _, lstm_state = S.scheduler_step(
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
