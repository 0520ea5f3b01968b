"""meta_train stage: meta-train the learned optimizer with truncated PES on the image-MLP family
(or Celo's four-task preset).

Reads ``data/prepared`` and the ``seed`` / ``meta_train`` params; writes the checkpoint directory
``models/lopt`` (weights + ``config.json`` with provenance + ``curves.json``), the summary metrics
``metrics/meta_train.json`` and the DVC plot file ``plots/meta_train.json``.
"""

import time
from pathlib import Path

import jax
import numpy as np

from components.meta import MetaTrainConfig, meta_train
from components.optimizers import save
from components.optimizers.registry import learned_optimizer
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
from components.tasks.families import celo_family

__all__ = ["VERSION", "MODEL_DIR", "run", "build_family"]

VERSION = "1"
MODEL_DIR = Path("models/lopt")
METRICS = Path("metrics/meta_train.json")
PLOT = Path("plots/meta_train.json")


def build_family(params: PipelineParams, root: Path):
    """The meta-training task family and its stacked training data (datasets in family order).

    ``task_family.preset: celo`` gives :func:`components.tasks.celo_family` (8x8 gray MLP-32 on four
    datasets, batch 64, global re-parametrisation in [1e-3, 1e3]); otherwise an
    :class:`~components.tasks.ImageMLPFamily` of the listed datasets, widths and scale range.
    """
    fam = params.meta_train.task_family
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


def lopt_from_params(params: PipelineParams):
    mt = params.meta_train
    return learned_optimizer(mt.lopt, **mt.lopt_hyperparams)


def run(params: PipelineParams, root: Path, *, log: Logger = print_logger, map_fn: MapFn = serial_map) -> StageResult:
    del map_fn  # a single jitted loop; populations are batched inside it
    root = Path(root)
    mt = params.meta_train
    manifest = read_manifest(root)
    family, data = build_family(params, root)
    lopt = lopt_from_params(params)
    cfg = MetaTrainConfig(
        num_outer_steps=mt.num_outer_steps,
        num_tasks=mt.num_tasks,
        trunc_length=mt.trunc_length,
        min_unroll=mt.min_unroll,
        max_unroll=mt.max_unroll,
        sigma=mt.sigma,
        outer_lr=mt.outer_lr,
        outer_lr_schedule=mt.outer_lr_schedule,
        outer_weight_decay=mt.outer_weight_decay,
        grad_clip=mt.grad_clip,
        log_every=mt.log_every,
    )
    log(
        f"meta_train: {lopt.name} on {list(mt.task_family.datasets)} MLP{list(mt.task_family.hidden_sizes)}"
        f"{' (Celo preset)' if mt.task_family.preset else ''},"
        f" {mt.num_outer_steps} outer steps x {mt.num_tasks} tasks x 2 antithetic x {mt.trunc_length}"
        f" inner steps on {jax.default_backend()}"
    )
    t0 = time.perf_counter()
    result = meta_train(lopt, family, data, cfg, key=jax.random.PRNGKey(params.seed), log=log)
    seconds = time.perf_counter() - t0
    meta_loss = result.curves["meta_loss"]
    metadata = {
        "component": "meta_train",
        "component_version": VERSION,
        "params_hash": params_hash(params),
        "seed": params.seed,
        "meta_train": params.meta_train.model_dump(mode="json"),
        "data_hashes": {
            name: manifest["datasets"][params.data.require(name, "meta_train.task_family")]["sha256"]
            for name in params.meta_train.task_family.datasets
        },
        "git_commit": git_commit(root),
        "backend": jax.default_backend(),
    }
    save(root / MODEL_DIR, lopt, result.meta_params, metadata)
    # curves.json travels with the checkpoint (written after save: the directory exists now)
    atomic_write_json(root / MODEL_DIR / "curves.json", result.curves)
    head = float(np.mean([v for _, v in meta_loss[: max(1, len(meta_loss) // 10)]]))
    tail = float(np.mean([v for _, v in meta_loss[-max(1, len(meta_loss) // 10) :]]))
    metrics = {
        "meta_loss_first": head,
        "meta_loss_last": tail,
        "seconds": seconds,
        "inner_steps_per_second": result.inner_steps / result.seconds,
        "num_meta_params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(result.meta_params))),
    }
    atomic_write_json(root / METRICS, metrics)
    atomic_write_json(
        root / PLOT,
        [
            {"step": s, "meta_loss": v, "train_loss": t}
            for (s, v), (_, t) in zip(meta_loss, result.curves["train_loss"])
        ],
    )
    log(f"meta_train: meta-loss {head:.4f} -> {tail:.4f} in {seconds:.0f}s")
    return StageResult(
        stage="meta_train",
        version=VERSION,
        metrics=metrics,
        curves=result.curves,
        artifacts=[MODEL_DIR, METRICS],
        model_dir=MODEL_DIR,
        tags={"lopt": lopt.name, "registered_name": mt.registered_name},
    )
