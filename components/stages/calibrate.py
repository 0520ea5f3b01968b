"""calibrate stage: the LGL2O loss guard of the learned optimizer, with its guard's learning rate
chosen by a sweep on meta-training tasks.

For each learning rate of ``calibrate.lr_grid`` the guarded optimizer ``guard_with_loss(learned,
guard(lr))`` trains ``calibrate.num_tasks`` tasks sampled from the meta-training family (fixed
seed) for ``calibrate.num_steps`` steps; the rate with the lowest mean final training loss
(EMA-smoothed, normalised) wins. Writes ``models/safeguard.json``.
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from components.evaluation import ema, run_training
from components.optimizers import (
    fallback_fraction,
    guard_with_loss,
    load_meta_params,
    make_baseline,
)
from components.stages.common import (
    Logger,
    MapFn,
    StageResult,
    atomic_write_json,
    print_logger,
    serial_map,
)
from components.stages.meta_train import MODEL_DIR, build_family
from components.stages.params import PipelineParams, params_hash

__all__ = ["VERSION", "SAFEGUARD", "run", "guarded_factory"]

VERSION = "1"
SAFEGUARD = Path("models/safeguard.json")


def guarded_factory(lopt, meta_params, guard: str, num_steps: int, loss_batch: str = "same"):
    """``lr -> guard_with_loss(learned, make_baseline(guard, lr), loss_batch=...)`` for the evaluation runner."""
    learned = lopt.make(meta_params, num_steps=num_steps)
    return lambda lr: guard_with_loss(learned, make_baseline(guard, lr), loss_batch=loss_batch)


def _select(guarded: np.ndarray, alone: np.ndarray, rtol: float = 1e-3) -> int:
    """Index of the best guard rate: lowest guarded loss, ties broken by the guard's own loss."""
    guarded = np.where(np.isfinite(guarded), guarded, np.inf)
    alone = np.where(np.isfinite(alone), alone, np.inf)
    tied = np.nonzero(guarded <= guarded.min() * (1 + rtol))[0]
    return int(tied[np.argmin(alone[tied])])


def run(params: PipelineParams, root: Path, *, log: Logger = print_logger, map_fn: MapFn = serial_map) -> StageResult:
    del map_fn  # tasks x learning rates run as one batched program
    root = Path(root)
    cal = params.calibrate
    lopt, meta_params, _ = load_meta_params(root / MODEL_DIR)
    family, data = build_family(params, root)
    lrs = cal.lr_grid.values()
    key = jax.random.fold_in(jax.random.PRNGKey(params.seed), 1)
    make = guarded_factory(lopt, meta_params, cal.guard, cal.num_steps, cal.loss_batch)
    t0 = time.perf_counter()

    k_tasks, k_runs = jax.random.split(key)
    tasks = jax.vmap(family.sample)(jax.random.split(k_tasks, cal.num_tasks))
    run_keys = jax.random.split(k_runs, cal.num_tasks)

    guard_alone = lambda lr: make_baseline(cal.guard, lr)  # noqa: E731

    def one(task, lr, k, data):
        guarded = run_training(task, make, lr, data, {}, k, cal.num_steps, cal.num_steps)
        alone = run_training(task, guard_alone, lr, data, {}, k, cal.num_steps, cal.num_steps)
        return (
            task.normalized_loss(guarded["batch_loss"]),
            task.normalized_loss(alone["batch_loss"]),
            fallback_fraction(guarded["opt_state"]),
        )

    sweep_fn = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0, None, None)), in_axes=(0, None, 0, None)))
    losses, alone, fallbacks = sweep_fn(tasks, jnp.asarray(lrs, jnp.float32), run_keys, data)  # [tasks, H, ...]
    mean_final = ema(np.asarray(losses), 0.95)[..., -1].mean(axis=0)  # [H]
    alone_final = ema(np.asarray(alone), 0.95)[..., -1].mean(axis=0)
    fallbacks = np.asarray(fallbacks).mean(axis=0)
    best = _select(mean_final, alone_final)
    if best in (0, len(lrs) - 1) and len(lrs) > 1:
        log(f"calibrate: WARNING the best guard learning rate {lrs[best]:.3g} is at the edge of the grid")
    sweep = [
        {
            "learning_rate": lr,
            "final_loss": float(fl),
            "guard_alone_final_loss": float(ga),
            "fallback_fraction": float(fb),
        }
        for lr, fl, ga, fb in zip(lrs, mean_final, alone_final, fallbacks)
    ]
    doc = {
        "method": "lgl2o",
        "guard": cal.guard,
        "loss_batch": cal.loss_batch,
        "learning_rate": lrs[best],
        "selection": (
            "lowest mean EMA(0.95)-smoothed normalised final training loss of the guarded optimizer on"
            " meta-training tasks; ties (within 0.1%, e.g. when the guard is never used) go to the rate"
            " with which the guard alone trains best"
        ),
        "sweep": sweep,
        "num_tasks": cal.num_tasks,
        "num_steps": cal.num_steps,
        "component_version": VERSION,
        "params_hash": params_hash(params),
    }
    atomic_write_json(root / SAFEGUARD, doc)
    seconds = time.perf_counter() - t0
    log(
        f"calibrate: guard {cal.guard} lr={lrs[best]:.3g} (final loss {mean_final[best]:.4f},"
        f" fallback fraction {fallbacks[best]:.2f}) in {seconds:.0f}s"
    )
    metrics = {
        "guard_learning_rate": lrs[best],
        "final_loss": float(mean_final[best]),
        "fallback_fraction": float(fallbacks[best]),
        "seconds": seconds,
    }
    return StageResult(
        stage="calibrate",
        version=VERSION,
        metrics=metrics,
        curves={"sweep_final_loss": [(i, float(v)) for i, v in enumerate(mean_final)]},
        artifacts=[SAFEGUARD],
    )
