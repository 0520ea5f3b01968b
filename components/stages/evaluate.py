"""evaluate stage: the learned optimizer, its LGL2O-guarded version and tuned Adam on held-out tasks.

For every task of ``evaluate.tasks`` (other datasets and/or architectures than meta-training):
Adam runs over the whole learning-rate grid and the rate with the lowest mean final (EMA-smoothed)
training loss is "tuned Adam" for that task; the learned and guarded optimizers run once. All of
them use the same seeds (``evaluate.num_seeds``), minibatches and evaluation points. Tuning Adam on
the evaluation seeds favours Adam slightly, which keeps the comparison conservative for the learned
optimizer.

Writes ``metrics/evaluation.json`` (summary per task and optimizer) and ``metrics/curves/<task>.json``
(per-step training loss and train/test loss and accuracy at the evaluation points, mean and std over
seeds).
"""

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from components.evaluation import ema, final_loss_ratio, speedup_over_adam, summarize_runs, train_curves
from components.optimizers import fallback_fraction, load_meta_params, make_baseline
from components.stages.calibrate import SAFEGUARD, guarded_factory
from components.stages.common import (
    Logger,
    MapFn,
    StageResult,
    atomic_write_json,
    load_prepared,
    print_logger,
    serial_map,
)
from components.stages.meta_train import MODEL_DIR
from components.stages.params import PipelineParams, params_hash
from components.tasks import EVAL_TASKS, make_eval_task, stack_datasets

__all__ = ["VERSION", "METRICS", "CURVES_DIR", "OPTIMIZERS", "run"]

VERSION = "1"
METRICS = Path("metrics/evaluation.json")
CURVES_DIR = Path("metrics/curves")
OPTIMIZERS = ("learned", "guarded", "adam_tuned")


def _stats(a: np.ndarray) -> dict:
    return {"mean": a.mean(axis=0).tolist(), "std": a.std(axis=0).tolist()}


def evaluate_task(
    params: PipelineParams, root: Path, name: str, lopt, meta_params, safeguard: dict, log: Logger
) -> dict:
    ev = params.evaluate
    spec = EVAL_TASKS[name]
    arrays = load_prepared(root, spec.dataset)
    train = stack_datasets([arrays["x_train"]], [arrays["y_train"]])
    n = ev.eval_examples
    eval_sets = {
        "train": (jnp.asarray(arrays["x_train"][:n]), jnp.asarray(arrays["y_train"][:n])),
        "test": (jnp.asarray(arrays["x_test"][:n]), jnp.asarray(arrays["y_test"][:n])),
    }
    num_classes = int(arrays["y_train"].max()) + 1
    task = make_eval_task(
        name, image_shape=arrays["x_train"].shape[1:], num_classes=num_classes, batch_size=ev.batch_size
    )
    seed_keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(params.seed), 2), ev.num_seeds)
    common = dict(keys=seed_keys, num_steps=ev.num_steps, eval_every=ev.eval_every)
    t0 = time.perf_counter()

    learned = lopt.make(meta_params, num_steps=ev.num_steps)
    runs = {
        "learned": train_curves(task, lambda _: learned, jnp.zeros(1), train, eval_sets, **common),
        "guarded": train_curves(
            task,
            guarded_factory(lopt, meta_params, safeguard["guard"], ev.num_steps, safeguard.get("loss_batch", "same")),
            jnp.asarray([safeguard["learning_rate"]], jnp.float32),
            train,
            eval_sets,
            **common,
        ),
    }
    lrs = ev.adam_lr_grid.values()
    adam = train_curves(
        task, lambda lr: make_baseline("adam", lr), jnp.asarray(lrs, jnp.float32), train, eval_sets, **common
    )
    adam_final = ema(np.asarray(adam["batch_loss"]).mean(axis=1), ev.smoothing)[:, -1]  # [H]
    adam_final = np.where(np.isfinite(adam_final), adam_final, np.inf)
    best = int(np.argmin(adam_final))
    runs["adam_tuned"] = jax.tree_util.tree_map(lambda a: a[best : best + 1], adam)
    seconds = time.perf_counter() - t0

    steps = list(range(0, ev.num_steps + 1, ev.eval_every))
    adam_grid_curves = np.asarray(adam["batch_loss"]).mean(axis=1)  # [H, T], seed-averaged
    summary, curves = {}, {"task": name, "steps": steps, "optimizers": {}}
    for opt_name in OPTIMIZERS:
        r = {k: np.asarray(v[0]) for k, v in runs[opt_name].items() if k != "opt_state"}  # [S, ...]
        batch_loss = r["batch_loss"]
        row = {
            "final_train_loss": summarize_runs(ema(batch_loss, ev.smoothing)[:, -1]),
            "final_test_loss": summarize_runs(r["test_loss"][:, -1]),
            "final_test_acc": summarize_runs(r["test_acc"][:, -1]),
            "final_train_acc": summarize_runs(r["train_acc"][:, -1]),
            "diverged_seeds": int((~np.isfinite(batch_loss[:, -1])).sum()),
        }
        row.update(speedup_over_adam(adam_grid_curves, batch_loss.mean(axis=0), decay=ev.smoothing))
        row["final_loss_ratio"] = final_loss_ratio(float(adam_final[best]), row["final_train_loss"]["mean"])
        if opt_name == "guarded":
            fb = np.asarray(fallback_fraction(runs["guarded"]["opt_state"]))[0]
            row["fallback_fraction"] = summarize_runs(fb)
        summary[opt_name] = row
        curves["optimizers"][opt_name] = {
            "batch_loss": _stats(batch_loss),
            "batch_loss_smoothed": _stats(ema(batch_loss, ev.smoothing)),
            **{k: _stats(r[k]) for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
        }
    summary["adam_tuned"]["learning_rate"] = lrs[best]
    summary["adam_tuned"]["lr_at_grid_edge"] = best in (0, len(lrs) - 1)
    summary["adam_grid"] = [
        {"learning_rate": lr, "final_train_loss": float(v) if math.isfinite(v) else None}
        for lr, v in zip(lrs, adam_final)
    ]
    log(
        f"evaluate: {name}: test acc learned={summary['learned']['final_test_acc']['mean']:.3f}"
        f" guarded={summary['guarded']['final_test_acc']['mean']:.3f}"
        f" adam(lr={lrs[best]:.3g})={summary['adam_tuned']['final_test_acc']['mean']:.3f};"
        f" speedup learned={summary['learned']['speedup']:.2f} guarded={summary['guarded']['speedup']:.2f}"
        f" ({seconds:.0f}s)"
    )
    return {"name": name, "summary": summary, "curves": curves, "seconds": seconds}


def run(params: PipelineParams, root: Path, *, log: Logger = print_logger, map_fn: MapFn = serial_map) -> StageResult:
    """Evaluate every task (fanned out through ``map_fn``) and write the metrics files."""
    root = Path(root)
    t0 = time.perf_counter()
    lopt, meta_params, _ = load_meta_params(root / MODEL_DIR)
    safeguard = json.loads((root / SAFEGUARD).read_text())
    results = map_fn(
        lambda name: evaluate_task(params, root, name, lopt, meta_params, safeguard, log), list(params.evaluate.tasks)
    )
    for r in results:
        atomic_write_json(root / CURVES_DIR / f"{r['name']}.json", r["curves"])
    for stale in (root / CURVES_DIR).glob("*.json"):
        if stale.stem not in params.evaluate.tasks:
            stale.unlink()
    doc = {
        "tasks": {r["name"]: r["summary"] for r in results},
        "aggregate": _aggregate([r["summary"] for r in results]),
        "num_seeds": params.evaluate.num_seeds,
        "num_steps": params.evaluate.num_steps,
        "eval_examples": params.evaluate.eval_examples,
        "component_version": VERSION,
        "params_hash": params_hash(params),
    }
    atomic_write_json(root / METRICS, doc)
    metrics = {"seconds": time.perf_counter() - t0}
    for r in results:
        for opt_name in OPTIMIZERS:
            row = r["summary"][opt_name]
            metrics[f"{r['name']}/{opt_name}/final_test_acc"] = row["final_test_acc"]["mean"]
            metrics[f"{r['name']}/{opt_name}/final_test_loss"] = row["final_test_loss"]["mean"]
            metrics[f"{r['name']}/{opt_name}/speedup"] = row["speedup"]
    for opt_name, agg in doc["aggregate"].items():
        for k, v in agg.items():
            metrics[f"aggregate/{opt_name}/{k}"] = v
    curves = {}
    for r in results:
        steps = r["curves"]["steps"]
        for opt_name in OPTIMIZERS:
            for k in ("test_loss", "test_acc"):
                vals = r["curves"]["optimizers"][opt_name][k]["mean"]
                curves[f"{r['name']}/{opt_name}/{k}"] = list(zip(steps, vals))
    return StageResult(
        stage="evaluate", version=VERSION, metrics=metrics, curves=curves, artifacts=[METRICS, CURVES_DIR]
    )


def _aggregate(summaries: list[dict]) -> dict:
    """Per optimizer across tasks: geometric-mean speedup, mean test accuracy, wins over tuned Adam."""
    out = {}
    for opt_name in OPTIMIZERS:
        speedups = np.array([s[opt_name]["speedup"] for s in summaries])
        out[opt_name] = {
            "geomean_speedup": float(np.exp(np.mean(np.log(np.maximum(speedups, 1e-12))))),
            "mean_test_acc": float(np.mean([s[opt_name]["final_test_acc"]["mean"] for s in summaries])),
            "tasks_faster_than_adam": int(
                sum(s[opt_name]["speedup"] > 1.0 or s[opt_name]["lower_bound"] for s in summaries)
            ),
        }
    return out
