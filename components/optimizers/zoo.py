"""The zoo of pretrained learned optimizers: ``models/zoo/<name>/`` checkpoint directories, by name.

A zoo entry is an ordinary learned-optimizer checkpoint (:mod:`~.checkpoint`: ``weights.safetensors`` +
``config.json``) whose ``config.json`` also carries its lineage under ``"zoo"`` (params, git commit,
data hashes, meta-training curves, outer steps done of planned, wall time, device, date), written by
``l2o zoo add``. This module only finds entries; ``load("zoo:<name>")`` (:func:`~.checkpoint.load`)
reads one like any checkpoint, so a zoo optimizer drops into a plain optax loop::

    from components.optimizers import load
    opt = load("zoo:small_fc_lopt").make(num_steps=1000)   # an optax.GradientTransformationExtraArgs

Where the zoo is: ``zoo_dir`` when given (a stage passes ``<project root>/models/zoo``), else
``models/zoo`` of the repository this package lives in (``components/`` sits at the repository root).
*Inferred*: the library reads no environment variable (layering rule), so there is no ``$L2O_ZOO``;
a zoo elsewhere is named explicitly with ``zoo_dir``.
"""

import json
import os
import re
from pathlib import Path

__all__ = [
    "ZOO_PREFIX",
    "ZOO_SUBDIR",
    "NAME_PATTERN",
    "check_name",
    "default_zoo_dir",
    "entries",
    "entry_dir",
    "read_lineage",
]

ZOO_PREFIX = "zoo:"
ZOO_SUBDIR = Path("models/zoo")  # relative to the repository (project) root
# letters, digits, "_" and "-": safe as a folder, an MLflow model name and in metric keys (no "." or "/")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_name(name: str) -> str:
    """``name`` if it is a valid zoo entry name, else ``ValueError`` saying what is allowed."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"invalid zoo entry name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
            " (e.g. small_fc_lopt)"
        )
    return name


def default_zoo_dir() -> Path:
    """``models/zoo`` of the repository holding this package (``<root>/components/optimizers/zoo.py``)."""
    return Path(__file__).resolve().parents[2] / ZOO_SUBDIR


def _zoo(zoo_dir: str | os.PathLike | None) -> Path:
    return Path(zoo_dir) if zoo_dir is not None else default_zoo_dir()


def entries(zoo_dir: str | os.PathLike | None = None) -> list[str]:
    """The names of the entries of the zoo (sorted): sub-directories holding a ``config.json``."""
    zoo = _zoo(zoo_dir)
    if not zoo.is_dir():
        return []
    return sorted(
        p.name
        for p in zoo.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file() and NAME_PATTERN.match(p.name)
    )


def entry_dir(name: str, zoo_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint directory of zoo entry ``name`` (``"zoo:"`` prefix allowed).

    Raises:
      ValueError: the name is not a valid entry name.
      FileNotFoundError: no such entry; the message lists the entries there are.
    """
    name = name[len(ZOO_PREFIX) :] if name.startswith(ZOO_PREFIX) else name
    check_name(name)
    zoo = _zoo(zoo_dir)
    path = zoo / name
    if not (path / "config.json").is_file():
        have = entries(zoo)
        raise FileNotFoundError(
            f"no zoo entry {name!r} in {zoo}: "
            + (f"available entries are {have}" if have else "the zoo is empty")
            + " (`l2o zoo` lists them; `l2o zoo add NAME --from DIR` adds one; after a clone, `dvc pull` fetches"
            " models/zoo)"
        )
    return path


def read_lineage(name: str, zoo_dir: str | os.PathLike | None = None) -> dict:
    """The parsed ``config.json`` of entry ``name`` (architecture, hyperparameters and the ``zoo`` lineage)."""
    path = entry_dir(name, zoo_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"zoo entry {name!r}: {path} is not valid JSON ({err}); re-add it with `l2o zoo add`") from err
