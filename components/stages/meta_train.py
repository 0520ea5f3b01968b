"""meta_train stage: meta-train the learned optimizer with truncated PES on the image-MLP family
(or Celo's four-task preset).

Reads ``data/prepared`` and the ``seed`` / ``meta_train`` params; writes the checkpoint directory
``models/lopt`` (weights + ``config.json`` with provenance + ``curves.json``), the summary metrics
``metrics/meta_train.json`` and the DVC plot file ``plots/meta_train.json`` (paths: :mod:`~.paths`).
"""

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import jax
import numpy as np

from components.meta import MetaTrainConfig, meta_train
from components.optimizers import save
from components.optimizers.registry import create_learned
from components.stages.common import (
    StageContext,
    StageResult,
    atomic_write_json,
    read_manifest,
    write_run_log,
)
from components.stages.inputs import build_families
from components.stages.params import PipelineParams, params_hash
from components.stages.paths import CHECKPOINT_DIR, META_METRICS, META_PLOT, MODEL_DIR

__all__ = ["VERSION", "data_hashes", "run"]

VERSION = "3"  # 3: no wall-clock values in the outputs (.l2o/runs/meta_train.json, MLflow); non-finite checks


def lopt_from_params(params: PipelineParams, phase=None):
    mt = params.meta_train
    hyper = mt.lopt_hyperparams if phase is None else mt.phase_hyperparams(phase)
    return create_learned(mt.lopt, **hyper)


def data_hashes(params: PipelineParams, manifest: dict) -> dict[str, str]:
    """``{dataset: sha256}`` of the prepared datasets meta-training reads (as its checkpoints record them)."""
    fam = params.meta_train.task_family
    if fam.task is not None:
        from components.tasks.suite import get_spec  # noqa: PLC0415

        spec = get_spec(fam.task)
        names = [n for n in (spec.dataset, spec.pretrain.dataset if spec.pretrain else None) if n]
    else:
        names = list(fam.datasets)
    return {n: manifest["datasets"][params.data.require(n, "meta_train.task_family")]["sha256"] for n in names}


def _config(params: PipelineParams, num_outer_steps: int) -> MetaTrainConfig:
    """The library config of the ``meta_train`` settings, for a phase of ``num_outer_steps``."""
    return params.meta_train.config(num_outer_steps)


def _fingerprint(params: PipelineParams, data_hashes: dict, phase_index: int) -> str:
    """What a phase's checkpoint depends on: seed, meta_train params, data, stage version, phase."""
    blob = json.dumps(
        {
            "seed": params.seed,
            "meta_train": params.meta_train.model_dump(mode="json"),
            "data": data_hashes,
            "version": VERSION,
            "phase": phase_index,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plan_line(params: PipelineParams, num_estimators: int) -> str:
    mt = params.meta_train
    fam = mt.task_family
    phases = mt.phase_list()
    what = (
        f"task {fam.task}"
        if fam.task
        else f"{list(fam.datasets)} MLP{list(fam.hidden_sizes)}{' (Celo preset)' if fam.preset else ''}"
    )
    per = mt.trunc_length if mt.estimator != "es" else f"{mt.min_unroll}-{mt.max_unroll}"
    return (
        f"meta_train: {mt.lopt} on {what}, {len(phases)} phase(s) [{', '.join(p.name for p in phases)}],"
        f" {mt.estimator}: {num_estimators} estimator(s) x {mt.num_tasks} tasks"
        f"{'' if mt.estimator == 'tbptt' else ' x 2 antithetic'} x {per} inner steps on {jax.default_backend()}"
    )


@dataclasses.dataclass
class _Phases:
    """What the phases produced, in order: the curves on one step axis, one row and one result per phase."""

    curves: dict = dataclasses.field(default_factory=dict)
    rows: list = dataclasses.field(default_factory=list)
    results: list = dataclasses.field(default_factory=list)  # (phase, lopt, meta_params)
    timed_inner_steps: int = 0
    timed_seconds: float = 0.0
    resumed_from: list = dataclasses.field(default_factory=list)  # per phase: the outer step restored (0: fresh)
    nonfinite_losses: int = 0


def _train_phases(params: PipelineParams, root: Path, context: StageContext, families, datas, data_hashes) -> _Phases:
    """Meta-train every phase in order, each from the previous one's meta-params."""
    mt = params.meta_train
    phases = mt.phase_list()
    out = _Phases()
    meta_params, offset = None, 0
    for i, phase in enumerate(phases):
        lopt = lopt_from_params(params, phase)
        steps = mt.phase_steps(phase)
        context.log(
            f"meta_train: phase {i + 1}/{len(phases)} {phase.name!r}: {steps} outer steps, {lopt.name} {lopt.config()}"
        )
        key = (
            jax.random.PRNGKey(params.seed) if i == 0 else jax.random.fold_in(jax.random.PRNGKey(params.seed), 100 + i)
        )
        result = meta_train(
            lopt,
            families if len(families) > 1 else families[0],
            datas if len(datas) > 1 else datas[0],
            _config(params, steps),
            key=key,
            log=context.log,
            init_meta_params=meta_params,
            checkpoint_path=root / CHECKPOINT_DIR / f"{phase.name}.npz" if mt.checkpoint_every else None,
            fingerprint=_fingerprint(params, data_hashes, i),
            resume=context.resume,
            on_outer_step=context.on_outer_step,
        )
        meta_params = result.meta_params
        for k, pts in result.curves.items():
            out.curves.setdefault(k, []).extend((offset + s, v) for s, v in pts)
        out.rows.append(
            {
                "name": phase.name,
                "lopt_hyperparams": mt.phase_hyperparams(phase),
                "first_step": offset + 1,
                "last_step": offset + steps,
            }
        )
        offset += steps
        out.timed_inner_steps += result.timed_inner_steps
        out.timed_seconds += result.timed_seconds
        out.resumed_from.append(result.resumed_from)
        out.nonfinite_losses += result.nonfinite_losses
        out.results.append((phase, lopt, meta_params))
    return out


def _save_models(params: PipelineParams, root: Path, done: _Phases, data_hashes: dict) -> None:
    """The final checkpoint (with provenance), every phase's beside it, and ``curves.json``."""
    metadata = {
        "component": "meta_train",
        "component_version": VERSION,
        "params_hash": params_hash(params),
        "seed": params.seed,
        "meta_train": params.meta_train.model_dump(mode="json"),
        "phases": done.rows,
        "data_hashes": data_hashes,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }
    _, lopt, meta_params = done.results[-1]
    save(root / MODEL_DIR, lopt, meta_params, metadata)
    if len(done.results) > 1:  # every phase's result beside the final one: models/lopt/phases/<name>
        for phase, phase_lopt, phase_params in done.results:
            save(root / MODEL_DIR / "phases" / phase.name, phase_lopt, phase_params, {**metadata, "phase": phase.name})
    # curves.json travels with the checkpoint (written after save: the directory exists now)
    atomic_write_json(root / MODEL_DIR / "curves.json", done.curves)


def _check_final_loss(done: _Phases, num_families: int) -> None:
    """The documented failure rule for non-finite inner losses: they are counted (``nonfinite_losses`` in the
    metrics, curve ``nonfinite_loss``) and tolerated while training recovers from them, but when more than
    half of the estimates of the last curve window had an inf/nan inner loss (or the last meta-loss point is
    itself non-finite) the optimizer diverges its tasks: the stage fails and nothing is saved or registered.
    (Non-finite meta-parameters fail the run earlier, in the loop.)"""
    meta_loss = done.curves.get("meta_loss") or []
    bad = done.curves.get("nonfinite_loss") or []
    if not meta_loss:
        return
    share = bad[-1][1] / num_families if bad else 0.0
    if share > 0.5 or not np.isfinite(meta_loss[-1][1]):
        raise FloatingPointError(
            f"meta-training ended diverging its tasks: at outer step {meta_loss[-1][0]}, {share:.0%} of the last"
            f" window's estimates had an inf/nan inner loss ({done.nonfinite_losses} in the whole run; meta-loss"
            f" {meta_loss[-1][1]:.4g}), so nothing was saved or registered. Lower meta_train.outer_lr or the"
            " optimizer's step size, set meta_train.grad_clip_norm (e.g. 1.0) or shorten the unrolls"
        )


def _write_metrics(root: Path, done: _Phases) -> dict:
    """``metrics/meta_train.json`` and ``plots/meta_train.json`` (no wall-clock values); returns the metrics."""
    curves = done.curves
    meta_loss = curves["meta_loss"]
    meta_params = done.results[-1][2]
    head = float(np.mean([v for _, v in meta_loss[: max(1, len(meta_loss) // 10)]]))
    tail = float(np.mean([v for _, v in meta_loss[-max(1, len(meta_loss) // 10) :]]))
    metrics = {
        "meta_loss_first": head,
        "meta_loss_last": tail,
        "num_meta_params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(meta_params))),
        "nonfinite_meta_grad_entries": float(sum(v for _, v in curves.get("nonfinite", []))),
        "nonfinite_losses": done.nonfinite_losses,
    }
    atomic_write_json(root / META_METRICS, metrics)
    atomic_write_json(
        root / META_PLOT,
        [
            {"step": s, "meta_loss": v, "train_loss": t, "grad_norm": g}
            for (s, v), (_, t), (_, g) in zip(meta_loss, curves["train_loss"], curves["grad_norm"])
        ],
    )
    return metrics


def run(params: PipelineParams, root: Path, context: StageContext | None = None) -> StageResult:
    """Meta-train every phase in order (each from the previous one's meta-params) and write the outputs.

    With ``meta_train.checkpoint_every`` the loop state of each phase is written to
    ``checkpoints/meta_train/<phase>.npz``; ``context.resume`` (``l2o run --resume``) continues from
    there, exactly. ``context.on_outer_step`` is handed to the meta-training loop. The loop is one
    jitted program (populations are batched inside it), so ``context.map_fn`` is not used.
    """
    context = context or StageContext()
    root = Path(root)
    mt = params.meta_train
    manifest = read_manifest(root)
    families, datas = build_families(params, root)
    hashes = data_hashes(params, manifest)
    context.log(_plan_line(params, len(families)))
    t0 = time.perf_counter()
    done = _train_phases(params, root, context, families, datas, hashes)
    seconds = time.perf_counter() - t0
    _check_final_loss(done, len(families))
    if done.nonfinite_losses:
        context.log(f"meta_train: warning: {done.nonfinite_losses} estimates had an inf/nan inner loss (counted)")
    _save_models(params, root, done, hashes)
    metrics = _write_metrics(root, done)
    # wall-clock facts: MLflow and the run log, never the DVC-tracked outputs (identical runs hash alike)
    timing = {
        "seconds": seconds,
        # the rate of the compiled loop: the first (compiling) call of each phase is excluded
        "inner_steps_per_second": done.timed_inner_steps / done.timed_seconds if done.timed_seconds > 0 else 0.0,
    }
    write_run_log(root, "meta_train", {**timing, "resumed_from": done.resumed_from})
    head, tail = metrics["meta_loss_first"], metrics["meta_loss_last"]
    context.log(f"meta_train: meta-loss {head:.4f} -> {tail:.4f} in {seconds:.0f}s")
    return StageResult(
        stage="meta_train",
        version=VERSION,
        metrics={**metrics, **timing},
        curves=done.curves,
        artifacts=[MODEL_DIR, META_METRICS],
        model_dir=MODEL_DIR,
        tags={"lopt": done.results[-1][1].name, "registered_name": mt.registered_name},
    )
