"""The meta-training loop: an outer optimizer (AdamW) on estimated meta-gradients.

The hot path is one jitted call per ``steps_per_call`` outer steps (``lax.scan`` over outer steps;
each one a whole truncation or unroll for every task of every family, see
:mod:`components.meta.estimators`). The Python loop only runs over those calls: it reports progress
(a bar with outer steps/s, inner steps/s and ETA), collects the curves as values (the caller decides
what to log) and writes checkpoints from which ``resume=True`` continues exactly: outer step ``i``
always draws its randomness from ``fold_in(key, i)``, and the restored state is bit-for-bit the saved
one, so an interrupted and resumed run ends with the same meta-params as an uninterrupted one.

Several task families (Celo: one per dataset) each get their own estimator and persistent state; their
meta-gradients are averaged. Non-finite meta-gradient entries are zeroed and counted (curve
``nonfinite``) before clipping by value and AdamW.
"""

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from components.meta.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from components.meta.estimators import build_estimator
from components.meta.frozen import penalty_gradient, trainable_mask
from components.meta.sharding import describe, place_tasks, task_mesh

__all__ = ["MetaTrainConfig", "MetaTrainResult", "outer_optimizer", "meta_train", "progress_line", "FAULT_ENV"]

FAULT_ENV = "L2O_FAULT_KILL_AT_OUTER_STEP"
"""Fault injection for tests: the process SIGKILLs itself once this many outer steps are done."""

CURVES = ("meta_loss", "train_loss", "grad_norm", "nonfinite")


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    num_outer_steps: int
    num_tasks: int = 8  # per family (estimator)
    trunc_length: int = 20
    min_unroll: int = 200
    max_unroll: int = 1000
    sigma: float = 0.01
    outer_lr: float = 1e-3
    outer_lr_schedule: str = "constant"  # or "cosine": decays to 10% of outer_lr at the last step
    outer_weight_decay: float = 0.0
    grad_clip: float = 3.0
    log_every: int = 50
    estimator: str = "pes"  # "pes" | "es" | "tbptt" (components.meta.estimators)
    es_loss_type: str = "avg"
    es_recompute_samples: int = 50
    sign_delta_loss: float | None = None
    steps_per_call: int = 1  # outer steps per compiled call (lax.scan); divides log_every / checkpoint_every
    checkpoint_every: int | None = None
    shard: bool = True  # split the population over all local devices when there are several

    def __post_init__(self):
        for name in ("log_every", "checkpoint_every"):
            every = getattr(self, name)
            if every is not None and every % self.steps_per_call:
                raise ValueError(f"{name} ({every}) must be a multiple of steps_per_call ({self.steps_per_call})")


@dataclasses.dataclass
class MetaTrainResult:
    meta_params: Any
    curves: dict[str, list[tuple[int, float]]]
    seconds: float
    inner_steps: int
    resumed_from: int = 0  # the outer step restored from a checkpoint (0: a fresh run)


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


def progress_line(done: int, total: int, outer_rate: float, inner_rate: float, extra: str = "", width: int = 20) -> str:
    """``[#####...............] 25/100 outer | 3.10 outer/s | 12.4k inner/s | ETA 24s | extra``."""
    filled = int(round(width * done / max(1, total)))
    eta = (total - done) / outer_rate if outer_rate == outer_rate and outer_rate > 0 else float("nan")
    eta_s = f"{eta:.0f}s" if eta == eta else "?"
    inner_s = f"{inner_rate / 1e3:.1f}k" if inner_rate == inner_rate else "?"
    bar = "#" * filled + "." * (width - filled)
    line = f"[{bar}] {done}/{total} outer | {outer_rate:.2f} outer/s | {inner_s} inner/s | ETA {eta_s}"
    return f"{line} | {extra}" if extra else line


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def meta_train(
    lopt,
    family,
    data,
    cfg: MetaTrainConfig,
    *,
    key: jax.Array,
    log: Callable[[str], None] = print,
    init_meta_params: Any = None,
    checkpoint_path: Path | None = None,
    fingerprint: str = "",
    resume: bool = False,
) -> MetaTrainResult:
    """Meta-train ``lopt`` on ``family`` (or several families) with the configured estimator.

    Args:
      lopt: a learned optimizer (``init_meta_params(key)``, ``make(meta_params, *, num_steps)``).
      family: a task family with ``sample(key) -> Task``, or a sequence of them (one estimator each,
        ``cfg.num_tasks`` tasks per family, meta-gradients averaged).
      data: the data the family's tasks index into (a sequence matching ``family``'s).
      cfg: loop and estimator settings.
      key: the only source of randomness.
      log: where progress lines go.
      init_meta_params: start from these meta-params instead of ``lopt.init_meta_params`` (e.g.
        Celo's phase 2 from the phase-1 result).
      checkpoint_path: where to write the loop state every ``cfg.checkpoint_every`` outer steps and at
        the end (atomically).
      fingerprint: identifies the run's settings; a checkpoint with another fingerprint is refused.
      resume: continue from ``checkpoint_path`` if it exists (a fresh run otherwise).

    Frozen meta-params declared by ``lopt.frozen_keys()`` are neither perturbed nor updated, and the
    gradient of ``lopt.meta_penalty`` (if declared) is added to the estimate
    (:mod:`components.meta.frozen`).

    Returns:
      The trained meta-parameters and curves ``meta_loss``, ``train_loss``, ``grad_norm`` and
      ``nonfinite`` (meta-gradient entries zeroed) sampled every ``cfg.log_every`` outer steps
      (averaged over the steps since the previous point).
    """
    families, datas = _as_list(family), _as_list(data)
    if len(families) != len(datas):
        raise ValueError(f"{len(families)} task families but {len(datas)} datasets: pass one data per family")
    mesh = task_mesh(cfg.num_tasks) if cfg.shard else None
    estimator = build_estimator(
        cfg.estimator,
        num_tasks=cfg.num_tasks,
        trunc_length=cfg.trunc_length,
        min_unroll=cfg.min_unroll,
        max_unroll=cfg.max_unroll,
        sigma=cfg.sigma,
        es_loss_type=cfg.es_loss_type,
        es_recompute_samples=cfg.es_recompute_samples,
        sign_delta_loss=cfg.sign_delta_loss,
        mesh=mesh,
    )
    k_init, k_state, k_loop = jax.random.split(key, 3)
    meta_params = lopt.init_meta_params(k_init) if init_meta_params is None else init_meta_params
    opt = outer_optimizer(cfg, trainable_mask(lopt, meta_params))
    opt_state = opt.init(meta_params)
    state_keys = jax.random.split(k_state, len(families))
    states = tuple(estimator.init_state(lopt, meta_params, fam, k) for fam, k in zip(families, state_keys, strict=True))
    datas = tuple(datas)

    def one_outer_step(carry, step_key, datas):
        meta_params, opt_state, states = carry
        fam_keys = jax.random.split(step_key, len(families))
        grads, new_states, auxes = [], [], []
        for fam, st, dat, k in zip(families, states, datas, fam_keys, strict=True):
            g, st, aux = estimator.gradient(lopt, meta_params, fam, st, dat, k)
            grads.append(g)
            new_states.append(st)
            auxes.append(aux)
        grad = jax.tree_util.tree_map(lambda *gs: sum(gs) / len(gs), *grads)
        penalty = penalty_gradient(lopt, meta_params)
        if penalty is not None:
            grad = jax.tree_util.tree_map(jnp.add, grad, penalty)
        nonfinite = sum(jnp.sum(~jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grad))
        clean = jax.tree_util.tree_map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grad)
        updates, opt_state = opt.update(clean, opt_state, meta_params)
        meta_params = optax.apply_updates(meta_params, updates)
        out = {
            "meta_loss": jnp.mean(jnp.stack([a["meta_loss"] for a in auxes])),
            "train_loss": jnp.mean(jnp.stack([a["train_loss"] for a in auxes])),
            "grad_norm": optax.global_norm(clean),
            "nonfinite": jnp.asarray(nonfinite, jnp.float32),
            "inner_steps": sum(jnp.asarray(a["inner_steps"], jnp.float32) for a in auxes),
        }
        return (meta_params, opt_state, tuple(new_states)), out

    @jax.jit
    def outer_call(meta_params, opt_state, states, datas, step_keys):
        # data is an argument of the compiled call, never a baked-in constant
        body = lambda carry, k: one_outer_step(carry, k, datas)  # noqa: E731
        carry, outs = jax.lax.scan(body, (meta_params, opt_state, states), step_keys)
        return (*carry, outs)

    # --- restore --------------------------------------------------------------------------------
    start_step, curves, window, inner_total = 0, {k: [] for k in CURVES}, {k: [] for k in CURVES}, 0
    if checkpoint_path is not None and resume and Path(checkpoint_path).exists():
        (meta_params, opt_state, states), header = load_checkpoint(checkpoint_path, (meta_params, opt_state, states))
        if header.get("fingerprint") != fingerprint:
            raise CheckpointError(
                f"checkpoint {checkpoint_path} was written by a run with other settings"
                f" (fingerprint {header.get('fingerprint')!r}, this run {fingerprint!r}): delete it or run without"
                " --resume to start over"
            )
        start_step = int(header["step"])
        curves = {k: [tuple(p) for p in header["curves"].get(k, [])] for k in CURVES}
        window = {k: [np.float32(v) for v in header["window"].get(k, [])] for k in CURVES}
        inner_total = int(header["inner_steps"])
        log(f"meta_train: resumed from {checkpoint_path} at outer step {start_step}/{cfg.num_outer_steps}")
    elif resume:
        log(f"meta_train: --resume: no checkpoint at {checkpoint_path}, starting from outer step 0")
    states = place_tasks(states, mesh)
    log(
        f"meta_train: {cfg.estimator} x {len(families)} famil{'y' if len(families) == 1 else 'ies'},"
        f" {cfg.num_tasks} tasks each, {cfg.steps_per_call} outer step(s) per compiled call, {describe(mesh)}"
    )

    def save(step: int) -> None:
        if checkpoint_path is None:
            return
        header = {
            "step": step,
            "fingerprint": fingerprint,
            "curves": curves,
            "window": {k: [float(v) for v in vs] for k, vs in window.items()},
            "inner_steps": inner_total,
        }
        save_checkpoint(checkpoint_path, (meta_params, opt_state, states), header)

    start = time.perf_counter()
    compiled_at = None
    fault_at = int(os.environ.get(FAULT_ENV, "0") or 0)
    step = start_step
    steps_done_timed, inner_timed = 0, 0
    while step < cfg.num_outer_steps:
        n = min(cfg.steps_per_call, cfg.num_outer_steps - step)
        keys = jnp.stack([jax.random.fold_in(k_loop, i) for i in range(step, step + n)])
        meta_params, opt_state, states, outs = outer_call(meta_params, opt_state, states, datas, keys)
        outs = jax.device_get(outs)
        for k in CURVES:
            window[k].extend(np.asarray(outs[k], np.float32).tolist())
        inner_now = int(np.sum(outs["inner_steps"]))
        inner_total += inner_now
        step += n
        if compiled_at is None:
            compiled_at = time.perf_counter()
            log(f"meta_train: compiled the outer step in {compiled_at - start:.1f}s")
        else:
            steps_done_timed += n
            inner_timed += inner_now
        last = step == cfg.num_outer_steps
        if step % cfg.log_every == 0 or last:
            for k in CURVES:
                if window[k]:
                    curves[k].append((step, float(np.mean(np.asarray(window[k], np.float32)))))
                window[k] = []
            extra = f"meta_loss={curves['meta_loss'][-1][1]:.4f} grad_norm={curves['grad_norm'][-1][1]:.3g}"
            if curves["nonfinite"][-1][1] > 0:
                extra += f" nonfinite={curves['nonfinite'][-1][1]:.0f}"
            # rates exclude the first (compiling) call
            elapsed = time.perf_counter() - compiled_at
            ok = elapsed > 0 and steps_done_timed > 0
            outer_rate = steps_done_timed / elapsed if ok else float("nan")
            inner_rate = inner_timed / elapsed if ok else float("nan")
            log(f"meta_train: {progress_line(step, cfg.num_outer_steps, outer_rate, inner_rate, extra)}")
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or last):
            save(step)
        if fault_at and step >= fault_at and not last:
            log(f"meta_train: {FAULT_ENV}={fault_at}: killing this process at outer step {step}")
            os.kill(os.getpid(), signal.SIGKILL)
    jax.block_until_ready(meta_params)
    seconds = time.perf_counter() - start
    return MetaTrainResult(meta_params, curves, seconds, inner_total, resumed_from=start_step)
