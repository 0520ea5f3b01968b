"""DVC glue: the stage graph comes from ``dvc.yaml`` only; stage status and commit go through DVC's API.

All functions expect the working directory to be the project root (DVC resolves targets from it).
"""

import contextlib
import io
import logging
from pathlib import Path

__all__ = ["open_repo", "stage_order", "changed_stages", "is_changed", "commit_stage", "find_root"]


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


def stage_order(repo) -> list[str]:
    """Stage names of ``dvc.yaml`` in dependency order (each stage after what it depends on)."""
    import networkx as nx  # noqa: PLC0415  (a DVC dependency)

    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    order = list(reversed(list(nx.lexicographical_topological_sort(graph, key=lambda s: s.name))))
    return [s.name for s in order]


def _quiet(fn, *args, **kwargs):
    logging.disable(logging.INFO)  # DVC's "Updating lock file" notices
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
