"""Learned-optimizer checkpoints: a directory with ``weights.safetensors`` and ``config.json``.

Layout of a checkpoint directory::

    <directory>/
      weights.safetensors   # flattened meta-params, key = "/"-joined pytree path ("nn/w0", …)
      config.json           # {"architecture": name, "hyperparameters": lopt.config(),
                            #  "format_version": 1, **metadata (component version, hashes, commit…)}

:func:`save` writes both files into a temporary sibling directory and renames it into place, so a
reader never sees a half-written checkpoint. :func:`load_meta_params` rebuilds the learned optimizer
from ``config.json`` (through :data:`LOPTS`) and checks the weights against its
``init_meta_params`` template; :func:`load` returns the ready optax transformation.

Example:
  >>> import jax, tempfile, os
  >>> lopt = SmallFcLOpt()
  >>> theta = lopt.init_meta_params(jax.random.key(0))
  >>> path = os.path.join(tempfile.mkdtemp(), "small_fc_lopt")
  >>> path = save(path, lopt, theta, {"git_commit": "abc123"})
  >>> opt = load(path, num_steps=1000)
"""

import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from components.optimizers import registry

__all__ = [
    "CHECKPOINT_SOURCES_GROUP",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "LOPTS",
    "WEIGHTS_FILE",
    "build_lopt",
    "load",
    "load_meta_params",
    "save",
]

LOPTS = registry.LEARNED
"""Learned-optimizer architectures by name (the ``architecture`` field of ``config.json``)."""

CHECKPOINT_SOURCES_GROUP = "l2o_pipeline.checkpoint_sources"
"""Entry-point group of resolvers that turn a non-path reference (e.g. an MLflow registered model
name) into a local checkpoint directory: ``resolver(reference: str) -> str | None`` (``None``: not
mine). The pipeline's ``flows.registry`` registers one for the MLflow model registry, so the library
itself never imports MLflow."""

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
_RESERVED_KEYS = ("architecture", "hyperparameters", "format_version")


def build_lopt(name: str, config: dict) -> Any:
    """Builds the learned optimizer ``name`` from its ``config()`` dict.

    Raises:
      ValueError: for an unknown name (listing the registered ones) or hyperparameters the
        architecture does not accept.
    """
    if not isinstance(name, str) or name not in LOPTS:
        raise ValueError(f"Unknown learned optimizer architecture {name!r}; expected one of {sorted(LOPTS)}.")
    try:
        return registry.learned_optimizer(name, **dict(config))
    except (TypeError, ValueError) as err:
        raise ValueError(f"Invalid hyperparameters for {name!r}: {config!r} ({err}).") from err


def _path_key(path) -> str:
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            parts.append(str(entry.key))
        else:  # pragma: no cover - future key kinds
            parts.append(str(entry))
    return "/".join(parts)


def _flatten(tree) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    flat = {_path_key(path): leaf for path, leaf in leaves}
    if len(flat) != len(leaves):
        raise ValueError("meta_params has two leaves with the same '/'-joined path.")
    return flat


def save(directory: str | os.PathLike, lopt: Any, meta_params: Any, metadata: dict) -> Path:
    """Writes a checkpoint directory atomically (replacing an existing one).

    Args:
      directory: the checkpoint directory to create.
      lopt: the learned optimizer (``name`` and ``config()`` are recorded).
      meta_params: its meta-parameters θ (a pytree of arrays).
      metadata: JSON-serialisable provenance merged into ``config.json`` (component version,
        params hash, data hashes, git commit, …). Must not use the keys
        ``architecture``, ``hyperparameters`` or ``format_version``.

    Returns:
      The checkpoint directory as a ``Path``.

    Raises:
      ValueError: if ``metadata`` uses a reserved key or is not JSON-serialisable.
    """
    directory = Path(directory)
    clash = sorted(set(metadata) & set(_RESERVED_KEYS))
    if clash:
        raise ValueError(f"save: metadata may not set the reserved keys {clash}.")
    if lopt.name not in LOPTS:
        raise ValueError(
            f"save: architecture {lopt.name!r} is not registered in LOPTS {sorted(LOPTS)}, so the "
            "checkpoint could not be loaded back."
        )
    config = {
        "architecture": lopt.name,
        "hyperparameters": lopt.config(),
        "format_version": FORMAT_VERSION,
        **metadata,
    }
    try:
        config_text = json.dumps(config, indent=2, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"save: config/metadata must be JSON-serialisable ({err}).") from err
    weights = {k: np.ascontiguousarray(np.asarray(v)) for k, v in _flatten(meta_params).items()}
    from safetensors.numpy import save_file  # noqa: PLC0415 - optional on bare GPU workers

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"architecture": lopt.name})
        (tmp / CONFIG_FILE).write_text(config_text + "\n", encoding="utf-8")
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / "ckpt")
            try:
                os.replace(tmp, directory)
            except BaseException:
                os.replace(old / "ckpt", directory)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _read_config(path: Path) -> dict:
    if not path.is_dir():
        raise FileNotFoundError(f"Learned-optimizer checkpoint directory not found: {path}")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} has no {CONFIG_FILE}: {config_path}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"Checkpoint {path}: {CONFIG_FILE} is not valid JSON ({err}).") from err
    if not isinstance(config, dict) or not {"architecture", "hyperparameters"} <= set(config):
        raise ValueError(
            f"Checkpoint {path}: {CONFIG_FILE} must be an object with 'architecture' and "
            "'hyperparameters' (written by components.optimizers.save)."
        )
    return config


def load_meta_params(path: str | os.PathLike) -> tuple[Any, Any, dict]:
    """Reads a checkpoint directory.

    Returns:
      ``(lopt, meta_params, config)``: the rebuilt learned optimizer, its meta-parameters (a pytree
      of ``jax.Array`` shaped like ``lopt.init_meta_params``'s, cast to the template dtypes) and
      the parsed ``config.json``.

    Raises:
      FileNotFoundError: if the directory or one of its files is missing.
      ValueError: if the files are corrupted or the weights do not match the architecture.
    """
    path = Path(path)
    config = _read_config(path)
    try:
        lopt = build_lopt(config["architecture"], config["hyperparameters"])
    except ValueError as err:
        raise ValueError(f"Checkpoint {path}: {err}") from err
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} has no {WEIGHTS_FILE}: {weights_path}")
    from safetensors import SafetensorError  # noqa: PLC0415 - optional on bare GPU workers
    from safetensors.numpy import load_file  # noqa: PLC0415

    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"Checkpoint {path}: cannot read {WEIGHTS_FILE} ({err}).") from err

    template = jax.eval_shape(lopt.init_meta_params, jax.random.key(0))
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    expected = {_path_key(p): leaf for p, leaf in leaves_with_path}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint {path} does not match architecture {lopt.name!r} with its config: "
            f"missing keys {missing}, unexpected keys {unexpected}."
        )
    leaves = []
    for key, leaf in expected.items():
        value = weights[key]
        if tuple(value.shape) != tuple(leaf.shape):
            raise ValueError(
                f"Checkpoint {path}: weight {key!r} has shape {tuple(value.shape)}, expected "
                f"{tuple(leaf.shape)} for {lopt.name!r} with its config."
            )
        leaves.append(jax.numpy.asarray(value, dtype=leaf.dtype))
    return lopt, jax.tree.unflatten(treedef, leaves), config


def resolve(reference: str | os.PathLike) -> Path:
    """The local checkpoint directory of ``reference``: a path, or a name a registered source resolves.

    Sources are the entry points of :data:`CHECKPOINT_SOURCES_GROUP` (installed with the pipeline:
    MLflow registered models, ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or a bare
    registered name meaning its latest version).

    Raises:
      FileNotFoundError: if no directory exists there and no source knows the name.
    """
    path = Path(reference)
    if path.is_dir():
        return path
    tried = []
    for entry in importlib.metadata.entry_points(group=CHECKPOINT_SOURCES_GROUP):
        tried.append(entry.name)
        found = entry.load()(str(reference))
        if found is not None:
            return Path(found)
    raise FileNotFoundError(
        f"{str(reference)!r} is not a learned-optimizer checkpoint directory"
        + (f" and no checkpoint source ({', '.join(tried)}) knows it" if tried else "")
        + ". Pass the directory written by the meta_train stage (e.g. models/lopt) or a registered model "
        "name such as models:/small_fc_lopt/1 (with MLFLOW_TRACKING_URI pointing at its store)."
    )


def load(path_or_registered_name: str | os.PathLike, *, num_steps: int) -> optax.GradientTransformationExtraArgs:
    """A trained learned optimizer as a ready optax transformation: ``lopt.make(meta_params, num_steps=…)``.

    Args:
      path_or_registered_name: a checkpoint directory, or a registered model reference (see
        :func:`resolve`).
      num_steps: length of the run the optimizer will be used for.

    Raises:
      FileNotFoundError: if the checkpoint (or one of its files) cannot be found.
      ValueError: if the files are corrupted or the weights do not match the architecture.
    """
    lopt, meta_params, _ = load_meta_params(resolve(path_or_registered_name))
    return lopt.make(meta_params, num_steps=num_steps)
