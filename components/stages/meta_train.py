"""meta_train stage: meta-train the learned optimizer with truncated PES on the image-MLP family
(or Celo's four-task preset).

Reads ``data/prepared`` and the ``seed`` / ``meta_train`` params; writes the checkpoint directory
``models/lopt`` (weights + ``config.json`` with provenance + ``curves.json``), the summary metrics
``metrics/meta_train.json`` and the DVC plot file ``plots/meta_train.json``.
"""

import hashlib
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

from components.meta import MetaTrainConfig, meta_train
from components.optimizers import save
from components.optimizers.registry import create_learned
from components.stages.common import (
    Logger,
    MapFn,
    StageResult,
    atomic_write_json,
    git_commit,
    load_prepared,
    print_logger,
    read_manifest,
    serial_map,
)
from components.stages.params import PipelineParams, params_hash
from components.tasks import ImageMLPFamily, stack_datasets
from components.tasks.families import SingleTaskFamily, celo_families, celo_family

__all__ = ["VERSION", "MODEL_DIR", "CHECKPOINT_DIR", "RESUME_ENV", "run", "build_family", "build_families"]

VERSION = "2"
MODEL_DIR = Path("models/lopt")
METRICS = Path("metrics/meta_train.json")
PLOT = Path("plots/meta_train.json")
CHECKPOINT_DIR = Path("checkpoints/meta_train")
RESUME_ENV = "L2O_RESUME"
"""Set to 1 (``l2o run --resume``, ``l2o stage meta_train --resume``) to continue from checkpoints."""


def build_family(params: PipelineParams, root: Path):
    """The meta-training task family and its stacked training data (datasets in family order).

    ``task_family.task`` gives a :class:`~components.tasks.families.SingleTaskFamily` of that suite
    task (fine-tuning tasks start from ``models/pretrained``) with the task's own training data;
    ``task_family.preset: celo`` gives :func:`components.tasks.celo_family` (8x8 gray MLP-32 on four
    datasets, batch 64, global re-parametrisation in [1e-3, 1e3]); otherwise an
    :class:`~components.tasks.ImageMLPFamily` of the listed datasets, widths and scale range.
    """
    fam = params.meta_train.task_family
    if fam.task is not None:
        from components.stages.pretrain import load_pretrained  # noqa: PLC0415
        from components.tasks.spec import make_task, task_data  # noqa: PLC0415
        from components.tasks.suite import get_spec  # noqa: PLC0415

        spec = get_spec(fam.task)
        arrays = (
            load_prepared(root, params.data.require(spec.dataset, f"meta_train.task_family.task {fam.task!r}"))
            if spec.dataset
            else {}
        )
        pretrained = load_pretrained(root, spec) if spec.is_finetune else None
        return SingleTaskFamily(make_task(spec, pretrained=pretrained)), task_data(spec.dataset, arrays)
    entries = [params.data.require(name, "meta_train.task_family") for name in fam.datasets]
    arrays = [load_prepared(root, entry) for entry in entries]
    data = stack_datasets([a["x_train"] for a in arrays], [a["y_train"] for a in arrays])
    if fam.preset == "celo":
        return celo_family(tuple(fam.datasets)), data
    num_classes = int(max(int(a["y_train"].max()) for a in arrays)) + 1
    family = ImageMLPFamily(
        datasets=tuple(fam.datasets),
        hidden_sizes=tuple(fam.hidden_sizes),
        image_shape=tuple(int(s) for s in data.x.shape[2:]),
        num_classes=num_classes,
        batch_size=fam.batch_size,
        param_scale_range=tuple(fam.param_scale_range),
    )
    return family, data


def build_families(params: PipelineParams, root: Path) -> tuple[list, list]:
    """``(families, datas)``: one family per dataset with ``estimator_per_dataset`` (Celo's recipe:
    one PES estimator of ``num_tasks`` tasks per dataset, meta-gradients averaged), else one family."""
    fam = params.meta_train.task_family
    if not fam.estimator_per_dataset:
        family, data = build_family(params, root)
        return [family], [data]
    entries = [params.data.require(name, "meta_train.task_family") for name in fam.datasets]
    arrays = [load_prepared(root, entry) for entry in entries]
    datas = [stack_datasets([a["x_train"]], [a["y_train"]]) for a in arrays]
    if fam.preset == "celo":
        return list(celo_families(tuple(fam.datasets)).values()), datas
    families = [
        ImageMLPFamily(
            datasets=(name,),
            hidden_sizes=tuple(fam.hidden_sizes),
            image_shape=tuple(int(s) for s in d.x.shape[2:]),
            num_classes=int(a["y_train"].max()) + 1,
            batch_size=fam.batch_size,
            param_scale_range=tuple(fam.param_scale_range),
        )
        for name, d, a in zip(fam.datasets, datas, arrays)
    ]
    return families, datas


def lopt_from_params(params: PipelineParams, phase=None):
    mt = params.meta_train
    hyper = mt.lopt_hyperparams if phase is None else mt.phase_hyperparams(phase)
    return create_learned(mt.lopt, **hyper)


def _data_hashes(params: PipelineParams, manifest: dict) -> dict[str, str]:
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


def run(
    params: PipelineParams,
    root: Path,
    *,
    log: Logger = print_logger,
    map_fn: MapFn = serial_map,
    resume: bool | None = None,
) -> StageResult:
    """Meta-train every phase in order (each from the previous one's meta-params) and write the outputs.

    With ``meta_train.checkpoint_every`` the loop state of each phase is written to
    ``checkpoints/meta_train/<phase>.npz``; ``resume`` (default: the ``L2O_RESUME`` environment
    variable, set by ``l2o run --resume``) continues from there, exactly.
    """
    del map_fn  # a single jitted loop; populations are batched inside it
    root = Path(root)
    resume = os.environ.get(RESUME_ENV) == "1" if resume is None else resume
    mt = params.meta_train
    manifest = read_manifest(root)
    families, datas = build_families(params, root)
    data_hashes = _data_hashes(params, manifest)
    phases = mt.phase_list()
    fam = mt.task_family
    what = (
        f"task {fam.task}"
        if fam.task
        else f"{list(fam.datasets)} MLP{list(fam.hidden_sizes)}{' (Celo preset)' if fam.preset else ''}"
    )
    per = mt.trunc_length if mt.estimator != "es" else f"{mt.min_unroll}-{mt.max_unroll}"
    log(
        f"meta_train: {mt.lopt} on {what}, {len(phases)} phase(s) [{', '.join(p.name for p in phases)}],"
        f" {mt.estimator}: {len(families)} estimator(s) x {mt.num_tasks} tasks"
        f"{'' if mt.estimator == 'tbptt' else ' x 2 antithetic'} x {per} inner steps on {jax.default_backend()}"
    )
    t0 = time.perf_counter()
    meta_params = None
    curves: dict[str, list] = {}
    offset, inner_steps, loop_seconds = 0, 0, 0.0
    phase_rows: list[dict] = []
    phase_results: list = []
    lopt = None
    for i, phase in enumerate(phases):
        lopt = lopt_from_params(params, phase)
        steps = mt.phase_steps(phase)
        log(f"meta_train: phase {i + 1}/{len(phases)} {phase.name!r}: {steps} outer steps, {lopt.name} {lopt.config()}")
        key = (
            jax.random.PRNGKey(params.seed) if i == 0 else jax.random.fold_in(jax.random.PRNGKey(params.seed), 100 + i)
        )
        result = meta_train(
            lopt,
            families if len(families) > 1 else families[0],
            datas if len(datas) > 1 else datas[0],
            _config(params, steps),
            key=key,
            log=log,
            init_meta_params=meta_params,
            checkpoint_path=root / CHECKPOINT_DIR / f"{phase.name}.npz" if mt.checkpoint_every else None,
            fingerprint=_fingerprint(params, data_hashes, i),
            resume=resume,
        )
        meta_params = result.meta_params
        for k, pts in result.curves.items():
            curves.setdefault(k, []).extend((offset + s, v) for s, v in pts)
        phase_rows.append(
            {
                "name": phase.name,
                "lopt_hyperparams": mt.phase_hyperparams(phase),
                "first_step": offset + 1,
                "last_step": offset + steps,
                "resumed_from": result.resumed_from,
            }
        )
        offset += steps
        inner_steps += result.inner_steps
        loop_seconds += result.seconds
        phase_results.append((phase, lopt, meta_params))
    seconds = time.perf_counter() - t0
    meta_loss = curves["meta_loss"]
    metadata = {
        "component": "meta_train",
        "component_version": VERSION,
        "params_hash": params_hash(params),
        "seed": params.seed,
        "meta_train": params.meta_train.model_dump(mode="json"),
        "phases": phase_rows,
        "data_hashes": data_hashes,
        "git_commit": git_commit(root),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }
    save(root / MODEL_DIR, lopt, meta_params, metadata)
    if len(phases) > 1:  # every phase's result beside the final one: models/lopt/phases/<name>
        for phase, phase_lopt, phase_params in phase_results:
            save(root / MODEL_DIR / "phases" / phase.name, phase_lopt, phase_params, {**metadata, "phase": phase.name})
    # curves.json travels with the checkpoint (written after save: the directory exists now)
    atomic_write_json(root / MODEL_DIR / "curves.json", curves)
    head = float(np.mean([v for _, v in meta_loss[: max(1, len(meta_loss) // 10)]]))
    tail = float(np.mean([v for _, v in meta_loss[-max(1, len(meta_loss) // 10) :]]))
    metrics = {
        "meta_loss_first": head,
        "meta_loss_last": tail,
        "seconds": seconds,
        "inner_steps_per_second": inner_steps / loop_seconds if loop_seconds > 0 else 0.0,
        "num_meta_params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(meta_params))),
        "nonfinite_meta_grad_entries": float(sum(v for _, v in curves.get("nonfinite", []))),
    }
    atomic_write_json(root / METRICS, metrics)
    atomic_write_json(
        root / PLOT,
        [
            {"step": s, "meta_loss": v, "train_loss": t, "grad_norm": g}
            for (s, v), (_, t), (_, g) in zip(meta_loss, curves["train_loss"], curves["grad_norm"])
        ],
    )
    log(f"meta_train: meta-loss {head:.4f} -> {tail:.4f} in {seconds:.0f}s")
    return StageResult(
        stage="meta_train",
        version=VERSION,
        metrics=metrics,
        curves=curves,
        artifacts=[MODEL_DIR, METRICS],
        model_dir=MODEL_DIR,
        tags={"lopt": lopt.name, "registered_name": mt.registered_name},
    )
