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

from components.evaluation import run_training, split_weights
from components.evaluation.experiment import learned_family
from components.evaluation.protocol import RULES, finite_or_none, tune
from components.optimizers import create, fallback_fraction, load
from components.stages.common import StageContext, StageResult, atomic_write_json
from components.stages.inputs import build_family
from components.stages.params import PipelineParams, params_hash
from components.stages.paths import MODEL_DIR, SAFEGUARD
from components.tasks.base import ImageData, stack_datasets

__all__ = ["VERSION", "run", "holdout"]

VERSION = "2"
VALIDATION_FRACTION, VALIDATION_MAX, VALIDATION_BATCHES = 0.1, 2000, 8
_SELECTION = (
    "per rule, by components.evaluation.protocol.tune on meta-training tasks: train = lowest mean"
    " EMA(0.95)-smoothed normalised final training loss of the guarded optimizer, validation = lowest"
    " mean normalised loss on a held-out split of the meta-training data; ties (within 0.1%, e.g. when"
    " the guard is never used) go to the rate with which the guard alone trains best"
)


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


def _sweep(cal, make, tasks, run_keys, lrs, train, val):
    """Every (task, rate) of the sweep in one batched program: ``(guarded, guard alone, validation, fallbacks)``.

    Each is ``[tasks, H, ...]``: the guarded optimizer's and the guard alone's normalised training losses, the
    guarded optimizer's normalised validation loss (zeros without a validation split) and its fallback fraction.
    """
    guard_alone = lambda lr: create(cal.guard, learning_rate=lr)  # noqa: E731
    build, weights = split_weights(make)  # the learned weights are an argument of the program, not constants

    def one(task, lr, k, train, val, weights):
        k_run, k_val = k, jax.random.fold_in(k, 7)
        if val is None:
            sets = {}
        else:  # a fixed validation batch of VALIDATION_BATCHES minibatches of the task's own dataset
            parts = jax.vmap(lambda kk: task.batch(val, kk))(jax.random.split(k_val, VALIDATION_BATCHES))
            sets = {"val": jax.tree_util.tree_map(lambda a: a.reshape(-1, *a.shape[2:]), parts)}
        guarded = run_training(task, lambda h: build(h, weights), lr, train, sets, k_run, cal.num_steps, cal.num_steps)
        alone = run_training(task, guard_alone, lr, train, {}, k_run, cal.num_steps, cal.num_steps)
        val_loss = task.normalized_loss(guarded["val_loss"]) if sets else jnp.zeros(2)
        return (
            task.normalized_loss(guarded["batch_loss"]),
            task.normalized_loss(alone["batch_loss"]),
            val_loss,
            fallback_fraction(guarded["opt_state"]),
        )

    sweep_fn = jax.jit(
        jax.vmap(jax.vmap(one, in_axes=(None, 0, None, None, None, None)), in_axes=(0, None, 0, None, None, None))
    )
    return sweep_fn(tasks, jnp.asarray(lrs, jnp.float32), run_keys, train, val, weights)


def _choose(cal, lrs, losses, alone, val_losses, has_val: bool) -> tuple[dict, np.ndarray]:
    """The evaluation's tuning function per rule, with the tasks as the runs; and the guard alone's scores."""
    as_runs = lambda a: np.swapaxes(np.asarray(a), 0, 1)  # noqa: E731  ([tasks, H, ...] -> [H, tasks, ...])
    alone_final = tune(lrs, as_runs(alone), rule="train", horizon=cal.num_steps, smoothing=0.95).scores
    alone_final = np.asarray([np.inf if v is None else v for v in alone_final])
    chosen = {
        rule: tune(
            lrs,
            as_runs(losses),
            as_runs(val_losses) if has_val else None,
            rule=rule,
            horizon=cal.num_steps,
            eval_index=-1,
            smoothing=0.95,
            tiebreak=alone_final,
        )
        for rule in RULES
    }
    return chosen, alone_final


def _document(params: PipelineParams, lrs, chosen: dict, alone_final, fallbacks, has_val: bool) -> dict:
    """``models/safeguard.json``: the guard, its rate per rule, the tuning and the whole sweep."""
    cal = params.calibrate
    best = chosen["train"].index
    mean_final = np.asarray([np.inf if v is None else v for v in chosen["train"].scores])
    sweep = [
        {
            "learning_rate": lr,
            "final_loss": finite_or_none(fl),
            "validation_loss": chosen["validation"].scores[i] if has_val else None,
            "guard_alone_final_loss": finite_or_none(ga),
            "fallback_fraction": float(fb),
        }
        for i, (lr, fl, ga, fb) in enumerate(zip(lrs, mean_final, alone_final, fallbacks))
    ]
    return {
        "method": "lgl2o",
        "guard": cal.guard,
        "loss_batch": cal.loss_batch,
        "learning_rate": lrs[best],
        "learning_rates": {rule: t.learning_rate for rule, t in chosen.items()},
        "tuning": {rule: t.to_json() for rule, t in chosen.items()},
        "has_validation": has_val,
        "selection": _SELECTION,
        "sweep": sweep,
        "num_tasks": cal.num_tasks,
        "num_steps": cal.num_steps,
        "component_version": VERSION,
        "params_hash": params_hash(params),
    }


def run(params: PipelineParams, root: Path, context: StageContext | None = None) -> StageResult:
    """Sweep the guard's rate on meta-training tasks and write ``models/safeguard.json`` (the module docstring).

    Tasks x learning rates run as one batched program, so ``context.map_fn`` is not used.
    """
    context = context or StageContext()
    log = context.log
    root = Path(root)
    cal = params.calibrate
    lopt, meta_params, _ = load(root / MODEL_DIR)
    family, data = build_family(params, root)
    lrs = cal.lr_grid.values()
    key = jax.random.fold_in(jax.random.PRNGKey(params.seed), 1)
    # LGL2O exactly as the evaluation builds it
    methods = learned_family(lopt, meta_params, cal.guard, cal.loss_batch)
    make = methods(cal.num_steps)["lgl2o"]
    t0 = time.perf_counter()

    k_tasks, k_runs = jax.random.split(key)
    tasks = jax.vmap(family.sample)(jax.random.split(k_tasks, cal.num_tasks))
    run_keys = jax.random.split(k_runs, cal.num_tasks)
    train, val = holdout(data)
    losses, alone, val_losses, fallbacks = _sweep(cal, make, tasks, run_keys, lrs, train, val)
    chosen, alone_final = _choose(cal, lrs, losses, alone, val_losses, val is not None)
    fallbacks = np.asarray(fallbacks).mean(axis=0)
    for rule, t in chosen.items():
        if t.at_edge:
            log(
                f"calibrate: WARNING the best guard learning rate by the {rule} rule, {t.learning_rate:.3g}, is at"
                " the edge of calibrate.lr_grid: widen the grid"
            )
    atomic_write_json(root / SAFEGUARD, _document(params, lrs, chosen, alone_final, fallbacks, val is not None))
    best = chosen["train"].index
    mean_final = np.asarray([np.inf if v is None else v for v in chosen["train"].scores])
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
