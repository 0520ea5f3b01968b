"""The meta-training loop: an outer optimizer (AdamW) on PES meta-gradients.

The hot path is one jitted call per outer step (a whole truncation for every task, see
:mod:`components.meta.pes`); the Python loop only runs over outer steps, reports progress with rate
and ETA, and collects the meta-loss curve as values (the caller decides what to log).
"""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from components.meta.frozen import penalty_gradient, trainable_mask
from components.meta.pes import PESConfig, init_pes_state, pes_gradient
from components.tasks.base import ImageData

__all__ = ["MetaTrainConfig", "MetaTrainResult", "outer_optimizer", "meta_train"]


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    num_outer_steps: int
    num_tasks: int = 8
    trunc_length: int = 20
    min_unroll: int = 200
    max_unroll: int = 1000
    sigma: float = 0.01
    outer_lr: float = 1e-3
    outer_lr_schedule: str = "constant"  # or "cosine": decays to 10% of outer_lr at the last step
    outer_weight_decay: float = 0.0
    grad_clip: float = 3.0
    log_every: int = 50


@dataclasses.dataclass
class MetaTrainResult:
    meta_params: Any
    curves: dict[str, list[tuple[int, float]]]
    seconds: float
    inner_steps: int


def outer_optimizer(cfg: MetaTrainConfig, mask: Any = None) -> optax.GradientTransformation:
    """Non-finite meta-gradients are zeroed, then clipped by value, then AdamW (constant or cosine LR).

    ``mask`` (a pytree of bools like the meta-params, see :func:`~components.meta.frozen.trainable_mask`)
    leaves the ``False`` leaves untouched: zero update, no weight decay.
    """
    if cfg.outer_lr_schedule == "cosine":
        lr = optax.cosine_decay_schedule(cfg.outer_lr, max(1, cfg.num_outer_steps), alpha=0.1)
    elif cfg.outer_lr_schedule == "constant":
        lr = cfg.outer_lr
    else:
        raise ValueError(f"outer_lr_schedule must be 'constant' or 'cosine', got {cfg.outer_lr_schedule!r}")
    zero_nans = optax.stateless(lambda g, _: jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), g))
    train = optax.chain(
        zero_nans,
        optax.clip(cfg.grad_clip),
        optax.adamw(lr, weight_decay=cfg.outer_weight_decay),
    )
    if mask is None:
        return train
    labels = jax.tree_util.tree_map(lambda keep: "train" if keep else "frozen", mask)
    return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, labels)


def meta_train(
    lopt,
    family,
    data: ImageData,
    cfg: MetaTrainConfig,
    *,
    key: jax.Array,
    log: Callable[[str], None] = print,
    init_meta_params: Any = None,
) -> MetaTrainResult:
    """Meta-train ``lopt`` on ``family`` with truncated PES.

    Args:
      lopt: a learned optimizer (``init_meta_params(key)``, ``make(meta_params, *, num_steps)``).
      family: a task family with ``sample(key) -> Task``.
      data: the datasets the family's tasks index into.
      cfg: loop and estimator settings.
      key: the only source of randomness.
      log: where progress lines go.
      init_meta_params: start from these meta-params instead of ``lopt.init_meta_params`` (e.g.
        Celo's phase 2 from the phase-1 result).

    Frozen meta-params declared by ``lopt.frozen_keys()`` are neither perturbed nor updated, and the
    gradient of ``lopt.meta_penalty`` (if declared) is added to the PES estimate
    (:mod:`components.meta.frozen`).

    Returns:
      The trained meta-parameters and curves ``meta_loss``, ``train_loss``, ``grad_norm`` sampled
      every ``cfg.log_every`` outer steps (averaged over the steps since the previous point).
    """
    pes_cfg = PESConfig(cfg.num_tasks, cfg.trunc_length, cfg.min_unroll, cfg.max_unroll, cfg.sigma)
    k_init, k_state, k_loop = jax.random.split(key, 3)
    meta_params = lopt.init_meta_params(k_init) if init_meta_params is None else init_meta_params
    opt = outer_optimizer(cfg, trainable_mask(lopt, meta_params))
    opt_state = opt.init(meta_params)
    state = init_pes_state(lopt, meta_params, family, pes_cfg, k_state)

    @jax.jit
    def outer_step(meta_params, opt_state, state, data, key):
        grad, state, aux = pes_gradient(lopt, meta_params, family, pes_cfg, state, data, key)
        penalty = penalty_gradient(lopt, meta_params)
        if penalty is not None:
            grad = jax.tree_util.tree_map(jnp.add, grad, penalty)
        updates, opt_state = opt.update(grad, opt_state, meta_params)
        meta_params = optax.apply_updates(meta_params, updates)
        aux = dict(aux, grad_norm=optax.global_norm(grad))
        return meta_params, opt_state, state, aux

    curves: dict[str, list[tuple[int, float]]] = {"meta_loss": [], "train_loss": [], "grad_norm": []}
    window: dict[str, list[jax.Array]] = {k: [] for k in curves}
    start = time.perf_counter()
    compiled_at = None
    for i in range(cfg.num_outer_steps):
        meta_params, opt_state, state, aux = outer_step(
            meta_params, opt_state, state, data, jax.random.fold_in(k_loop, i)
        )
        for k in curves:
            window[k].append(aux[k])
        if compiled_at is None:
            jax.block_until_ready(aux["meta_loss"])
            compiled_at = time.perf_counter()
            log(f"meta_train: compiled the outer step in {compiled_at - start:.1f}s")
        last = i + 1 == cfg.num_outer_steps
        if (i + 1) % cfg.log_every == 0 or last:
            for k in curves:
                curves[k].append((i + 1, float(jnp.mean(jnp.stack(window[k])))))
                window[k] = []
            done = i + 1
            elapsed = time.perf_counter() - compiled_at
            rate = (done - 1) / elapsed if elapsed > 0 and done > 1 else float("nan")
            eta = (cfg.num_outer_steps - done) / rate if rate == rate and rate > 0 else float("nan")
            log(
                f"meta_train: outer step {done}/{cfg.num_outer_steps}"
                f" meta_loss={curves['meta_loss'][-1][1]:.4f} grad_norm={curves['grad_norm'][-1][1]:.3g}"
                f" | {rate:.1f} steps/s, ETA {eta:.0f}s"
            )
    jax.block_until_ready(meta_params)
    seconds = time.perf_counter() - start
    inner = cfg.num_outer_steps * cfg.trunc_length * cfg.num_tasks * 2
    return MetaTrainResult(meta_params, curves, seconds, inner)
