"""``l2o zoo train``: meta-train a zoo entry in its own workspace, ``.l2o/zoo/<name>/`` (see :mod:`flows.zoo`).

The workspace holds the stages' outputs of that meta-training (prepared data, checkpoints) and
``zoo_train.json``, the record of its params and sessions (start, git commit, device, seconds) that
``l2o zoo add`` turns into the entry's lineage.
"""

import dataclasses
import datetime
import os
import platform
import time
from pathlib import Path

import jax

from components.optimizers import zoo as zoo_lib
from components.stages import common
from components.stages.common import atomic_write_json, git_commit
from components.stages.params import PipelineParams
from components.stages.paths import MANIFEST

__all__ = ["RECORD", "WORKSPACES", "ZooError", "device_string", "now", "read_json", "train", "workspace"]

WORKSPACES = Path(".l2o/zoo")  # under the project root; .l2o/ is git-ignored
RECORD = "zoo_train.json"


class ZooError(ValueError):
    """A zoo command cannot proceed; the message says why and what to do."""


def workspace(root: Path, name: str) -> Path:
    """``<root>/.l2o/zoo/<name>``: where ``l2o zoo train`` meta-trains entry ``name``."""
    return Path(root) / WORKSPACES / zoo_lib.check_name(name)


def device_string() -> str:
    """What runs JAX here, e.g. ``cpu: 2 x cpu (x86_64, 2 CPU cores)`` or ``gpu: 1 x NVIDIA H100 ...``."""
    devices = jax.devices()
    kind = getattr(devices[0], "device_kind", devices[0].platform)
    return f"{jax.default_backend()}: {len(devices)} x {kind} ({platform.machine()}, {os.cpu_count()} CPU cores)"


def now() -> str:
    """The UTC time now, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path`` (flagged inf/nan restored: :func:`components.stages.common.read_json`),
    ``None`` when there is no such file."""
    return common.read_json(path) if path.is_file() else None


def _needs_pretrain(params: PipelineParams) -> bool:
    task = params.meta_train.task_family.task
    if task is None:
        return False
    from components.tasks.suite import get_spec  # noqa: PLC0415

    return get_spec(task).is_finetune


def train(root: Path, name: str, params: PipelineParams, *, params_file: str, resume: bool, log=print) -> Path:
    """Meta-train zoo entry ``name`` in its workspace; returns the workspace.

    Raises:
      ZooError: ``meta_train.checkpoint_every`` is unset, or the workspace holds a run and ``resume`` is off.
    """
    from flows.stage_exec import stage_context, stage_module  # noqa: PLC0415

    if not params.meta_train.checkpoint_every:
        raise ZooError(
            "l2o zoo train needs checkpoints to resume and to ship a partly trained optimizer: set"
            " meta_train.checkpoint_every in the params file (or --set meta_train.checkpoint_every=50)"
        )
    ws = workspace(root, name)
    record_path = ws / RECORD
    record = read_json(record_path)
    if record is not None and not resume:
        raise ZooError(
            f"{ws} already holds a meta-training of {name!r} ({record['outer_steps_planned']} outer steps planned):"
            f" pass --resume to continue it, or delete {ws} to start over"
        )
    dumped = params.model_dump(mode="json")
    if record is not None:
        before = {k: record["params"].get(k) for k in ("seed", "meta_train")}
        if before != {k: dumped[k] for k in ("seed", "meta_train")}:
            raise ZooError(
                f"{ws} was meta-trained with other seed / meta_train params (from {record['params_file']}): resume"
                f" with the same params, or delete {ws} to start over with these"
            )
    ws.mkdir(parents=True, exist_ok=True)
    _use_project_mirror(root)
    if record is None or record.get("data") != dumped["data"] or not (ws / MANIFEST).is_file():
        log(f"zoo train {name}: prepare_data in {ws}")
        stage_module("prepare_data").run(params, ws, stage_context(log, resume=False))
    if _needs_pretrain(params) and (record is None or record.get("pretrain") != dumped["pretrain"]):
        log(f"zoo train {name}: pretrain in {ws}")
        stage_module("pretrain").run(params, ws, stage_context(log, resume=False))
    sessions = (record or {}).get("sessions", [])
    sessions.append({"started": now(), "git_commit": git_commit(root), "device": device_string(), "seconds": 0.0})
    record = {
        "name": name,
        "params_file": params_file,
        "params": dumped,
        "data": dumped["data"],
        "pretrain": dumped["pretrain"],
        "outer_steps_planned": sum(params.meta_train.phase_steps(p) for p in params.meta_train.phase_list()),
        "sessions": sessions,
    }
    atomic_write_json(record_path, record)
    context = stage_context(log, resume=resume)
    inner_hook, t0 = context.on_outer_step, time.perf_counter()

    def on_outer_step(done: int, total: int) -> None:
        sessions[-1]["seconds"] = time.perf_counter() - t0
        atomic_write_json(record_path, record)
        if inner_hook is not None:  # the failure tests' kill hook ($L2O_FAULT_KILL_AT_OUTER_STEP)
            inner_hook(done, total)

    context = dataclasses.replace(context, on_outer_step=on_outer_step)
    log(f"zoo train {name}: meta_train in {ws}" + (" (resuming)" if resume else ""))
    stage_module("meta_train").run(params, ws, context)
    sessions[-1]["seconds"] = time.perf_counter() - t0
    sessions[-1]["finished"] = now()
    atomic_write_json(record_path, record)
    log(f"zoo train {name}: done; package it with `l2o zoo add {name}`")
    return ws


def _use_project_mirror(root: Path) -> None:
    """Point ``$L2O_DATA_MIRROR`` at the project's mirror (``<root>/../shared/datasets``) when it is unset.

    The stages look for ``../shared/datasets`` beside the folder they run in, which for the workspace
    ``<root>/.l2o/zoo/<name>`` is not the project's: without this they would try the canonical URLs.
    """
    from components.stages.fetch import MIRROR_ENV, resolve_mirror  # noqa: PLC0415

    mirror = resolve_mirror(root)
    if mirror is not None and not os.environ.get(MIRROR_ENV):
        os.environ[MIRROR_ENV] = str(mirror)
