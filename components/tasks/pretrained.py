"""Pre-trained parameters of fine-tuning tasks on disk: one ``.npz`` per task, one array per leaf.

The pretrain stage writes them (:func:`save_pretrained`); meta-training, calibration and evaluation read
them back for the fine-tuning task they build (:func:`load_pretrained`). Leaves are keyed by their pytree
path (``jax.tree_util.keystr``), so a file is checked leaf by leaf against the task's source model.
"""

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from components.tasks.protocol import param_shapes
from components.tasks.spec import TaskSpec
from components.tasks.suite import source_task

__all__ = ["flatten_params", "save_pretrained", "load_pretrained"]


def flatten_params(tree: Any) -> dict[str, np.ndarray]:
    """``{pytree path: array}`` of a params tree (the file's layout)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save_pretrained(path: Path, params: Any) -> None:
    """Write ``params`` to ``path`` (an uncompressed ``.npz`` of :func:`flatten_params`)."""
    with open(path, "wb") as f:
        np.savez(f, **flatten_params(params))


def load_pretrained(path: Path, spec: TaskSpec) -> Any:
    """The params of fine-tuning task ``spec``'s source model stored at ``path``, as float32.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if a stored array is missing or does not fit the task's source architecture (a file
        written for another spec: re-run the pre-training).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pre-train task {spec.name!r} first")
    template = param_shapes(source_task(spec))
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    with np.load(path, allow_pickle=False) as f:
        stored = {k: f[k] for k in f.files}
    leaves = []
    for p, shape in paths:
        name = jax.tree_util.keystr(p)
        if name not in stored or stored[name].shape != shape.shape:
            got = stored[name].shape if name in stored else "missing"
            raise ValueError(
                f"{path}: parameter {name} is {got}, the task's source model needs {shape.shape}:"
                " the file is stale; re-run the pretrain stage"
            )
        leaves.append(jnp.asarray(stored[name], jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, leaves)
