"""evaluate stage: the learned optimizer, its LGL2O-guarded version and tuned Adam on held-out tasks.

For every task of ``evaluate.tasks`` (registered names of :mod:`components.tasks.suite`: other
datasets, architectures, sizes, horizons than meta-training, fine-tuning from the pretrain stage's
weights), trained for its own horizon and batch size unless ``evaluate.num_steps`` / ``batch_size``
override them: Adam runs over the whole learning-rate grid and the rate with the lowest mean final (EMA-smoothed)
training loss is "tuned Adam" for that task; the learned and guarded optimizers run once. All of
them use the same seeds (``evaluate.num_seeds``), minibatches and evaluation points. Tuning Adam on
the evaluation seeds favours Adam slightly, which keeps the comparison conservative for the learned
optimizer.

Writes ``metrics/evaluation.json`` (summary per task and optimizer) and ``metrics/curves/<task>.json``
(per-step training loss and train/test loss and accuracy at the evaluation points, mean and std over
seeds). Metrics a task does not have are ``null`` (accuracy of a regression or quadratic, any
held-out metric of a synthetic problem).
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
from components.stages.pretrain import load_pretrained
from components.tasks.spec import eval_sets, make_task, task_data
from components.tasks.suite import get_spec

__all__ = ["VERSION", "METRICS", "CURVES_DIR", "OPTIMIZERS", "run"]

VERSION = "1"
METRICS = Path("metrics/evaluation.json")
CURVES_DIR = Path("metrics/curves")
OPTIMIZERS = ("learned", "guarded", "adam_tuned")


def _stats(a: np.ndarray) -> dict:
    return {"mean": a.mean(axis=0).tolist(), "std": a.std(axis=0).tolist()}


def task_setup(params: PipelineParams, root: Path, name: str):
    """The task ``name`` of ``evaluate.tasks`` with its training data and evaluation sets.

    Fine-tuning tasks start from the pretrain stage's params (``models/pretrained``).
    Returns ``(task, train_data, eval_sets, num_steps)``.
    """
    ev = params.evaluate
    spec = get_spec(name)
    arrays = load_prepared(root, params.data.require(spec.dataset, f"evaluate task {name!r}")) if spec.dataset else {}
    pretrained = load_pretrained(root, spec) if spec.is_finetune else None
    task = make_task(spec, pretrained=pretrained, batch_size=ev.batch_size_of(name))
    sets = jax.tree_util.tree_map(jnp.asarray, eval_sets(spec, arrays, ev.eval_examples))
    return task, task_data(spec.dataset, arrays), sets, ev.steps_of(name)


def evaluate_task(
    params: PipelineParams, root: Path, name: str, lopt, meta_params, safeguard: dict, log: Logger
) -> dict:
    ev = params.evaluate
    task, train, eval_sets_, num_steps = task_setup(params, root, name)
    seed_keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(params.seed), 2), ev.num_seeds)
    common = dict(keys=seed_keys, num_steps=num_steps, eval_every=ev.eval_every)
    t0 = time.perf_counter()

    learned = lopt.make(meta_params, num_steps=num_steps)
    runs = {
        "learned": train_curves(task, lambda _: learned, jnp.zeros(1), train, eval_sets_, **common),
        "guarded": train_curves(
            task,
            guarded_factory(lopt, meta_params, safeguard["guard"], num_steps, safeguard.get("loss_batch", "same")),
            jnp.asarray([safeguard["learning_rate"]], jnp.float32),
            train,
            eval_sets_,
            **common,
        ),
    }
    lrs = ev.adam_lr_grid.values()
    adam = train_curves(
        task, lambda lr: make_baseline("adam", lr), jnp.asarray(lrs, jnp.float32), train, eval_sets_, **common
    )
    adam_final = ema(np.asarray(adam["batch_loss"]).mean(axis=1), ev.smoothing)[:, -1]  # [H]
    adam_final = np.where(np.isfinite(adam_final), adam_final, np.inf)
    best = int(np.argmin(adam_final))
    runs["adam_tuned"] = jax.tree_util.tree_map(lambda a: a[best : best + 1], adam)
    seconds = time.perf_counter() - t0

    steps = list(range(0, num_steps + 1, ev.eval_every))
    adam_grid_curves = np.asarray(adam["batch_loss"]).mean(axis=1)  # [H, T], seed-averaged
    has_acc = bool(getattr(task, "has_accuracy", True))
    metric_keys = [f"{s}_{m}" for s in eval_sets_ for m in ("loss", "acc") if m == "loss" or has_acc]
    summary = {}
    curves = {"task": name, "steps": steps, "num_steps": num_steps, "optimizers": {}}
    for opt_name in OPTIMIZERS:
        r = {k: np.asarray(v[0]) for k, v in runs[opt_name].items() if k != "opt_state"}  # [S, ...]
        batch_loss = r["batch_loss"]
        row = {
            "final_train_loss": summarize_runs(ema(batch_loss, ev.smoothing)[:, -1]),
            **{f"final_{k}": summarize_runs(r[k][:, -1]) if k in metric_keys else None for k in _FINAL_KEYS},
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
            **{k: _stats(r[k]) for k in metric_keys},
        }
    summary["num_steps"] = num_steps
    summary["adam_tuned"]["learning_rate"] = lrs[best]
    summary["adam_tuned"]["lr_at_grid_edge"] = best in (0, len(lrs) - 1)
    summary["adam_grid"] = [
        {"learning_rate": lr, "final_train_loss": float(v) if math.isfinite(v) else None}
        for lr, v in zip(lrs, adam_final)
    ]
    headline = "test_acc" if "test_acc" in metric_keys else ("test_loss" if "test_loss" in metric_keys else None)
    if headline:
        shown = " ".join(
            f"{o}={summary[o]['final_' + headline]['mean']:.3f}" for o in ("learned", "guarded", "adam_tuned")
        )
        shown = f"{headline.replace('_', ' ')} {shown}"
    else:
        shown = "train loss " + " ".join(
            f"{o}={summary[o]['final_train_loss']['mean']:.4g}" for o in ("learned", "guarded", "adam_tuned")
        )
    log(
        f"evaluate: {name} ({num_steps} steps): {shown} (adam lr={lrs[best]:.3g});"
        f" speedup learned={summary['learned']['speedup']:.2f} guarded={summary['guarded']['speedup']:.2f}"
        f" ({seconds:.0f}s)"
    )
    return {"name": name, "summary": summary, "curves": curves, "seconds": seconds}


_FINAL_KEYS = ("test_loss", "test_acc", "train_acc")


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
        "num_steps": {r["name"]: r["summary"]["num_steps"] for r in results},
        "eval_examples": params.evaluate.eval_examples,
        "component_version": VERSION,
        "params_hash": params_hash(params),
    }
    atomic_write_json(root / METRICS, doc)
    metrics = {"seconds": time.perf_counter() - t0}
    for r in results:
        for opt_name in OPTIMIZERS:
            row = r["summary"][opt_name]
            for k in ("final_train_loss", "final_test_loss", "final_test_acc"):
                if row[k] is not None:
                    metrics[f"{r['name']}/{opt_name}/{k}"] = row[k]["mean"]
            metrics[f"{r['name']}/{opt_name}/speedup"] = row["speedup"]
    for opt_name, agg in doc["aggregate"].items():
        for k, v in agg.items():
            if v is not None:
                metrics[f"aggregate/{opt_name}/{k}"] = v
    curves = {}
    for r in results:
        steps = r["curves"]["steps"]
        for opt_name in OPTIMIZERS:
            for k in ("test_loss", "test_acc"):
                if k in r["curves"]["optimizers"][opt_name]:
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
            # over the tasks that have a test accuracy (None if none has: e.g. only language models)
            "mean_test_acc": _mean_or_none([s[opt_name]["final_test_acc"] for s in summaries]),
            "tasks_faster_than_adam": int(
                sum(s[opt_name]["speedup"] > 1.0 or s[opt_name]["lower_bound"] for s in summaries)
            ),
        }
    return out


def _mean_or_none(stats: list[dict | None]) -> float | None:
    vals = [st["mean"] for st in stats if st is not None]
    return float(np.mean(vals)) if vals else None
