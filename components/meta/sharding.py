"""Sharding the inner-problem population over all local devices.

Every estimator batches its inner problems on a leading *task* axis. With several local devices (GPUs,
or host CPU devices from ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) that axis is split
over a one-dimensional mesh named ``"tasks"``: each device unrolls its share of the population and
only the meta-gradient (a mean over tasks) crosses devices. Meta-parameters and the outer optimizer
state stay replicated. With one device, or a population the device count does not divide, nothing is
constrained and the program is the single-device one.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["TASK_AXIS", "task_mesh", "shard_tasks", "place_tasks", "describe"]

TASK_AXIS = "tasks"


def task_mesh(num_tasks: int, devices: list | None = None) -> Mesh | None:
    """A mesh over ``devices`` (default: all local devices) for a population of ``num_tasks``.

    Returns ``None`` (no sharding) with a single device. Raises a ValueError naming the fix when the
    device count does not divide ``num_tasks``.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) <= 1:
        return None
    if num_tasks % len(devices):
        raise ValueError(
            f"meta_train.num_tasks ({num_tasks}) must be a multiple of the {len(devices)} local devices to shard"
            f" the population over them: use {len(devices) * max(1, round(num_tasks / len(devices)))} tasks"
            " (or set meta_train.shard_population: false)"
        )
    return Mesh(np.asarray(devices), (TASK_AXIS,))


def _spec(x, mesh: Mesh) -> NamedSharding:
    ndim = getattr(x, "ndim", 0)
    return NamedSharding(mesh, PartitionSpec(TASK_AXIS) if ndim >= 1 else PartitionSpec())


def shard_tasks(tree: Any, mesh: Mesh | None) -> Any:
    """Inside ``jit``: constrain every array of ``tree`` to be split over its leading (task) axis."""
    if mesh is None:
        return tree
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, _spec(x, mesh)), tree)


def place_tasks(tree: Any, mesh: Mesh | None) -> Any:
    """Outside ``jit``: put every array of ``tree`` on the mesh, split over its leading (task) axis."""
    if mesh is None:
        return tree
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, _spec(x, mesh)), tree)


def describe(mesh: Mesh | None) -> str:
    if mesh is None:
        return f"1 {jax.default_backend()} device"
    return f"population sharded over {mesh.devices.size} {jax.default_backend()} devices"
