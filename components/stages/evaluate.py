"""evaluate stage: the papers' protocol -- learned and safeguarded optimizers against LR-tuned baselines.

For every task of ``evaluate.tasks`` (registered names of :mod:`components.tasks.suite`: other
datasets, architectures, sizes, horizons than meta-training, fine-tuning from the pretrain stage's
weights), trained for its own horizon and batch size unless ``evaluate.num_steps`` / ``batch_size``
override them:

* **Validation split.** ``evaluate.validation_fraction`` of the training examples (the last ones;
  at most ``eval_examples``; for char LMs the end of the task's token range) is held out: no
  optimizer trains on it, and it is scored at every evaluation point.
* **Baselines** (``evaluate.baselines``, Celo's protocol): each hand-designed optimizer runs over the
  whole ``evaluate.lr_grid`` (default 1e-5 to 1 in half-decades) and ``num_seeds`` seeds in *one*
  compiled program (``vmap`` over rates and seeds, ``lax.scan`` over steps). Its rate for the task is
  the one with the lowest seed-mean final validation loss; synthetic problems, which have no
  held-out data, are tuned on the final EMA-smoothed training loss. Test metrics are reported at
  the tuned rate, so test data never chooses anything.
* **Learned and safeguarded optimizers** run untuned (the guard's rate is the calibrate stage's).
* **Long horizon.** With ``horizon_multiplier`` k > 1 the learned and safeguarded optimizers and
  tuned Adam (at its tuned rate, the reference) also train for k times the task's horizon; learned
  optimizers are told the longer horizon (``num_steps``), as a user would. This is the stability
  test of LGL2O and STAR; the other baselines are compared at the task's horizon only.

All optimizers use the same seeds, minibatches and evaluation points. Metrics (final train / val /
test loss and accuracy, speedup over tuned Adam by the envelope method, final-loss ratio,
divergences, fallback rate) are defined in :mod:`components.evaluation.metrics`; the cross-task
aggregates (IQM with stratified bootstrap CIs, shares of tasks beating tuned Adam and beating all
competitors) in :mod:`components.evaluation.stats`.

Evaluation tasks are Prefect tasks when the pipeline runs them: the fan-out goes through
``map_fn`` with a picklable :class:`EvalJob`, so a thread pool, a Dask ``LocalCluster`` or a remote
Dask scheduler can run them (``evaluate.runner``).

Writes ``metrics/evaluation.json`` (per task and optimizer, and the aggregate), ``metrics/curves/<task>.json``
(per-step training loss and evaluation metrics, mean and std over seeds; tuned baselines at their
rate) and ``plots/evaluation/<task>.json`` (smoothed training loss per optimizer, for ``dvc plots``).
Metrics a task does not have are ``null`` (accuracy of a regression, any held-out metric of a
synthetic problem).
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from components.evaluation import ema, final_loss_ratio, speedup_over_adam, summarize_runs, train_curves
from components.evaluation.stats import stratified_bootstrap_ci, win_fractions
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
from components.tasks.language import token_bounds, token_windows
from components.tasks.spec import dataset_info, eval_sets, make_task, task_data
from components.tasks.suite import get_spec

__all__ = [
    "VERSION",
    "METRICS",
    "HEADLINE",
    "CURVES_DIR",
    "PLOTS_DIR",
    "LEARNED",
    "EvalJob",
    "evaluate_job",
    "optimizer_names",
    "task_setup",
    "run",
]

VERSION = "2"
METRICS = Path("metrics/evaluation.json")
HEADLINE = Path("metrics/headline.json")
CURVES_DIR = Path("metrics/curves")
PLOTS_DIR = Path("plots/evaluation")
# the experiment's own optimizers (untuned): name -> kind
LEARNED = {"learned": "learned", "guarded": "safeguarded"}
# final values of the evaluation sets (the final training loss is the smoothed minibatch loss instead)
_EVAL_KEYS = ("train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


def optimizer_names(params: PipelineParams) -> list[str]:
    """Every optimizer the stage evaluates: the learned ones, then the baselines in params order."""
    return [*LEARNED, *params.evaluate.baselines]


def _stats(a: np.ndarray) -> dict:
    return {"mean": a.mean(axis=0).tolist(), "std": a.std(axis=0).tolist()}


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def task_setup(params: PipelineParams, root: Path, name: str):
    """The task ``name`` of ``evaluate.tasks`` with its training data and evaluation sets.

    The validation split is carved off the training data here: image and sequence datasets hold out
    their last ``validation_fraction`` of training examples (at most ``eval_examples``), char LMs the
    end of their token range; synthetic problems have none. Fine-tuning tasks start from the pretrain
    stage's params (``models/pretrained``).

    Returns:
      ``(task, train_data, eval_sets, num_steps)``; ``eval_sets`` holds ``train``, ``val`` and
      ``test`` batches (``{}`` for synthetic problems).
    """
    ev = params.evaluate
    spec = get_spec(name)
    arrays = load_prepared(root, params.data.require(spec.dataset, f"evaluate task {name!r}")) if spec.dataset else {}
    pretrained = load_pretrained(root, spec) if spec.is_finetune else None
    kind = dataset_info(spec.dataset).kind
    val = None
    if kind in ("image", "sequence"):
        n = len(arrays["y_train"])
        n_val = min(max(1, int(n * ev.validation_fraction)), ev.eval_examples)
        if n - n_val < 1:
            raise ValueError(f"task {name!r}: {n} training examples leave none to train on after the validation split")
        val = (arrays["x_train"][n - n_val :], arrays["y_train"][n - n_val :])
        arrays = {**arrays, "x_train": arrays["x_train"][: n - n_val], "y_train": arrays["y_train"][: n - n_val]}
    elif kind == "text":
        lo, hi = spec.token_range
        cut = lo + (hi - lo) * (1.0 - ev.validation_fraction)
        tokens = np.asarray(arrays["train_tokens"])
        a, b = token_bounds(len(tokens), (cut, hi), spec.arch.context)
        val = token_windows(tokens[a:b], spec.arch.context, ev.eval_examples)
        spec = dataclasses.replace(spec, token_range=(lo, cut))
    task = make_task(spec, pretrained=pretrained, batch_size=ev.batch_size_of(name))
    sets = eval_sets(spec, arrays, ev.eval_examples)
    if val is not None:
        sets = {"train": sets["train"], "val": val, "test": sets["test"]}
    sets = jax.tree_util.tree_map(jnp.asarray, sets)
    return task, task_data(spec.dataset, arrays), sets, ev.steps_of(name)


@dataclasses.dataclass(frozen=True)
class EvalJob:
    """One evaluation task, picklable for process and remote runners: everything else is read from ``root``."""

    params: PipelineParams
    root: str
    task: str


def evaluate_job(job: EvalJob) -> dict:
    """Evaluate one task from the files of the project at ``job.root`` (what a runner executes)."""
    root = Path(job.root)
    lopt, meta_params, _ = load_meta_params(root / MODEL_DIR)
    safeguard = json.loads((root / SAFEGUARD).read_text())
    print(f"evaluate: {job.task}: started", flush=True)  # in the worker's output: progress while tasks run
    result = evaluate_task(job.params, root, job.task, lopt, meta_params, safeguard)
    print(f"evaluate: {job.task}: done in {result['seconds']:.0f}s", flush=True)
    return result


def _tuning_scores(out: dict, smoothing: float) -> tuple[np.ndarray, str]:
    """Per learning rate, the seed-mean score the rate is tuned on (lower is better) and its name."""
    if "val_loss" in out:
        scores, metric = np.asarray(out["val_loss"])[:, :, -1].mean(axis=1), "val_loss"
    else:
        scores, metric = ema(np.asarray(out["batch_loss"]).mean(axis=1), smoothing)[:, -1], "train_loss"
    return np.where(np.isfinite(scores), scores, np.inf), metric


def _row(r: dict, smoothing: float, metric_keys: list[str]) -> dict:
    """Summary of one optimizer's ``[S, ...]`` runs (no comparison to Adam yet)."""
    batch_loss = r["batch_loss"]
    final = ema(batch_loss, smoothing)[:, -1]
    return {
        "final_train_loss": summarize_runs(final),
        **{f"final_{k}": summarize_runs(r[k][:, -1]) if k in metric_keys else None for k in _EVAL_KEYS},
        "diverged_seeds": int((~np.isfinite(batch_loss[:, -1])).sum()),
        "final_train_loss_per_seed": [_finite_or_none(v) for v in final],
    }


def evaluate_task(params: PipelineParams, root: Path, name: str, lopt, meta_params, safeguard: dict) -> dict:
    """Every optimizer of the experiment on task ``name``: summary, curves, timing and a one-line summary."""
    ev = params.evaluate
    task, train, sets, num_steps = task_setup(params, root, name)
    seed_keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(params.seed), 2), ev.num_seeds)
    t0 = time.perf_counter()

    def untuned(k: int) -> dict:
        steps = num_steps * k
        common = dict(keys=seed_keys, num_steps=steps, eval_every=ev.eval_every * k)
        learned = lopt.make(meta_params, num_steps=steps)
        guard = guarded_factory(lopt, meta_params, safeguard["guard"], steps, safeguard.get("loss_batch", "same"))
        return {
            "learned": train_curves(task, lambda _: learned, jnp.zeros(1), train, sets, **common),
            "guarded": train_curves(
                task, guard, jnp.asarray([safeguard["learning_rate"]], jnp.float32), train, sets, **common
            ),
        }

    runs = untuned(1)
    lrs = ev.lr_grid.values()
    grids, tuned_lr, tuning_metric = {}, {}, "train_loss"
    adam_grid_curves = None
    for b in ev.baselines:
        out = train_curves(
            task,
            lambda lr, b=b: make_baseline(b, lr),
            jnp.asarray(lrs, jnp.float32),
            train,
            sets,
            keys=seed_keys,
            num_steps=num_steps,
            eval_every=ev.eval_every,
        )
        scores, tuning_metric = _tuning_scores(out, ev.smoothing)
        best = int(np.argmin(scores))
        tuned_lr[b] = (best, lrs[best])
        runs[b] = jax.tree_util.tree_map(lambda a, best=best: a[best : best + 1], out)
        final_train = ema(np.asarray(out["batch_loss"]).mean(axis=1), ev.smoothing)[:, -1]
        grids[b] = [
            {"learning_rate": lr, "tuning_score": _finite_or_none(s), "final_train_loss": _finite_or_none(f)}
            for lr, s, f in zip(lrs, scores, final_train)
        ]
        if b == "adam":
            adam_grid_curves = np.asarray(out["batch_loss"]).mean(axis=1)  # [H, T], seed-averaged

    long_runs = {}
    k = ev.horizon_multiplier
    if k > 1:
        long_runs = untuned(k)
        # the reference of the stability table: tuned Adam at its tuned rate (the other baselines
        # are compared at the task's own horizon only, which keeps the cost of k > 1 at three runs)
        long_runs["adam"] = train_curves(
            task,
            lambda lr: make_baseline("adam", lr),
            jnp.asarray([tuned_lr["adam"][1]], jnp.float32),
            train,
            sets,
            keys=seed_keys,
            num_steps=num_steps * k,
            eval_every=ev.eval_every * k,
        )
    seconds = time.perf_counter() - t0

    has_acc = bool(getattr(task, "has_accuracy", True))
    metric_keys = [f"{s}_{m}" for s in sets for m in ("loss", "acc") if m == "loss" or has_acc]
    names = optimizer_names(params)
    arrays = {o: {kk: np.asarray(v[0]) for kk, v in runs[o].items() if kk != "opt_state"} for o in names}
    rows = {o: _row(arrays[o], ev.smoothing, metric_keys) for o in names}
    adam_final = rows["adam"]["final_train_loss"]["mean"]
    adam_final_seeds = ema(arrays["adam"]["batch_loss"], ev.smoothing)[:, -1]
    for o in names:
        row, batch_loss = rows[o], arrays[o]["batch_loss"]
        row["kind"] = LEARNED.get(o, "baseline")
        row.update(speedup_over_adam(adam_grid_curves, batch_loss.mean(axis=0), decay=ev.smoothing))
        row["speedup_per_seed"] = [
            speedup_over_adam(adam_grid_curves, seed_curve, decay=ev.smoothing)["speedup"] for seed_curve in batch_loss
        ]
        row["final_loss_ratio"] = final_loss_ratio(adam_final, row["final_train_loss"]["mean"])
        finals = ema(batch_loss, ev.smoothing)[:, -1]
        # per seed: against tuned Adam on the same seed (same initialisation and minibatches)
        row["final_loss_ratio_per_seed"] = [
            final_loss_ratio(float(a), float(f)) for a, f in zip(adam_final_seeds, finals)
        ]
        if o in tuned_lr:
            best, lr = tuned_lr[o]
            row["learning_rate"] = lr
            row["lr_at_grid_edge"] = best in (0, len(lrs) - 1) and len(lrs) > 1
            row["lr_grid"] = grids[o]
        if o == "guarded":
            row["learning_rate"] = safeguard["learning_rate"]
            row["fallback_fraction"] = summarize_runs(np.asarray(fallback_fraction(runs["guarded"]["opt_state"]))[0])
        if o in long_runs:
            lr_ = {kk: np.asarray(v[0]) for kk, v in long_runs[o].items() if kk != "opt_state"}
            long_row = _row(lr_, ev.smoothing, metric_keys)
            long_row["final_loss_ratio_per_seed"] = [
                final_loss_ratio(float(a), float(f))
                for a, f in zip(
                    ema(np.asarray(long_runs["adam"]["batch_loss"][0]), ev.smoothing)[:, -1],
                    ema(lr_["batch_loss"], ev.smoothing)[:, -1],
                )
            ]
            if o == "guarded":
                long_row["fallback_fraction"] = summarize_runs(
                    np.asarray(fallback_fraction(long_runs["guarded"]["opt_state"]))[0]
                )
            row["long"] = long_row
        else:
            row["long"] = None

    summary = {
        "num_steps": num_steps,
        "long_num_steps": num_steps * k if k > 1 else None,
        "tuning_metric": tuning_metric,
        "optimizers": rows,
    }
    steps = list(range(0, num_steps + 1, ev.eval_every))
    curves = {"task": name, "steps": steps, "num_steps": num_steps, "optimizers": {}, "long": None}
    for o in names:
        r = arrays[o]
        curves["optimizers"][o] = {
            "batch_loss": _stats(r["batch_loss"]),
            "batch_loss_smoothed": _stats(ema(r["batch_loss"], ev.smoothing)),
            **{kk: _stats(r[kk]) for kk in metric_keys},
        }
    if long_runs:
        curves["long"] = {
            "steps": list(range(0, num_steps * k + 1, ev.eval_every * k)),
            "num_steps": num_steps * k,
            "optimizers": {
                o: {
                    "batch_loss_smoothed": _stats(ema(np.asarray(long_runs[o]["batch_loss"][0]), ev.smoothing)),
                    **{kk: _stats(np.asarray(long_runs[o][kk][0])) for kk in metric_keys},
                }
                for o in names
                if o in long_runs
            },
        }

    headline = "test_acc" if "test_acc" in metric_keys else ("test_loss" if "test_loss" in metric_keys else None)
    if headline:
        shown = f"{headline.replace('_', ' ')} " + " ".join(
            f"{o}={rows[o]['final_' + headline]['mean']:.3f}" for o in names
        )
    else:
        shown = "train loss " + " ".join(f"{o}={rows[o]['final_train_loss']['mean']:.4g}" for o in names)
    lr_note = ", ".join(f"{b} lr={tuned_lr[b][1]:.3g}" for b in ev.baselines)
    line = (
        f"evaluate: {name} ({num_steps} steps{f', and {num_steps * k}' if k > 1 else ''}): {shown} ({lr_note});"
        f" speedup learned={rows['learned']['speedup']:.2f} guarded={rows['guarded']['speedup']:.2f}"
        f" ({seconds:.0f}s)"
    )
    return {"name": name, "summary": summary, "curves": curves, "seconds": seconds, "line": line}


def run(params: PipelineParams, root: Path, *, log: Logger = print_logger, map_fn: MapFn = serial_map) -> StageResult:
    """Evaluate every task (fanned out through ``map_fn``) and write the metrics files."""
    root = Path(root)
    t0 = time.perf_counter()
    for needed in (root / MODEL_DIR, root / SAFEGUARD):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} not found: run the meta_train and calibrate stages first (`l2o run`)")
    jobs = [EvalJob(params, str(root.resolve()), name) for name in params.evaluate.tasks]
    results = map_fn(evaluate_job, jobs)
    names = optimizer_names(params)
    for r in results:
        log(r["line"])
    for r in results:
        atomic_write_json(root / CURVES_DIR / f"{r['name']}.json", r["curves"])
        atomic_write_json(root / PLOTS_DIR / f"{r['name']}.json", _plot_rows(r["curves"], names))
    for folder in (CURVES_DIR, PLOTS_DIR):
        for stale in (root / folder).glob("*.json"):
            if stale.stem not in params.evaluate.tasks:
                stale.unlink()
    summaries = {r["name"]: r["summary"] for r in results}
    doc = {
        "optimizers": {o: LEARNED.get(o, "baseline") for o in names},
        "optimizer_order": names,  # display order (the file's keys are sorted)
        "baselines": list(params.evaluate.baselines),
        "tasks": summaries,
        "aggregate": aggregate(summaries, names, n_resamples=params.evaluate.bootstrap_samples, seed=params.seed),
        "num_seeds": params.evaluate.num_seeds,
        "num_steps": {r["name"]: r["summary"]["num_steps"] for r in results},
        "horizon_multiplier": params.evaluate.horizon_multiplier,
        "eval_examples": params.evaluate.eval_examples,
        "validation_fraction": params.evaluate.validation_fraction,
        "lr_grid": params.evaluate.lr_grid.values(),
        "smoothing": params.evaluate.smoothing,
        "eval_every": params.evaluate.eval_every,
        "bootstrap_samples": params.evaluate.bootstrap_samples,
        "confidence": 0.95,
        "component_version": VERSION,
        "params_hash": params_hash(params),
    }
    atomic_write_json(root / METRICS, doc)
    atomic_write_json(root / HEADLINE, headline(doc["aggregate"]))
    metrics = {"seconds": time.perf_counter() - t0}
    for r in results:
        metrics[f"{r['name']}/seconds"] = r["seconds"]
        for o in names:
            row = r["summary"]["optimizers"][o]
            for kk in ("final_train_loss", "final_val_loss", "final_test_loss", "final_test_acc"):
                if row[kk] is not None:
                    metrics[f"{r['name']}/{o}/{kk}"] = row[kk]["mean"]
            metrics[f"{r['name']}/{o}/speedup"] = row["speedup"]
            metrics[f"{r['name']}/{o}/final_loss_ratio"] = row["final_loss_ratio"]
    for o, agg in doc["aggregate"].items():
        for kk, v in _flat(agg).items():
            if v is not None and math.isfinite(v):
                metrics[f"aggregate/{o}/{kk}"] = v
    curves = {}
    for r in results:
        steps = r["curves"]["steps"]
        for o in names:
            for kk in ("test_loss", "test_acc"):
                if kk in r["curves"]["optimizers"][o]:
                    vals = r["curves"]["optimizers"][o][kk]["mean"]
                    curves[f"{r['name']}/{o}/{kk}"] = list(zip(steps, vals))
    log(
        "evaluate: "
        + "; ".join(
            f"{o}: speedup IQM {a['speedup_iqm']['value']:.2f} [{a['speedup_iqm']['ci_low']:.2f},"
            f" {a['speedup_iqm']['ci_high']:.2f}], beats tuned Adam on {a['beats_adam_fraction'] or 0:.0%}"
            for o, a in doc["aggregate"].items()
            if o in LEARNED
        )
    )
    return StageResult(
        stage="evaluate",
        version=VERSION,
        metrics=metrics,
        curves=curves,
        artifacts=[METRICS, HEADLINE, CURVES_DIR, PLOTS_DIR],
    )


def headline(agg: dict) -> dict:
    """``metrics/headline.json``: the aggregate per optimizer as flat numbers (what ``dvc metrics`` shows).

    ``speedup_iqm`` with ``speedup_iqm_ci_low`` / ``_ci_high`` and so on; missing values are left out.
    """
    out = {}
    for o, a in agg.items():
        row = {}
        for k, v in a.items():
            if isinstance(v, dict):
                row[k] = v["value"]
                row[f"{k}_ci_low"], row[f"{k}_ci_high"] = v["ci_low"], v["ci_high"]
            elif isinstance(v, int | float) and not isinstance(v, bool):
                row[k] = v
        out[o] = {k: v for k, v in row.items() if v is not None and math.isfinite(v)}
    return out


def _flat(d: dict, prefix: str = "") -> dict[str, float | None]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, bool) or v is None or isinstance(v, int | float):
            out[f"{prefix}{k}"] = None if v is None else float(v)
    return out


def _plot_rows(curves: dict, names: list[str]) -> list[dict]:
    """``dvc plots`` rows: one per evaluation point, the seed-mean smoothed training loss of each optimizer."""
    stride = max(1, len(curves["optimizers"][names[0]]["batch_loss_smoothed"]["mean"]) // 200)
    rows = []
    n = len(curves["optimizers"][names[0]]["batch_loss_smoothed"]["mean"])
    for i in list(range(0, n, stride)) + ([n - 1] if (n - 1) % stride else []):
        row = {"step": i + 1}
        for o in names:
            v = curves["optimizers"][o]["batch_loss_smoothed"]["mean"][i]
            row[o] = v if math.isfinite(v) else None
        rows.append(row)
    return rows


def aggregate(summaries: dict[str, dict], names: list[str], *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Per optimizer across tasks: the papers' headline numbers.

    * ``speedup_iqm`` / ``final_loss_ratio_iqm``: interquartile mean over (task, seed) scores with a
      stratified bootstrap 95% CI (seeds resampled within each task; rliable's protocol);
    * ``beats_adam_fraction`` / ``beats_all_fraction``: share of tasks on which the optimizer's mean
      final (smoothed) training loss is strictly below tuned Adam's / every other optimizer's (HUB);
    * ``diverged_runs`` of ``total_runs`` (seeds x tasks whose final loss is not finite), and the same
      at the long horizon; ``long_final_loss_ratio_iqm`` at k x the horizon;
    * ``fallback_rate``: a safeguard's mean fallback fraction over tasks and seeds;
    * ``mean_test_acc`` over the tasks with an accuracy.
    """
    tasks = list(summaries)
    final = {o: {t: summaries[t]["optimizers"][o]["final_train_loss"]["mean"] for t in tasks} for o in names}
    wins = win_fractions(final, reference="adam")
    long_names = [o for o in names if all(summaries[t]["optimizers"][o]["long"] is not None for t in tasks)]
    if long_names:
        wins_long = win_fractions(
            {
                o: {t: summaries[t]["optimizers"][o]["long"]["final_train_loss"]["mean"] for t in tasks}
                for o in long_names
            },
            reference="adam",
        )
    out = {}
    for o in names:
        rows = [summaries[t]["optimizers"][o] for t in tasks]
        ci = dict(n_resamples=n_resamples, seed=seed)
        entry = {
            "kind": LEARNED.get(o, "baseline"),
            "speedup_iqm": stratified_bootstrap_ci([r["speedup_per_seed"] for r in rows], **ci),
            "final_loss_ratio_iqm": stratified_bootstrap_ci([r["final_loss_ratio_per_seed"] for r in rows], **ci),
            "beats_adam_fraction": wins[o]["beats_reference"],
            "beats_all_fraction": wins[o]["beats_all"],
            "diverged_runs": int(sum(r["diverged_seeds"] for r in rows)),
            "total_runs": int(sum(len(r["speedup_per_seed"]) for r in rows)),
            "mean_test_acc": _mean_or_none([r["final_test_acc"] for r in rows]),
            "fallback_rate": (
                float(np.mean([r["fallback_fraction"]["mean"] for r in rows]))
                if "fallback_fraction" in rows[0]
                else None
            ),
        }
        if o in long_names:
            entry["long_final_loss_ratio_iqm"] = stratified_bootstrap_ci(
                [r["long"]["final_loss_ratio_per_seed"] for r in rows], **ci
            )
            entry["long_beats_adam_fraction"] = wins_long[o]["beats_reference"]
            entry["long_diverged_runs"] = int(sum(r["long"]["diverged_seeds"] for r in rows))
            entry["long_fallback_rate"] = (
                float(np.mean([r["long"]["fallback_fraction"]["mean"] for r in rows]))
                if "fallback_fraction" in rows[0]["long"]
                else None
            )
        out[o] = entry
    return out


def _mean_or_none(stats: list[dict | None]) -> float | None:
    vals = [st["mean"] for st in stats if st is not None]
    return float(np.mean(vals)) if vals else None
