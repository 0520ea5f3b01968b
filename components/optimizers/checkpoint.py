"""Learned-optimizer checkpoints: a directory with ``weights.safetensors`` and ``config.json``.

Layout of a checkpoint directory::

    <directory>/
      weights.safetensors   # flattened meta-params, key = "/"-joined pytree path ("nn/w0", …)
      config.json           # {"architecture": name, "hyperparameters": lopt.config(),
                            #  "format_version": 1, **metadata (component version, hashes, commit…)}

:func:`save` writes both files into a temporary sibling directory and renames it into place, so a
reader never sees a half-written checkpoint. :func:`load` rebuilds the learned optimizer from
``config.json`` (through the registry's name table) and checks the weights against its
``init_meta_params`` template; it returns a :class:`TrainedOptimizer` (the learned optimizer, its
meta-parameters and the config) whose ``make(num_steps=…)`` is the ready optax transformation.

``load`` reads a local directory (or a ``file:`` URI, or ``zoo:<name>``: the entry
``models/zoo/<name>`` of the zoo, :mod:`~.zoo`) and nothing else: the library never reaches
the pipeline's MLflow registry. The pipeline resolves a registered model name
(``models:/<name>/<version>``) to its directory first (``flows.mlflow_models.resolve_checkpoint``).

Example:
  >>> import jax, tempfile, os
  >>> from components.optimizers import create_learned
  >>> lopt = create_learned("small_fc_lopt")
  >>> theta = lopt.init_meta_params(jax.random.key(0))
  >>> path = os.path.join(tempfile.mkdtemp(), "small_fc_lopt")
  >>> path = save(path, lopt, theta, {"git_commit": "abc123"})
  >>> opt = load(path).make(num_steps=1000)
"""

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse

import jax
import numpy as np
import optax

from components.optimizers import registry, zoo

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "TrainedOptimizer", "load", "save"]

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
_RESERVED_KEYS = ("architecture", "hyperparameters", "format_version")


class TrainedOptimizer(NamedTuple):
    """A loaded checkpoint: the learned optimizer, its meta-parameters and its ``config.json``.

    Attributes:
      lopt: the rebuilt learned optimizer (``init_meta_params`` / ``make``, as meta-training uses it).
      meta_params: its meta-parameters θ, shaped and typed like ``lopt.init_meta_params``'s.
      config: the parsed ``config.json`` (architecture, hyperparameters, provenance).
    """

    lopt: Any
    meta_params: Any
    config: dict

    def make(self, *, num_steps: int) -> optax.GradientTransformationExtraArgs:
        """The trained optimizer as an optax transformation for a run of ``num_steps`` steps."""
        return self.lopt.make(self.meta_params, num_steps=num_steps)


def _build(name: str, config: dict) -> Any:
    if not isinstance(name, str) or name not in registry.LEARNED:
        raise ValueError(
            f"Unknown learned optimizer architecture {name!r}; expected one of {sorted(registry.LEARNED)}."
        )
    try:
        return registry.create_learned(name, **dict(config))
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
    if lopt.name not in registry.LEARNED:
        raise ValueError(
            f"save: architecture {lopt.name!r} is not registered in {sorted(registry.LEARNED)}, so the "
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
    # np.ascontiguousarray would turn a 0-d leaf into shape (1,): np.array(order="C") keeps every shape
    weights = {k: np.array(v, order="C") for k, v in _flatten(meta_params).items()}
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


def _directory(path_or_uri: str | os.PathLike, zoo_dir: str | os.PathLike | None = None) -> Path:
    """The local directory of a path, a ``file:`` URI or a ``zoo:<name>`` entry."""
    text = str(os.fspath(path_or_uri))
    if text.startswith(zoo.ZOO_PREFIX):
        return zoo.entry_dir(text, zoo_dir)
    if text.startswith("file:"):
        return Path(unquote(urlparse(text).path))
    if text.startswith("models:") or "://" in text:
        raise FileNotFoundError(
            f"{text!r} is not a learned-optimizer checkpoint directory: components.optimizers.load reads local "
            "directories (or file: URIs) only. Resolve a registered model to its directory first, e.g. "
            "flows.mlflow_models.resolve_checkpoint('models:/small_fc_lopt/1'), or pass the directory written by the "
            "meta_train stage (e.g. models/lopt)."
        )
    return Path(text)


def load(path_or_uri: str | os.PathLike, *, zoo_dir: str | os.PathLike | None = None) -> TrainedOptimizer:
    """Reads a checkpoint directory.

    Args:
      path_or_uri: the checkpoint directory (a path or a ``file:`` URI), as written by :func:`save`, or
        ``"zoo:<name>"``: the zoo entry ``<name>`` (:func:`components.optimizers.zoo.entry_dir`).
      zoo_dir: the zoo folder for ``zoo:`` names (default: ``models/zoo`` of this repository).

    Returns:
      A :class:`TrainedOptimizer`: the rebuilt learned optimizer, its meta-parameters (a pytree of
      ``jax.Array`` shaped like ``lopt.init_meta_params``'s, cast to the template dtypes) and the
      parsed ``config.json``; ``.make(num_steps=…)`` gives the optax transformation.

    Raises:
      FileNotFoundError: if the directory or one of its files is missing, ``path_or_uri`` is a
        registered-model reference (the pipeline resolves those to directories first), or a ``zoo:``
        name the zoo does not hold (the message lists the entries).
      ValueError: if the files are corrupted or the weights do not match the architecture.
    """
    path = _directory(path_or_uri, zoo_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{str(path_or_uri)!r} is not a learned-optimizer checkpoint directory. Pass the directory written by "
            "the meta_train stage (e.g. models/lopt); the pipeline resolves registered model names such as "
            "models:/small_fc_lopt/1 to their directory (flows.mlflow_models.resolve_checkpoint)."
        )
    config = _read_config(path)
    try:
        lopt = _build(config["architecture"], config["hyperparameters"])
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
    return TrainedOptimizer(lopt, jax.tree.unflatten(treedef, leaves), config)
