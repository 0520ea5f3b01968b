"""DVC glue: the stage graph comes from ``dvc.yaml`` only; stage status and commit go through DVC's API.

All functions expect the working directory to be the project root (DVC resolves targets from it).

:class:`RepoLock` holds DVC's own repository lock (``.dvc/tmp/lock``) for a whole ``l2o run``, so DVC's
commands respect a running pipeline: a ``dvc repro`` started beside it stops at once ("Unable to acquire
lock") instead of deleting the outputs of the stages it would re-run before their ``l2o stage`` is refused
by l2o's own repository lock. The pipeline's DVC calls go through the same ``Repo`` object, whose lock is
re-entrant (DVC's ``lock_repo``).
"""

import contextlib
import io
import logging
from pathlib import Path

__all__ = [
    "DvcBusy",
    "RepoLock",
    "open_repo",
    "stage_order",
    "changed_stages",
    "is_changed",
    "commit_stage",
    "find_root",
    "run_cache_key",
    "restore_stage",
    "default_remote",
    "default_remote_url",
    "push_stage",
]


def find_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding ``dvc.yaml`` (the project root)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    raise FileNotFoundError(
        f"no dvc.yaml in {here} or its parents: run l2o from the project folder (the one with dvc.yaml)"
    )


def open_repo(root: Path):
    from dvc.repo import Repo  # noqa: PLC0415  (import cost only where DVC is used)

    if not (Path(root) / ".dvc").is_dir():
        raise FileNotFoundError(
            f"{root} is not a DVC repository (no .dvc folder): run `git init && dvc init` there first"
        )
    return Repo(str(root))


class DvcBusy(RuntimeError):
    """Another process (a ``dvc`` command) holds DVC's lock of this repository."""


class RepoLock:
    """DVC's repository lock, held through ``repo`` (``with RepoLock(repo):``; :meth:`released` lets go for a
    while, e.g. while a work pool runs a stage and pushes with its own DVC processes)."""

    def __init__(self, repo):
        self.repo = repo
        self._held: contextlib.ExitStack | None = None

    def acquire(self) -> None:
        from dvc.lock import LockError  # noqa: PLC0415
        from dvc.repo import lock_repo  # noqa: PLC0415

        stack = contextlib.ExitStack()
        try:
            _quiet(stack.enter_context, lock_repo(self.repo), _level=logging.WARNING)
        except LockError:
            raise DvcBusy(
                f"DVC's lock of {self.repo.root_dir} is held by another process (a `dvc repro`, `dvc pull` or other"
                " dvc command running there): wait for it to finish, then run again"
            ) from None
        self._held = stack

    def release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    @contextlib.contextmanager
    def released(self):
        self.release()
        try:
            yield
        finally:
            self.acquire()

    def __enter__(self) -> "RepoLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def stage_order(repo) -> list[str]:
    """Stage names of ``dvc.yaml`` in dependency order (each stage after what it depends on)."""
    import networkx as nx  # noqa: PLC0415  (a DVC dependency)

    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    # the graph also holds the .dvc files' stages (the zoo's entries), which have no name: order by address, keep
    # the pipeline's
    order = list(reversed(list(nx.lexicographical_topological_sort(graph, key=lambda s: s.addressing))))
    return [s.name for s in order if getattr(s, "name", None)]


def _quiet(fn, *args, _level=logging.INFO, **kwargs):
    logging.disable(_level)  # DVC's "Updating lock file" notices
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return fn(*args, **kwargs)
    finally:
        logging.disable(logging.NOTSET)


def is_changed(repo, name: str) -> bool:
    """Whether DVC considers stage ``name`` out of date (code, data, params, outputs or command)."""
    return bool(_quiet(repo.status, targets=[name]))


def changed_stages(repo, names: list[str]) -> list[str]:
    return [n for n in names if is_changed(repo, n)]


def commit_stage(repo, name: str) -> None:
    """Record stage ``name``'s current deps/params/outs in ``dvc.lock`` and the cache (``dvc commit``)."""
    _quiet(repo.commit, name, force=True)
    # DVC drops its cached index and state when its lock is released; under a held RepoLock, do it here
    repo._reset()  # noqa: SLF001 - what DVC's own lock_repo does at release


def stage_by_name(repo, name: str):
    """The ``dvc.yaml`` stage ``name`` (the index also holds the unnamed stages of ``.dvc`` files)."""
    return next(s for s in repo.index.stages if getattr(s, "name", None) == name)


def run_cache_key(repo, name: str) -> str | None:
    """DVC's run-cache key of stage ``name`` as it stands now (its command, dependencies and params).

    The same key DVC files the stage's outputs under when the stage is committed, so an MLflow run
    tagged with it can be found again when a later run restores the stage from the run-cache. None
    when DVC cannot cache the stage (a missing dependency, no outputs).
    """
    from dvc.stage.cache import _can_hash, _get_stage_hash  # noqa: PLC0415  (DVC's own key function)

    stage = stage_by_name(repo, name)
    recorded = [dep.hash_info for dep in stage.deps]  # what dvc.lock says: put back below
    try:
        _quiet(stage.save_deps)
        return _get_stage_hash(stage) if _can_hash(stage) else None
    except Exception:  # noqa: BLE001 - a dependency that cannot be hashed yet: no key, the stage just runs
        return None
    finally:
        # DVC's restore takes a stage whose in-memory dependency hashes equal the workspace for an
        # up-to-date one and checks out the outputs dvc.lock records: keep the lock's hashes
        for dep, info in zip(stage.deps, recorded):
            dep.hash_info = info


def restore_stage(repo, name: str, *, pull: bool = False) -> bool:
    """Check out stage ``name``'s outputs from DVC's run-cache (fetched from the remote with ``pull``)
    and record them in ``dvc.lock``; False when no run with the current dependencies was cached."""
    from dvc.stage.cache import RunCacheNotFoundError  # noqa: PLC0415

    stage = stage_by_name(repo, name)
    try:
        from dvc.repo import lock_repo  # noqa: PLC0415

        with lock_repo(repo):  # checkout writes the workspace: DVC's lock (re-entrant under a held RepoLock)
            # quiet up to warnings: a miss is the common case ("Some of the cache files do not exist
            # neither locally nor on remote"), not a problem; the stage then simply runs
            if pull:
                _quiet(repo.stage_cache.pull, None, _level=logging.WARNING)
            _quiet(repo.stage_cache.restore, stage, pull=pull, _level=logging.WARNING)
    except RunCacheNotFoundError:
        return False
    commit_stage(repo, name)
    return True


def default_remote(repo) -> str | None:
    """The URL of the project's default DVC remote, if one is configured (any level of config)."""
    return default_remote_url(repo.config)


def default_remote_url(config) -> str | None:
    """The URL of the default remote of a DVC config (``repo.config`` or a ``dvc.config.Config``), if any."""
    name = config.get("core", {}).get("remote")
    if not name:
        return None
    return config.get("remote", {}).get(name, {}).get("url")


def push_stage(repo, name: str) -> int:
    """Push stage ``name``'s run-cache entry and every object it names to the default remote.

    ``dvc push --run-cache`` sends the entries but not the objects of ``cache: false`` outputs (metrics,
    plots), which the entry still names, so a restore elsewhere would miss them; this pushes those too.
    Returns the number of objects sent.
    """
    from dvc.stage.cache import _get_cache_hash, _get_stage_hash  # noqa: PLC0415
    from dvc.stage.serialize import to_single_stage_lockfile  # noqa: PLC0415

    stage = stage_by_name(repo, name)
    key = _get_stage_hash(stage)
    value = _get_cache_hash(to_single_stage_lockfile(stage))
    _quiet(repo.stage_cache.push, None)
    sent = 0
    for objs in repo.stage_cache.get_used_objs([(key, value)]).values():
        result = _quiet(repo.cloud.push, objs)
        if result.failed:
            raise RuntimeError(f"dvc push of stage {name!r} failed for {len(result.failed)} object(s)")
        sent += len(result.transferred)
    return sent
