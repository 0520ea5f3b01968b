"""Shared plumbing for pipeline stages: their context and result, atomic writes, hashing, provenance.

Stages do file I/O and call the library; they never touch Prefect or MLflow, and read nothing from the
environment: everything orchestration gives a stage arrives in its :class:`StageContext`, and each stage
returns a :class:`StageResult` that the orchestration layer (``flows/``) logs wherever it wants.
Not a stage: no stage imports another stage, they all import this module (and :mod:`~.paths`).
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from components.stages.paths import MANIFEST, PREPARED_DIR, RUN_LOG_DIR

__all__ = [
    "StageContext",
    "StageResult",
    "MapFn",
    "atomic_write_bytes",
    "atomic_write_json",
    "strict_json",
    "read_json",
    "atomic_write_text",
    "atomic_dir",
    "sha256_file",
    "sha256_bytes",
    "git_commit",
    "write_run_log",
    "read_run_log",
    "serial_map",
    "Logger",
    "OuterStepHook",
    "print_logger",
    "read_manifest",
    "load_prepared",
]

# A map function ``map_fn(fn, items) -> list`` lets the orchestrator fan stage work out (Prefect tasks)
# without stages knowing about it. The default runs items one after the other.
MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], list]
Logger = Callable[[str], None]
# called by meta-training after each compiled outer call (after its checkpoint): (outer steps done, total)
OuterStepHook = Callable[[int, int], None]


def serial_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list:
    return [fn(item) for item in items]


def print_logger(msg: str) -> None:
    print(msg, flush=True)


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What orchestration gives a stage besides its params and project root (``run(params, root, context)``).

    The defaults run a stage on its own (tests, a notebook): print the log, one item after the other,
    no resuming, no tracking run. ``flows.stage_exec`` builds the context for ``l2o run`` and
    ``l2o stage`` (so also ``dvc repro``, whose commands are ``l2o stage <name>``).

    Attributes:
      log: receives the stage's progress lines.
      map_fn: ``map_fn(fn, items) -> list``; fans the stage's work items out (Prefect tasks in
        ``l2o run``); ``fn`` is module-level and the items picklable when the runner uses processes.
      resume: continue meta-training from its checkpoints (``l2o run --resume``).
      run_id: the tracking (MLflow) run the stage's outputs belong to, shown in the report; ``None``
        outside a tracked run.
      on_outer_step: passed to :func:`components.meta.meta_train` as ``on_outer_step``: called after
        each compiled outer call, after its checkpoint, with ``(outer steps done, total outer steps)``
        (the failure tests kill the process from it).

    Example:
      >>> ctx = StageContext(log=lambda line: None)
      >>> ctx.resume, ctx.run_id
      (False, None)
    """

    log: Logger = print_logger
    map_fn: MapFn = serial_map
    resume: bool = False
    run_id: str | None = None
    on_outer_step: OuterStepHook | None = None


@dataclasses.dataclass
class StageResult:
    """What a stage produced, for the orchestrator to log.

    Attributes:
      stage: stage name (as in ``dvc.yaml``).
      version: the stage's ``VERSION``.
      metrics: scalar metrics (name -> value).
      curves: metric histories, name -> list of ``(step, value)``.
      artifacts: files or directories worth attaching to a tracking run (relative to the root).
      model_dir: a learned-optimizer checkpoint directory to log as a model, if any.
      tags: free-form string tags.
    """

    stage: str
    version: str
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    artifacts: list[Path] = dataclasses.field(default_factory=list)
    model_dir: Path | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


NONFINITE_SUFFIX = "_nonfinite"


def _flag(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _strict(obj: Any) -> tuple[Any, Any]:
    """``(obj with inf/nan as None, flags)``: flags is the scalar's "nan"/"inf"/"-inf", a list's ``{"i[.j]": flag}``
    of its replaced elements, or None. A dict records its entries' flags itself (:func:`strict_json`)."""
    if isinstance(obj, float):
        return (None, _flag(obj)) if not math.isfinite(obj) else (obj, None)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            clean, flags = _strict(v)
            out[k] = clean
            if flags is not None:
                out[f"{k}{NONFINITE_SUFFIX}"] = flags
        return out, None
    if isinstance(obj, (list, tuple)):
        items, flags = [], {}
        for i, v in enumerate(obj):
            clean, f = _strict(v)
            items.append(clean)
            if isinstance(f, str):
                flags[str(i)] = f
            elif isinstance(f, dict):
                flags.update({f"{i}.{j}": g for j, g in f.items()})
        return items, (flags or None)
    return obj, None


def strict_json(obj: Any) -> Any:
    """``obj`` as strict JSON can hold it: every inf/nan becomes null, and the entry holding it gets a sibling
    ``<key>_nonfinite`` flag: ``"nan"``, ``"inf"`` or ``"-inf"`` for a number, ``{"<index>[.<index>]": flag}``
    for the replaced elements of a list. :func:`read_json` restores the numbers."""
    clean, flags = _strict(obj)
    if flags is not None:  # a top-level number or list cannot carry a sibling flag
        raise ValueError(f"a top-level value with non-finite numbers cannot be written as strict JSON: {flags}")
    return clean


def _restore(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_restore(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    flagged = {k: k[: -len(NONFINITE_SUFFIX)] for k in obj if k.endswith(NONFINITE_SUFFIX)}
    flagged = {k: base for k, base in flagged.items() if base in obj}
    out = {k: _restore(v) for k, v in obj.items() if k not in flagged}
    for k, base in flagged.items():
        flags = obj[k]
        if isinstance(flags, str):
            out[base] = float(flags)
        elif isinstance(flags, dict):
            for where, flag in flags.items():
                *parents, last = (int(i) for i in where.split("."))
                target = out[base]
                for i in parents:
                    target = target[i]
                target[last] = float(flag)
    return out


def read_json(path: Path) -> Any:
    """A JSON file written by :func:`atomic_write_json`, with its flagged inf/nan numbers restored."""
    return _restore(json.loads(Path(path).read_text()))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON (no bare NaN/Infinity tokens: :func:`strict_json`), written atomically."""
    atomic_write_text(path, json.dumps(strict_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` whole, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def git_commit(root: Path) -> str:
    """The HEAD commit of the repository at ``root`` ("unknown" outside git), "+dirty" if modified."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_run_log(root: Path, stage: str, facts: dict) -> None:
    """Record the facts of a stage run that differ between identical runs (wall times, rates, the outer step
    a run resumed from, the git commit, the host) in ``.l2o/runs/<stage>.json``: git-ignored and not a DVC
    output, so the tracked outputs of identical runs hash alike. The orchestrator logs the same facts to
    MLflow (the stage's :class:`StageResult` metrics and tags)."""
    record = {"stage": stage, "git_commit": git_commit(root), "host": os.uname().nodename, "pid": os.getpid(), **facts}
    atomic_write_json(Path(root) / RUN_LOG_DIR / f"{stage}.json", record)


def read_run_log(root: Path, stage: str) -> dict | None:
    """The last :func:`write_run_log` record of ``stage`` under ``root`` (None if there is none)."""
    path = Path(root) / RUN_LOG_DIR / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def read_manifest(root: Path) -> dict:
    """The prepare_data manifest; a clear error if the stage has not run."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run the prepare_data stage first (`l2o run` or `dvc repro prepare_data`)"
        )
    return json.loads(path.read_text())


def load_prepared(root: Path, name: str) -> dict:
    """The arrays of prepared dataset ``name`` (a name of ``data.datasets``, e.g. ``mnist``, ``mnist_28``).

    Image and MNIST-1D files hold ``x_train, y_train, x_test, y_test``; text corpora
    ``train_tokens, val_tokens, test_tokens, vocab`` (see ``components.data.prepare``).
    """
    import numpy as np  # noqa: PLC0415  (keep this module light for the CLI)

    path = Path(root) / PREPARED_DIR / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(
            f"prepared dataset {path} not found: add {name!r} to data.datasets and run prepare_data"
        )
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
