"""pretrain stage: the pre-trained starting points of the fine-tuning tasks that ``evaluate`` runs.

For every fine-tuning task of ``evaluate.tasks`` (a :class:`~components.tasks.spec.TaskSpec` with a
``pretrain`` record) the source task -- the same architecture on the pre-training dataset -- is
trained with Adam as the spec says (``pretrain.num_steps`` overrides every task's step count) and
its params are written to ``models/pretrained/<task>.npz``. ``models/pretrained/index.json``
records, per task, the source dataset and its sha256, the steps, the learning rate, the final
training loss and the source test accuracy.

The outputs are a DVC-tracked artifact; inside it, a task whose cache key (its spec, step count,
seed, source data hash and this stage's version) is unchanged is copied from the previous run
instead of re-trained, so adding a task to ``evaluate.tasks`` pre-trains only the new one. The
directory always exists (with an empty index when no task fine-tunes), so the DAG is the same for
every params file.
"""

import dataclasses
import hashlib
import json
import shutil
import time
import zlib
from pathlib import Path

import jax
import numpy as np

from components.stages.common import (
    StageContext,
    StageResult,
    atomic_dir,
    atomic_write_json,
    load_prepared,
    read_manifest,
    write_run_log,
)
from components.stages.params import PipelineParams
from components.stages.paths import PRETRAINED_DIR, PRETRAINED_INDEX
from components.tasks.finetune import pretrain_with_losses
from components.tasks.pretrained import save_pretrained
from components.tasks.spec import TaskSpec, eval_sets, task_data
from components.tasks.suite import get_spec, source_task

__all__ = ["VERSION", "run", "finetune_specs", "cache_key"]

VERSION = "2"  # 2: the index holds no wall-clock values (seconds, reused: .l2o/runs/pretrain.json and MLflow)
_RUN_FACTS = ("seconds", "reused")
_STREAM = 3  # fold_in tag of this stage's random stream (meta_train uses the seed, 1 calibrate, 2 evaluate)


def finetune_specs(params: PipelineParams) -> list[TaskSpec]:
    """The fine-tuning specs among ``evaluate.tasks`` (in that order) and ``meta_train.task_family.task``."""
    names = list(params.evaluate.tasks)
    one = params.meta_train.task_family.task
    if one is not None and one not in names:
        names.append(one)
    return [s for s in map(get_spec, names) if s.pretrain is not None]


def _steps(params: PipelineParams, spec: TaskSpec) -> int:
    return params.pretrain.num_steps or spec.pretrain.num_steps


def cache_key(params: PipelineParams, spec: TaskSpec, data_sha256: str) -> str:
    """What a pre-trained model depends on, hashed: spec, steps, seed, source data, stage version."""
    blob = json.dumps(
        {
            "spec": repr(spec),
            "num_steps": _steps(params, spec),
            "seed": params.seed,
            "data_sha256": data_sha256,
            "version": VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _pretrain_one(
    params: PipelineParams, root: Path, spec: TaskSpec, entry: str, key_hash: str, out: Path
) -> tuple[dict, float]:
    """Pre-train one task into ``out``: ``(its index row, wall seconds)``."""
    p = spec.pretrain
    arrays = load_prepared(root, entry)
    src = source_task(spec)
    steps = _steps(params, spec)
    stream = jax.random.fold_in(jax.random.PRNGKey(params.seed), _STREAM)
    key = jax.random.fold_in(stream, zlib.crc32(spec.name.encode()))
    t0 = time.perf_counter()
    trained, losses = pretrain_with_losses(src, task_data(p.dataset, arrays), key, steps, p.learning_rate)
    losses = np.asarray(losses)
    # the source model on its own held-out data (text: windows of test_tokens)
    held_out = eval_sets(dataclasses.replace(spec, dataset=p.dataset, token_range=p.token_range), arrays).get("test")
    test_loss = test_acc = None
    if held_out is not None:
        test_loss = float(jax.jit(src.loss)(trained, held_out))
        if getattr(src, "has_accuracy", True):
            test_acc = float(jax.jit(src.accuracy)(trained, held_out))
    seconds = time.perf_counter() - t0
    save_pretrained(out / f"{spec.name}.npz", trained)
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "file": f"{spec.name}.npz",
        "cache_key": key_hash,
        "source_dataset": p.dataset,
        "prepared_file": f"{entry}.npz",
        "num_steps": steps,
        "learning_rate": p.learning_rate,
        "batch_size": p.batch_size,
        "token_range": list(p.token_range),
        "final_train_loss": float(np.mean(tail)) if np.all(np.isfinite(tail)) else None,
        "source_test_loss": test_loss,
        "source_test_acc": test_acc,
    }, seconds


def run(params: PipelineParams, root: Path, context: StageContext | None = None) -> StageResult:
    """Pre-train every fine-tuning task of ``evaluate.tasks`` (reusing unchanged ones, each task an item of
    ``context.map_fn``) and write the index."""
    context = context or StageContext()
    log = context.log
    root = Path(root)
    t0 = time.perf_counter()
    specs = finetune_specs(params)
    manifest = read_manifest(root) if specs else {"datasets": {}}
    old_dir = root / PRETRAINED_DIR
    index = root / PRETRAINED_INDEX
    old_index = json.loads(index.read_text()) if index.exists() else {"tasks": {}}
    jobs = []
    for spec in specs:
        entry = params.data.require(spec.pretrain.dataset, f"evaluate task {spec.name!r} (pre-training)")
        if entry not in manifest["datasets"]:
            raise FileNotFoundError(f"prepared dataset {entry!r} is not in the manifest: run prepare_data first")
        jobs.append((spec, entry, cache_key(params, spec, manifest["datasets"][entry]["sha256"])))

    with atomic_dir(root / PRETRAINED_DIR) as tmp:

        def one(job):
            spec, entry, key_hash = job
            old = old_index["tasks"].get(spec.name)
            if old and old.get("cache_key") == key_hash and (old_dir / old["file"]).exists():
                shutil.copy2(old_dir / old["file"], tmp / old["file"])
                log(f"pretrain: {spec.name}: unchanged, reused")
                # (an index written before version 3 also holds its run's seconds/reused: dropped)
                return spec.name, {k: v for k, v in old.items() if k not in _RUN_FACTS}, {"reused": True}
            log(f"pretrain: {spec.name}: Adam on {entry} for {_steps(params, spec)} steps ...")
            row, seconds = _pretrain_one(params, root, spec, entry, key_hash, tmp)
            acc = "" if row["source_test_acc"] is None else f", source test acc {row['source_test_acc']:.3f}"
            log(
                f"pretrain: {spec.name}: final train loss {row['final_train_loss']},"
                f" source test loss {row['source_test_loss']:.4f}{acc} ({seconds:.0f}s)"
            )
            return spec.name, row, {"reused": False, "seconds": seconds}

        done = context.map_fn(one, jobs)
        rows = {name: row for name, row, _ in done}
        atomic_write_json(tmp / "index.json", {"tasks": rows, "component_version": VERSION, "seed": params.seed})

    metrics: dict[str, float] = {"seconds": time.perf_counter() - t0, "num_tasks": float(len(rows))}
    for name, row in rows.items():
        for k in ("final_train_loss", "source_test_loss", "source_test_acc"):
            if row[k] is not None:
                metrics[f"{name}/{k}"] = row[k]
    # wall times and cache hits: MLflow and the run log, not the DVC-tracked index (identical runs hash alike)
    write_run_log(root, "pretrain", {"seconds": metrics["seconds"], "tasks": {name: f for name, _, f in done}})
    log(f"pretrain: {len(rows)} fine-tuning task(s) ready in {metrics['seconds']:.0f}s")
    return StageResult(stage="pretrain", version=VERSION, metrics=metrics, artifacts=[PRETRAINED_DIR])
