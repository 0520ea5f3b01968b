"""Meta-training checkpoints: the whole loop state in one ``.npz``, written atomically.

A checkpoint holds every array of the loop state (meta-params, outer-optimizer state, the
estimators' persistent inner problems) as ``leaf_00000 ...`` plus a JSON header ``__header__`` with
the outer step, the curves so far and a *fingerprint* of the run's settings. The tree structure is
not stored: :func:`load_checkpoint` fills the leaves into a template built the same way as a fresh
run's state, checking count, shape and dtype, so a restored state is bit-for-bit the saved one.

Writes go to ``<file>.tmp`` first and are renamed over the old checkpoint, so a process killed while
writing leaves the previous checkpoint intact.
"""

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_header"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (corrupt, or written by a different run)."""


def save_checkpoint(path: Path, tree: Any, header: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(tree)
    arrays = {f"leaf_{i:05d}": np.asarray(jax.device_get(x)) for i, x in enumerate(leaves)}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _open(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint ({err}): delete it to start over,"
            " or restore it from a backup"
        ) from None


def read_header(path: Path) -> dict:
    """The JSON header of a checkpoint (CheckpointError if the file is unreadable)."""
    path = Path(path)
    with _open(path) as f:
        try:
            return json.loads(bytes(f["__header__"]).decode())
        except (KeyError, ValueError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise CheckpointError(
                f"checkpoint {path} has no readable header ({err}): delete it to start over"
            ) from None


def load_checkpoint(path: Path, template: Any) -> tuple[Any, dict]:
    """``(tree, header)``: the saved arrays in the structure of ``template``.

    Raises:
      CheckpointError: the file is unreadable, or its arrays do not match ``template`` (it was written
        by a different optimizer, population or estimator).
    """
    path = Path(path)
    header = read_header(path)
    leaves, treedef = jax.tree_util.tree_flatten(template)
    with _open(path) as f:
        names = sorted(k for k in f.files if k.startswith("leaf_"))
        if len(names) != len(leaves):
            raise CheckpointError(
                f"checkpoint {path} holds {len(names)} arrays but this run's state has {len(leaves)}: it was written"
                " by a different learned optimizer, estimator or population; delete it or run without --resume"
            )
        restored = []
        for i, ref in enumerate(leaves):
            try:
                arr = f[f"leaf_{i:05d}"]
            except (KeyError, ValueError, zipfile.BadZipFile, EOFError, OSError) as err:
                raise CheckpointError(
                    f"checkpoint {path} is corrupt (array {i}: {err}): delete it to start over"
                ) from None
            ref_shape, ref_dtype = np.shape(ref), np.asarray(ref).dtype if not hasattr(ref, "dtype") else ref.dtype
            if arr.shape != tuple(ref_shape) or arr.dtype != ref_dtype:
                raise CheckpointError(
                    f"checkpoint {path}: array {i} is {arr.dtype}{list(arr.shape)} but this run expects"
                    f" {ref_dtype}{list(ref_shape)}: it was written by a different configuration; delete it or run"
                    " without --resume"
                )
            restored.append(arr)
    return jax.tree_util.tree_unflatten(treedef, restored), header
