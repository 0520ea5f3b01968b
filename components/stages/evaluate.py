"""evaluate stage: the papers' protocol -- every method of the seed papers against LR-tuned baselines.

For every task of ``evaluate.tasks`` (registered names of :mod:`components.tasks.suite`: other
datasets, architectures, sizes, horizons than meta-training, fine-tuning from the pretrain stage's
weights), trained for its own horizon ``T`` and batch size unless ``evaluate.num_steps`` /
``batch_size`` override them. The protocol's functions live in :mod:`components.evaluation`
(``protocol``: tuning rules and per-task scores; ``aggregate``: across tasks; ``claims``: one table
per claim of the papers); this module reads files, runs the training programs and writes outputs.

* **Validation split.** ``evaluate.validation_fraction`` of the training examples (the last ones;
  at most ``eval_examples``; for char LMs the end of the task's token range) is held out: no
  optimizer trains on it, and it is scored at every evaluation point.
* **The learned family** (untuned on the evaluation tasks), built from the one trained learned
  optimizer: ``learned``; ``hub`` / ``hub_inverted`` (HUB, arXiv 2305.16823); ``lgl2o`` (loss guard,
  arXiv 2201.12426) and ``gl2o`` (Safe-L2O's fixed-point guard, arXiv 2003.01880) with the same
  guard. *Inferred* (the papers tune their hand-designed optimizers but do not say how HUB's Adam
  part is tuned): the hand-designed part of HUB, LGL2O and GL2O is the calibrate stage's guard at
  the rate it chose on meta-training tasks, under the selection rule of each comparison -- so no
  method of the family is tuned on the evaluation tasks.
* **The zoo** (``evaluate.zoo``, empty by default): each pretrained entry of ``models/zoo`` (``l2o zoo``) joins
  the learned family untuned and not re-trained, alone (``zoo.<entry>``), in HUB (``zoo.<entry>.hub``) and
  under LGL2O (``zoo.<entry>.lgl2o``) with the same guard. *Inferred*: its "beats all" share counts the tuned
  baselines and its own family, as the fresh optimizer's does, so adding entries leaves the papers' claims about
  the fresh family as they were; the report ranks every learned optimizer by speedup
  (:mod:`components.reporting.ranking`). ``evaluation.json`` records each entry's lineage (``zoo_entries``).
* **Baselines** (``evaluate.baselines``, Celo's protocol): each runs over the whole
  ``evaluate.lr_grid`` and ``num_seeds`` seeds in *one* compiled program (``vmap`` over rates and
  seeds, ``lax.scan`` over steps); Adam's grid runs ``adam_horizon_multiplier`` (m) x ``T`` steps, the
  speedup normaliser of VeLO (which uses m = 10), so speedups up to m are measurable. Its first ``T``
  steps see the same minibatches as every other run, so the ``T``-step baselines are its prefix.
* **Two selection rules** (:mod:`components.evaluation.protocol`): training-loss comparisons (speedup,
  final-loss ratio, beats tuned Adam on training loss, steps to target) use baselines tuned on the
  smoothed training loss at ``T``; generalisation comparisons (test loss / accuracy, beats all on
  the test metric, AlgoPerf time to target) use baselines tuned on the validation loss at ``T``.
  Test data never chooses anything.
* **Long horizon.** With ``horizon_multiplier`` k > 1 the learned optimizer, HUB, LGL2O and GL2O also
  train k x ``T`` steps (told the longer horizon), against Adam tuned (train rule) for k x ``T`` from
  the same grid: the stability test of LGL2O and STAR.

All optimizers use the same seeds, initialisations and minibatches. Evaluation tasks are Prefect
tasks when the pipeline runs them: the fan-out goes through ``map_fn`` with a picklable
:class:`EvalJob`, so a thread pool, a Dask ``LocalCluster`` or a remote Dask scheduler can run them
(``evaluate.runner``).

Writes ``metrics/evaluation.json`` (per task: each rule's rows, the tuning, the relation to the
meta-training distribution; the aggregates and claim tables), ``metrics/headline.json`` (per
optimizer and rule, flat), ``metrics/curves/<task>.json`` (per-step training loss at the train rule's
rates, held-out metrics at the validation rule's, Adam's envelope, the long runs) and
``plots/evaluation/<task>.json`` (smoothed training loss per optimizer, for ``dvc plots``). Metrics a
task does not have are ``null``.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from components.evaluation.experiment import ProtocolConfig, TaskEvaluation, evaluate_on_task, learned_family
from components.evaluation.methods import LEARNED_KINDS, ZOO_METHODS, base_method, family_variants, zoo_method_names
from components.evaluation.progress import write_line
from components.evaluation.protocol import RULES, finite_or_none
from components.evaluation.summary import aggregate_all, flat_numbers, headline
from components.optimizers import load
from components.optimizers.zoo import entry_dir
from components.stages.common import StageContext, StageResult, atomic_write_json, load_prepared, sha256_file
from components.stages.distribution import task_relations
from components.stages.inputs import load_pretrained
from components.stages.params import PipelineParams, params_hash
from components.stages.paths import (
    CURVES_DIR,
    EVAL_METRICS,
    EVAL_PLOTS_DIR,
    HEADLINE,
    MODEL_DIR,
    SAFEGUARD,
    ZOO_DIR,
)
from components.tasks.language import token_bounds, token_windows
from components.tasks.spec import dataset_info, eval_sets, make_task, task_data
from components.tasks.suite import get_spec

__all__ = [
    "VERSION",
    "EvalJob",
    "evaluate_job",
    "optimizer_names",
    "task_setup",
    "run",
]

VERSION = "3"


def zoo_names(params: PipelineParams) -> list[str]:
    """The optimizer names of ``evaluate.zoo``'s entries (``zoo.<entry>``, ``zoo.<entry>.hub``, ...)."""
    return zoo_method_names(params.evaluate.zoo, params.evaluate.methods)


def learned_names(params: PipelineParams) -> list[str]:
    """The fresh learned family, then every zoo entry's."""
    return [*params.evaluate.methods, *zoo_names(params)]


def optimizer_names(params: PipelineParams) -> list[str]:
    """Every optimizer the stage evaluates: the learned family, the zoo entries', then the baselines in params order."""
    return [*learned_names(params), *params.evaluate.baselines]


def kind_of(o: str) -> str:
    return LEARNED_KINDS.get(base_method(o) or "", "baseline")


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
    lopt, meta_params, _ = load(root / MODEL_DIR)
    zoo = {e: load(f"zoo:{e}", zoo_dir=root / ZOO_DIR) for e in job.params.evaluate.zoo}
    safeguard = json.loads((root / SAFEGUARD).read_text())
    relation = task_relations(job.params).get(job.task)
    write_line(f"evaluate: {job.task}: started")  # in the worker's output: progress while tasks run
    result = evaluate_task(job.params, root, job.task, lopt, meta_params, safeguard, relation, zoo=zoo)
    compiling = sum(t.get("compile_seconds", 0.0) for t in result.timings.values())
    write_line(f"evaluate: {job.task}: done in {result.seconds:.0f}s ({compiling:.0f}s of it compiling)")
    return dataclasses.asdict(result)


def _guard_rates(safeguard: dict) -> dict[str, float]:
    rates = safeguard.get("learning_rates") or {}
    return {r: float(rates.get(r, safeguard["learning_rate"])) for r in RULES}


def protocol_config(params: PipelineParams, name: str) -> ProtocolConfig:
    """The plain values of ``params.evaluate`` that the protocol needs for task ``name``."""
    ev = params.evaluate
    return ProtocolConfig(
        num_steps=ev.steps_of(name),
        eval_every=ev.eval_every,
        lr_grid=tuple(ev.lr_grid.values()),
        baselines=tuple(ev.baselines),
        horizon_multiplier=ev.horizon_multiplier,
        adam_horizon_multiplier=ev.adam_horizon_multiplier,
        smoothing=ev.smoothing,
        methods=tuple(learned_names(params)),
    )


def evaluate_task(
    params: PipelineParams,
    root: Path,
    name: str,
    lopt,
    meta_params,
    safeguard: dict,
    relation: dict | None = None,
    *,
    zoo: dict | None = None,
) -> TaskEvaluation:
    """Task ``name`` with its data from ``root``, through :func:`components.evaluation.experiment.evaluate_on_task`.

    ``zoo`` maps zoo entry names to their loaded checkpoints (``TrainedOptimizer``); each joins the learned
    family as ``zoo.<entry>`` (alone), ``zoo.<entry>.hub`` and ``zoo.<entry>.lgl2o``, with the same guard.
    """
    task, train, sets, _ = task_setup(params, root, name)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(params.seed), 2), params.evaluate.num_seeds)
    guard, loss_batch = safeguard["guard"], safeguard.get("loss_batch", "same")
    fresh = learned_family(lopt, meta_params, guard, loss_batch)
    entries = {e: learned_family(t.lopt, t.meta_params, guard, loss_batch) for e, t in (zoo or {}).items()}

    def family(num_steps: int) -> dict:
        out = fresh(num_steps)
        for e, fam in entries.items():
            members = fam(num_steps)
            for m in ZOO_METHODS:
                out[zoo_method_names([e], (m,))[0]] = members[m]
        return out

    return evaluate_on_task(
        name,
        task,
        train,
        sets,
        keys=keys,
        config=protocol_config(params, name),
        family=family,
        guard=safeguard["guard"],
        guard_rates=_guard_rates(safeguard),
        relation=relation,
    )


_RULES_DOC = {
    "train": "baselines tuned on the seed-mean EMA-smoothed training loss at the task's horizon;"
    " speedup, final-loss ratio, beats tuned Adam on training loss, steps to target",
    "validation": "baselines tuned on the seed-mean validation loss at the task's horizon (synthetic"
    " problems: training loss); test loss / accuracy, beats all on the test metric, AlgoPerf score",
    "long": "Adam tuned (train rule) for k x the horizon, from the same grid; the stability table",
    "hand_part": "HUB, LGL2O and GL2O use the calibrate stage's guard rate chosen by the same rule",
}


def _zoo_entries(params: PipelineParams, root: Path) -> dict:
    """Per zoo entry of ``evaluate.zoo``: its architecture, weights hash and meta-training budget (lineage)."""
    out = {}
    for entry in params.evaluate.zoo:
        path = entry_dir(entry, root / ZOO_DIR)
        config = json.loads((path / "config.json").read_text())
        z = config.get("zoo") or {}
        keep = ("outer_steps_done", "outer_steps_planned", "complete", "wall_time_seconds", "device", "git_commit")
        out[entry] = {
            "architecture": config["architecture"],
            "weights_sha256": sha256_file(path / "weights.safetensors"),
            **{k: z.get(k) for k in keep},
        }
    return out


def _document(params: PipelineParams, results: list[dict], names: list[str], agg: dict, root: Path) -> dict:
    """``metrics/evaluation.json``: the per-task summaries, the aggregates and the protocol's settings (and, only
    with ``evaluate.zoo``, the zoo entries' lineage under ``zoo_entries``)."""
    ev = params.evaluate
    zoo = {"zoo_entries": _zoo_entries(params, root)} if ev.zoo else {}
    return {
        **zoo,
        "optimizers": {o: kind_of(o) for o in names},
        "optimizer_order": names,  # display order (the file's keys are sorted)
        "baselines": list(ev.baselines),
        "rules": _RULES_DOC,
        "tasks": {r["name"]: r["summary"] for r in results},
        "aggregate": agg,
        "num_seeds": ev.num_seeds,
        "num_steps": {r["name"]: r["summary"]["num_steps"] for r in results},
        "horizon_multiplier": ev.horizon_multiplier,
        "adam_horizon_multiplier": max(ev.adam_horizon_multiplier, ev.horizon_multiplier),
        "eval_examples": ev.eval_examples,
        "validation_fraction": ev.validation_fraction,
        "lr_grid": ev.lr_grid.values(),
        "smoothing": ev.smoothing,
        "eval_every": ev.eval_every,
        "bootstrap_samples": ev.bootstrap_samples,
        "confidence": 0.95,
        "component_version": VERSION,
        "params_hash": params_hash(params),
    }


def _tracked_metrics(results: list[dict], names: list[str], agg: dict) -> dict[str, float]:
    """The scalars the orchestrator logs: per task and optimizer, and the headline aggregates."""
    metrics = {}
    for r in results:
        metrics[f"{r['name']}/seconds"] = r["seconds"]
        s = r["summary"]
        for o in names:
            tr, va = s["train"][o], s["validation"][o]
            for kk, v in (
                ("final_train_loss", tr["final_train_loss"]),
                *((kk, va.get(kk)) for kk in ("final_val_loss", "final_test_loss", "final_test_acc")),
            ):
                if v is not None and finite_or_none(v["mean"]) is not None:
                    metrics[f"{r['name']}/{o}/{kk}"] = v["mean"]
            metrics[f"{r['name']}/{o}/speedup"] = tr["speedup"]
            if finite_or_none(tr["final_loss_ratio"]) is not None:
                metrics[f"{r['name']}/{o}/final_loss_ratio"] = tr["final_loss_ratio"]
    for o, row in headline(agg).items():
        for kk, v in flat_numbers(row).items():
            if v is not None and math.isfinite(v):
                metrics[f"aggregate/{o}/{kk}"] = v
    metrics.update(timing_metrics(results))
    return metrics


def timing_metrics(results: list[dict]) -> dict[str, float]:
    """Wall-clock cost per optimizer, for MLflow only (never DVC-tracked files: identical runs, identical hashes).

    Per task and optimizer: ``<task>/<o>/step_us``, the execution time of its training runs divided by their
    training steps (microseconds per step of one run, amortised over the batched runs, compilation apart; it
    includes the task's forward and backward pass and the periodic evaluations), ``<task>/<o>/run_seconds`` and
    ``<task>/<o>/compile_seconds``. Across tasks: ``timing/<o>/step_us`` (the median) and ``timing/<o>/run_seconds``
    and ``timing/<o>/compile_seconds`` (sums).

    No ratio to Adam is formed: Adam's grid runs ``adam_horizon_multiplier`` x the horizon and evaluates that tail
    only every horizon, so its evaluations weigh less per step than the others' (on the tiny experiment SGD with
    momentum, the same update cost, measured 2x Adam's per step). ``benchmarks/optimizer_step.py`` compares the
    updates alone."""
    out: dict[str, float] = {}
    per: dict[str, list] = {}
    for r in results:
        for o, t in (r.get("timings") or {}).items():
            run, compile_ = t.get("run_seconds", 0.0), t.get("compile_seconds", 0.0)
            out[f"{r['name']}/{o}/run_seconds"] = run
            out[f"{r['name']}/{o}/compile_seconds"] = compile_
            us = 1e6 * run / t["steps"] if t.get("steps") else None
            if us is not None:
                out[f"{r['name']}/{o}/step_us"] = us
            per.setdefault(o, []).append((us, run, compile_))
    for o, rows in per.items():
        steps = [u for u, _, _ in rows if u is not None]
        if steps:
            out[f"timing/{o}/step_us"] = float(np.median(steps))
        out[f"timing/{o}/run_seconds"] = float(sum(r for _, r, _ in rows))
        out[f"timing/{o}/compile_seconds"] = float(sum(c for _, _, c in rows))
    return out


def _tracked_curves(results: list[dict], names: list[str]) -> dict[str, list]:
    """The held-out test curves the orchestrator logs as metric histories."""
    curves = {}
    for r in results:
        steps = r["curves"]["steps"]
        for o in names:
            for kk in ("test_loss", "test_acc"):
                if kk in r["curves"]["optimizers"][o]:
                    vals = r["curves"]["optimizers"][o][kk]["mean"]
                    curves[f"{r['name']}/{o}/{kk}"] = [(s_, v) for s_, v in zip(steps, vals) if v is not None]
    return curves


def _headline_line(agg: dict, methods) -> str:
    tr_agg, va_agg = agg["train"], agg["validation"]
    return "evaluate: " + "; ".join(
        f"{o}: speedup IQM {'>=' if tr_agg[o]['speedup_iqm']['lower_bound'] else ''}"
        f"{tr_agg[o]['speedup_iqm']['value']:.2f} [{tr_agg[o]['speedup_iqm']['ci_low']:.2f},"
        f" {tr_agg[o]['speedup_iqm']['ci_high']:.2f}],"
        f" beats tuned Adam on {tr_agg[o]['beats_adam_fraction'] or 0:.0%}"
        f" (train) / {va_agg[o]['test_beats_adam_fraction'] or 0:.0%} (test)"
        for o in methods
    )


def _write_task_files(root: Path, results: list[dict], names: list[str], tasks) -> None:
    """``metrics/curves/<task>.json`` and ``plots/evaluation/<task>.json``; files of tasks no longer run go."""
    for r in results:
        atomic_write_json(root / CURVES_DIR / f"{r['name']}.json", r["curves"])
        atomic_write_json(root / EVAL_PLOTS_DIR / f"{r['name']}.json", _plot_rows(r["curves"], names))
    for folder in (CURVES_DIR, EVAL_PLOTS_DIR):
        for stale in (root / folder).glob("*.json"):
            if stale.stem not in tasks:
                stale.unlink()


def run(params: PipelineParams, root: Path, context: StageContext | None = None) -> StageResult:
    """Evaluate every task (each an item of ``context.map_fn``) and write the metrics files."""
    context = context or StageContext()
    root = Path(root)
    t0 = time.perf_counter()
    for needed in (root / MODEL_DIR, root / SAFEGUARD):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} not found: run the meta_train and calibrate stages first (`l2o run`)")
    ev = params.evaluate
    for entry in ev.zoo:  # before any task runs: an unknown entry fails at once, listing the zoo
        entry_dir(entry, root / ZOO_DIR)
    jobs = [EvalJob(params, str(root.resolve()), name) for name in ev.tasks]
    results = context.map_fn(evaluate_job, jobs)
    names = optimizer_names(params)
    for r in results:
        context.log(r["line"])
    _write_task_files(root, results, names, ev.tasks)
    summaries = {r["name"]: r["summary"] for r in results}
    variants = family_variants(names) if ev.zoo else None  # no zoo: the papers' VARIANTS, as before
    agg = aggregate_all(summaries, names, n_resamples=ev.bootstrap_samples, seed=params.seed, variants=variants)
    atomic_write_json(root / EVAL_METRICS, _document(params, results, names, agg, root))
    atomic_write_json(root / HEADLINE, headline(agg))
    metrics = {"seconds": time.perf_counter() - t0, **_tracked_metrics(results, names, agg)}
    context.log(_headline_line(agg, learned_names(params)))
    return StageResult(
        stage="evaluate",
        version=VERSION,
        metrics=metrics,
        curves=_tracked_curves(results, names),
        artifacts=[EVAL_METRICS, HEADLINE, CURVES_DIR, EVAL_PLOTS_DIR],
    )


def _plot_rows(curves: dict, names: list[str]) -> list[dict]:
    """``dvc plots`` rows in long form, ``{step, optimizer, loss}``: the seed-mean smoothed training loss of each
    optimizer at (at most ~200 of) the evaluation points. dvc.yaml draws ``loss`` against ``step`` with one line
    per ``optimizer`` (the template ``components/reporting/dvc_plot_by_optimizer.json``)."""
    n = len(curves["optimizers"][names[0]]["batch_loss_smoothed"]["mean"])
    stride = max(1, n // 200)
    rows = []
    for o in names:
        mean = curves["optimizers"][o]["batch_loss_smoothed"]["mean"]
        for i in list(range(0, n, stride)) + ([n - 1] if (n - 1) % stride else []):
            rows.append({"step": i + 1, "optimizer": o, "loss": mean[i] if math.isfinite(mean[i]) else None})
    return rows
