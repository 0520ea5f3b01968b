"""calibrate stage: the LGL2O loss guard of the learned optimizer, with its guard's learning rate
chosen by a sweep on meta-training tasks under each of the evaluation's two selection rules.

For each learning rate of ``calibrate.lr_grid`` the guarded optimizer ``guard_with_loss(learned,
guard(lr))`` trains ``calibrate.num_tasks`` tasks sampled from the meta-training family (fixed
seed) for ``calibrate.num_steps`` steps, on the family's data less a validation split (the last
10% of each dataset's training examples, at most 2000). The rate is chosen by
:func:`components.evaluation.protocol.tune`, the evaluation's own tuning function, once per rule:
``train`` (lowest mean EMA-smoothed, normalised final training loss) and ``validation`` (lowest mean
normalised loss on 8 minibatches of the validation split); ties go to the rate with which the guard
alone trains best. The evaluation compares LGL2O, GL2O and HUB (whose hand-designed part is this
guard) at the rate of the rule of each comparison. A family whose data has no per-example split (a
char LM, a synthetic problem) uses the training loss for both rules, and the file says so.
Writes ``models/safeguard.json``.
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from components.evaluation import run_training
from components.evaluation.experiment import learned_family
from components.evaluation.protocol import RULES, finite_or_none, tune
from components.optimizers import (
    create,
    fallback_fraction,
    load,
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
from components.tasks.base import ImageData, stack_datasets

__all__ = ["VERSION", "SAFEGUARD", "run"]

VERSION = "2"
VALIDATION_FRACTION, VALIDATION_MAX, VALIDATION_BATCHES = 0.1, 2000, 8
SAFEGUARD = Path("models/safeguard.json")


def holdout(data) -> tuple:
    """``(train, validation)`` of a family's :class:`ImageData`: the last examples of each dataset held out.

    Returns ``(data, None)`` for other data (token streams, synthetic problems): no per-example split.
    """
    if not isinstance(data, ImageData):
        return data, None
    x, y, n = np.asarray(data.x), np.asarray(data.y), np.asarray(data.n)
    keep, val_x, val_y = [], [], []
    for d, nd in enumerate(n.tolist()):
        nv = min(max(1, int(nd * VALIDATION_FRACTION)), VALIDATION_MAX)
        keep.append(nd - nv)
        val_x.append(x[d, nd - nv : nd])
        val_y.append(y[d, nd - nv : nd])
    train = ImageData(data.x, data.y, jnp.asarray(keep, jnp.int32))
    return train, stack_datasets(val_x, val_y)


def run(params: PipelineParams, root: Path, *, log: Logger = print_logger, map_fn: MapFn = serial_map) -> StageResult:
    del map_fn  # tasks x learning rates run as one batched program
    root = Path(root)
    cal = params.calibrate
    lopt, meta_params, _ = load(root / MODEL_DIR)
    family, data = build_family(params, root)
    lrs = cal.lr_grid.values()
    key = jax.random.fold_in(jax.random.PRNGKey(params.seed), 1)
    # LGL2O exactly as the evaluation builds it
    methods = learned_family(lambda n: lopt.make(meta_params, num_steps=n), cal.guard, cal.loss_batch)
    make = methods(cal.num_steps)["lgl2o"]
    t0 = time.perf_counter()

    k_tasks, k_runs = jax.random.split(key)
    tasks = jax.vmap(family.sample)(jax.random.split(k_tasks, cal.num_tasks))
    run_keys = jax.random.split(k_runs, cal.num_tasks)
    train, val = holdout(data)

    guard_alone = lambda lr: create(cal.guard, learning_rate=lr)  # noqa: E731

    def one(task, lr, k, train, val):
        k_run, k_val = k, jax.random.fold_in(k, 7)
        if val is None:
            sets = {}
        else:  # a fixed validation batch of VALIDATION_BATCHES minibatches of the task's own dataset
            parts = jax.vmap(lambda kk: task.batch(val, kk))(jax.random.split(k_val, VALIDATION_BATCHES))
            sets = {"val": jax.tree_util.tree_map(lambda a: a.reshape(-1, *a.shape[2:]), parts)}
        guarded = run_training(task, make, lr, train, sets, k_run, cal.num_steps, cal.num_steps)
        alone = run_training(task, guard_alone, lr, train, {}, k_run, cal.num_steps, cal.num_steps)
        val_loss = task.normalized_loss(guarded["val_loss"]) if sets else jnp.zeros(2)
        return (
            task.normalized_loss(guarded["batch_loss"]),
            task.normalized_loss(alone["batch_loss"]),
            val_loss,
            fallback_fraction(guarded["opt_state"]),
        )

    sweep_fn = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0, None, None, None)), in_axes=(0, None, 0, None, None)))
    losses, alone, val_losses, fallbacks = sweep_fn(
        tasks, jnp.asarray(lrs, jnp.float32), run_keys, train, val
    )  # [tasks, H, ...]
    # the evaluation's tuning function, with the tasks as the runs: [H, tasks, ...]
    as_runs = lambda a: np.swapaxes(np.asarray(a), 0, 1)  # noqa: E731
    alone_final = tune(lrs, as_runs(alone), rule="train", horizon=cal.num_steps, smoothing=0.95).scores
    alone_final = np.asarray([np.inf if v is None else v for v in alone_final])
    chosen = {
        rule: tune(
            lrs,
            as_runs(losses),
            as_runs(val_losses) if val is not None else None,
            rule=rule,
            horizon=cal.num_steps,
            eval_index=-1,
            smoothing=0.95,
            tiebreak=alone_final,
        )
        for rule in RULES
    }
    fallbacks = np.asarray(fallbacks).mean(axis=0)
    for rule, t in chosen.items():
        if t.at_edge:
            log(
                f"calibrate: WARNING the best guard learning rate by the {rule} rule, {t.learning_rate:.3g}, is at"
                " the edge of calibrate.lr_grid: widen the grid"
            )
    best = chosen["train"].index
    mean_final = np.asarray([np.inf if v is None else v for v in chosen["train"].scores])
    sweep = [
        {
            "learning_rate": lr,
            "final_loss": finite_or_none(fl),
            "validation_loss": chosen["validation"].scores[i] if val is not None else None,
            "guard_alone_final_loss": finite_or_none(ga),
            "fallback_fraction": float(fb),
        }
        for i, (lr, fl, ga, fb) in enumerate(zip(lrs, mean_final, alone_final, fallbacks))
    ]
    doc = {
        "method": "lgl2o",
        "guard": cal.guard,
        "loss_batch": cal.loss_batch,
        "learning_rate": lrs[best],
        "learning_rates": {rule: t.learning_rate for rule, t in chosen.items()},
        "tuning": {rule: t.to_json() for rule, t in chosen.items()},
        "has_validation": val is not None,
        "selection": (
            "per rule, by components.evaluation.protocol.tune on meta-training tasks: train = lowest mean"
            " EMA(0.95)-smoothed normalised final training loss of the guarded optimizer, validation = lowest"
            " mean normalised loss on a held-out split of the meta-training data; ties (within 0.1%, e.g. when"
            " the guard is never used) go to the rate with which the guard alone trains best"
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
        f"calibrate: guard {cal.guard} lr={lrs[best]:.3g} (train rule) /"
        f" {chosen['validation'].learning_rate:.3g} (validation rule) (final loss {mean_final[best]:.4f},"
        f" fallback fraction {fallbacks[best]:.2f}) in {seconds:.0f}s"
    )
    metrics = {
        "guard_learning_rate": lrs[best],
        "guard_learning_rate_validation": chosen["validation"].learning_rate,
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
