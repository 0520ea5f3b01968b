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
``nonfinite``) before clipping by value and AdamW. Estimates whose inner losses (meta-loss or training
loss) are non-finite are counted too (curve ``nonfinite_loss``: per outer step, how many of the
families' estimates had one). Non-finite *meta-parameters* end the run: after every compiled call the
loop checks them and raises :class:`NonFiniteMetaParamsError` (naming the step and the fix) before any
checkpoint of them is written.

``on_outer_step`` (a hook called after every compiled call, once its checkpoint is written) lets the
caller watch progress or inject faults: the pipeline's tests kill the process from it to check
that a resumed run ends where an uninterrupted one does.
"""

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from components.meta.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from components.meta.config import MetaTrainConfig
from components.meta.estimators import build_estimator
from components.meta.frozen import penalty_gradient, trainable_mask
from components.meta.sharding import describe, place_tasks, task_mesh

__all__ = ["MetaTrainResult", "NonFiniteMetaParamsError", "outer_optimizer", "meta_train", "progress_line"]

CURVES = ("meta_loss", "train_loss", "grad_norm", "nonfinite", "nonfinite_loss")


class NonFiniteMetaParamsError(RuntimeError):
    """The meta-parameters became inf/nan: the run stops, nothing of them is saved."""


@dataclasses.dataclass
class MetaTrainResult:
    meta_params: Any
    curves: dict[str, list[tuple[int, float]]]
    seconds: float
    inner_steps: int
    resumed_from: int = 0  # the outer step restored from a checkpoint (0: a fresh run)
    nonfinite_losses: int = 0  # estimates (family x outer step) whose inner loss was inf/nan
    # the compiled loop's rate: inner steps and seconds after the first (compiling) call
    timed_inner_steps: int = 0
    timed_seconds: float = 0.0


def outer_optimizer(cfg: MetaTrainConfig, mask: Any = None) -> optax.GradientTransformation:
    """Non-finite meta-gradients are zeroed, clipped by value (then by global norm when
    ``grad_clip_norm`` is set), then AdamW (constant or cosine LR).

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
    clips = [optax.clip(cfg.grad_clip)]
    if cfg.grad_clip_norm is not None:
        clips.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    train = optax.chain(zero_nans, *clips, optax.adamw(lr, weight_decay=cfg.outer_weight_decay))
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


def _init_states(lopt, meta_params, families: list, estimator, key: jax.Array) -> tuple:
    """The estimator's persistent state for every family (one key each)."""
    keys = jax.random.split(key, len(families))
    return tuple(estimator.init_state(lopt, meta_params, fam, k) for fam, k in zip(families, keys, strict=True))


def _outer_call(lopt, families: list, estimator, opt: optax.GradientTransformation) -> Callable:
    """The compiled call: ``lax.scan`` of outer steps over ``step_keys``, one estimate per family."""

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
            "nonfinite_loss": sum(
                jnp.any(~jnp.isfinite(a["meta_loss"]) | ~jnp.isfinite(a["train_loss"])).astype(jnp.float32)
                for a in auxes
            ),
        }
        return (meta_params, opt_state, tuple(new_states)), out

    @jax.jit
    def outer_call(meta_params, opt_state, states, datas, step_keys):
        # data is an argument of the compiled call, never a baked-in constant
        body = lambda carry, k: one_outer_step(carry, k, datas)  # noqa: E731
        carry, outs = jax.lax.scan(body, (meta_params, opt_state, states), step_keys)
        return (*carry, outs)

    return outer_call


@dataclasses.dataclass
class _Progress:
    """The loop's bookkeeping: curves so far, the values since the last curve point, inner steps, and
    the rates (which exclude the first, compiling call). Saved in, and restored from, checkpoints."""

    total: int
    curves: dict = dataclasses.field(default_factory=lambda: {k: [] for k in CURVES})
    window: dict = dataclasses.field(default_factory=lambda: {k: [] for k in CURVES})
    inner_total: int = 0
    nonfinite_losses: int = 0
    started: float = dataclasses.field(default_factory=time.perf_counter)
    compiled_at: float | None = None
    steps_timed: int = 0
    inner_timed: int = 0

    @classmethod
    def from_header(cls, total: int, header: dict) -> "_Progress":
        return cls(
            total,
            curves={k: [tuple(p) for p in header["curves"].get(k, [])] for k in CURVES},
            window={k: [np.float32(v) for v in header["window"].get(k, [])] for k in CURVES},
            inner_total=int(header["inner_steps"]),
            nonfinite_losses=int(header.get("nonfinite_losses", 0)),
        )

    def header(self, step: int, fingerprint: str) -> dict:
        return {
            "step": step,
            "fingerprint": fingerprint,
            "curves": self.curves,
            "window": {k: [float(v) for v in vs] for k, vs in self.window.items()},
            "inner_steps": self.inner_total,
            "nonfinite_losses": self.nonfinite_losses,
        }

    def record(self, outs: dict, n: int, log: Callable[[str], None]) -> None:
        """Adds the ``n`` outer steps of one compiled call."""
        for k in CURVES:
            self.window[k].extend(np.asarray(outs[k], np.float32).tolist())
        inner_now = int(np.sum(outs["inner_steps"]))
        self.nonfinite_losses += int(np.sum(outs["nonfinite_loss"]))
        self.inner_total += inner_now
        if self.compiled_at is None:
            self.compiled_at = time.perf_counter()
            log(f"meta_train: compiled the outer step in {self.compiled_at - self.started:.1f}s")
        else:
            self.steps_timed += n
            self.inner_timed += inner_now

    def point(self, step: int, log: Callable[[str], None]) -> None:
        """A curve point (the mean of the window) and a progress line."""
        for k in CURVES:
            if self.window[k]:
                self.curves[k].append((step, float(np.mean(np.asarray(self.window[k], np.float32)))))
            self.window[k] = []
        curves = self.curves
        extra = f"meta_loss={curves['meta_loss'][-1][1]:.4f} grad_norm={curves['grad_norm'][-1][1]:.3g}"
        if curves["nonfinite"][-1][1] > 0:
            extra += f" nonfinite={curves['nonfinite'][-1][1]:.0f}"
        if curves["nonfinite_loss"] and curves["nonfinite_loss"][-1][1] > 0:
            extra += f" nonfinite_loss={curves['nonfinite_loss'][-1][1]:.2f}"
        elapsed = time.perf_counter() - self.compiled_at
        ok = elapsed > 0 and self.steps_timed > 0
        outer_rate = self.steps_timed / elapsed if ok else float("nan")
        inner_rate = self.inner_timed / elapsed if ok else float("nan")
        log(f"meta_train: {progress_line(step, self.total, outer_rate, inner_rate, extra)}")


def _check_finite(meta_params: Any, step: int, total: int) -> None:
    """Raise :class:`NonFiniteMetaParamsError` if any meta-parameter is inf or nan after ``step``."""
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(meta_params))]
    bad = sum(int(np.sum(~np.isfinite(x))) for x in leaves)
    if bad:
        size = sum(x.size for x in leaves)
        raise NonFiniteMetaParamsError(
            f"meta-training diverged: {bad} of {size} meta-parameters are inf/nan after outer step {step}/{total};"
            " nothing was saved or registered. Lower meta_train.outer_lr, set meta_train.grad_clip_norm"
            " (e.g. 1.0) or shorten the unrolls, then re-run (without --resume)"
        )


def _restore(
    path: Path | None, resume: bool, like: Any, fingerprint: str, total: int, log: Callable[[str], None]
) -> tuple[Any, int, "_Progress"]:
    """``(loop state, outer step, progress)``: saved at ``path`` by a run with ``fingerprint`` when
    resuming from an existing checkpoint, else ``like`` at step 0."""
    if path is None or not resume or not Path(path).exists():
        if resume:
            log(f"meta_train: --resume: no checkpoint at {path}, starting from outer step 0")
        return like, 0, _Progress(total)
    state, header = load_checkpoint(path, like)
    if header.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was written by a run with other settings"
            f" (fingerprint {header.get('fingerprint')!r}, this run {fingerprint!r}): delete it or run without"
            " --resume to start over"
        )
    step = int(header["step"])
    log(f"meta_train: resumed from {path} at outer step {step}/{total}")
    return state, step, _Progress.from_header(total, header)


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
    on_outer_step: Callable[[int, int], None] | None = None,
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
      on_outer_step: called as ``on_outer_step(done, total)`` after every compiled call (and after
        its checkpoint is written) with the outer steps done so far and ``cfg.num_outer_steps``.

    Frozen meta-params declared by ``lopt.frozen_keys()`` are neither perturbed nor updated, and the
    gradient of ``lopt.meta_penalty`` (if declared) is added to the estimate
    (:mod:`components.meta.frozen`).

    Returns:
      The trained meta-parameters and curves ``meta_loss``, ``train_loss``, ``grad_norm``,
      ``nonfinite`` (meta-gradient entries zeroed) and ``nonfinite_loss`` (estimates with an inf/nan inner
      loss) sampled every ``cfg.log_every`` outer steps (averaged over the steps since the previous point).

    Raises:
      NonFiniteMetaParamsError: the meta-parameters became inf/nan (checked after every compiled call,
        before its checkpoint is written).
    """
    families, datas = _as_list(family), tuple(_as_list(data))
    if len(families) != len(datas):
        raise ValueError(f"{len(families)} task families but {len(datas)} datasets: pass one data per family")
    mesh = task_mesh(cfg.num_tasks) if cfg.shard_population else None
    estimator = build_estimator(cfg, mesh)
    k_init, k_state, k_loop = jax.random.split(key, 3)
    meta_params = lopt.init_meta_params(k_init) if init_meta_params is None else init_meta_params
    opt = outer_optimizer(cfg, trainable_mask(lopt, meta_params))
    opt_state, states = opt.init(meta_params), _init_states(lopt, meta_params, families, estimator, k_state)
    outer_call = _outer_call(lopt, families, estimator, opt)

    total = cfg.num_outer_steps
    (meta_params, opt_state, states), step, progress = _restore(
        checkpoint_path, resume, (meta_params, opt_state, states), fingerprint, total, log
    )
    start_step, states = step, place_tasks(states, mesh)
    log(
        f"meta_train: {cfg.estimator} x {len(families)} famil{'y' if len(families) == 1 else 'ies'},"
        f" {cfg.num_tasks} tasks each, {cfg.steps_per_call} outer step(s) per compiled call, {describe(mesh)}"
    )
    progress.started = time.perf_counter()
    while step < total:
        n = min(cfg.steps_per_call, total - step)
        keys = jnp.stack([jax.random.fold_in(k_loop, i) for i in range(step, step + n)])
        meta_params, opt_state, states, outs = outer_call(meta_params, opt_state, states, datas, keys)
        progress.record(jax.device_get(outs), n, log)
        step += n
        _check_finite(meta_params, step, total)
        last = step == total
        if step % cfg.log_every == 0 or last:
            progress.point(step, log)
        if checkpoint_path is not None and cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or last):
            save_checkpoint(checkpoint_path, (meta_params, opt_state, states), progress.header(step, fingerprint))
        if on_outer_step is not None:
            on_outer_step(step, total)
    jax.block_until_ready(meta_params)
    seconds = time.perf_counter() - progress.started
    return MetaTrainResult(
        meta_params,
        progress.curves,
        seconds,
        progress.inner_total,
        resumed_from=start_step,
        nonfinite_losses=progress.nonfinite_losses,
        timed_inner_steps=progress.inner_timed,
        timed_seconds=time.perf_counter() - progress.compiled_at if progress.compiled_at is not None else 0.0,
    )
