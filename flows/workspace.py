"""Experiments other than the committed one run in a workspace of their own, so that a smoke run (or any other
experiment) never overwrites the project's committed results.

``l2o run --params params/<name>.yaml`` in a repository whose ``dvc.lock`` is committed runs in
``.l2o/experiments/<name>/`` (git-ignored): its own git + DVC repository holding a copy of the project's code,
``dvc.yaml``, params and zoo, refreshed and committed before every run, so DVC's stage hashes follow the code as
it is now. It shares the project's MLflow store (same UI, same registry: ``l2o ui`` shows its runs), JAX
compilation cache, Prefect home and dataset mirror; its outputs (``reports/index.html``, ``metrics/``, ``dvc.lock``,
``models/lopt``) stay in it, and a second run there re-runs only what changed, as usual.

Run in place (this repository's ``params.yaml``, ``dvc.lock`` and outputs): the committed experiment
(``params/default.yaml``, with any ``--set``), the resolved ``params.yaml`` itself, a repository without a
committed ``dvc.lock``, ``--in-place``, or ``L2O_IN_PLACE=1`` (which l2o's own checkouts set: team workers and
``l2o reproduce`` re-run a commit where it is checked out).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["IN_PLACE_ENV", "DEFAULT_PARAMS", "workspace_for", "prepare", "run_in_workspace"]

IN_PLACE_ENV = "L2O_IN_PLACE"
DEFAULT_PARAMS = "params/default.yaml"
EXPERIMENTS = Path(".l2o") / "experiments"
# what a workspace copies (the code DVC hashes as stage dependencies, the params, the pipeline, the zoo)
_COPY = [
    "components",
    "flows",
    "params",
    "dvc.yaml",
    "pyproject.toml",
    "uv.lock",
    "prefect.yaml",
    ".gitignore",
    "models/zoo",
]
_GIT_ID = ["-c", "user.name=l2o", "-c", "user.email=l2o@localhost"]


def _committed_lock(root: Path) -> bool:
    proc = subprocess.run(["git", "ls-files", "--error-unmatch", "dvc.lock"], cwd=root, capture_output=True)
    return proc.returncode == 0


def workspace_for(root: Path, params_file: str, in_place: bool = False) -> Path | None:
    """The workspace an ``l2o run --params params_file`` runs in, or None to run in ``root`` (module docstring)."""
    if in_place or os.environ.get(IN_PLACE_ENV, "") not in ("", "0"):
        return None
    path = (Path(root) / params_file).resolve()
    if path in ((Path(root) / DEFAULT_PARAMS).resolve(), (Path(root) / "params.yaml").resolve()):
        return None
    if not _committed_lock(root):
        return None
    return Path(root) / EXPERIMENTS / path.stem


def _refresh(root: Path, ws: Path) -> None:
    """Copy the project's code, params and pipeline into ``ws`` (a git + DVC repository, made on first use)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in _COPY:
        src, dst = root / name, ws / name
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def _git(ws: Path, *args: str) -> None:
    subprocess.run(["git", *_GIT_ID, *args], cwd=ws, check=True, capture_output=True)


def prepare(root: Path, ws: Path) -> None:
    """Make ``ws`` (or bring it up to date) a git + DVC repository with a fresh copy of the project's code."""
    new = not (ws / ".git").exists()
    ws.mkdir(parents=True, exist_ok=True)
    # a fresh clone holds the zoo entries' .dvc files, not their weights: check them out here first (from the
    # project's zoo remote, which the workspace's DVC config does not name), so that the workspace gets the files
    from flows.zoo import materialize  # noqa: PLC0415

    materialize(root, log=lambda _: None)
    _refresh(root, ws)
    if new:
        _git(ws, "init", "-q")
        dvc = Path(sys.executable).parent / "dvc"
        for cmd in (["init", "-q"], ["config", "core.analytics", "false"], ["config", "core.check_update", "false"]):
            subprocess.run([str(dvc), *cmd], cwd=ws, check=True, capture_output=True)
    # the copy only: the workspace's own results (dvc.lock, metrics) are never committed, so it runs in place
    _git(ws, "add", "-A", "--", *(name for name in _COPY if (ws / name).exists()))
    _git(ws, "commit", "-q", "--allow-empty", "-m", f"l2o workspace of {root}")


def run_in_workspace(root: Path, ws: Path, params_file: str, argv: list[str]) -> int:
    """Refresh ``ws`` and run ``l2o run`` there with ``argv`` (``run --params FILE ...``; FILE as seen from ``ws``).

    Returns the run's exit code."""
    path = (Path(root) / params_file).resolve()
    inside = path.is_relative_to((root / "params").resolve())
    given = str(path.relative_to(root.resolve())) if inside else str(path)
    rel = ws.relative_to(root) if ws.is_relative_to(root) else ws
    print(
        f"l2o: {params_file} is not the committed experiment ({DEFAULT_PARAMS}): it runs in its own workspace {rel}/"
        " (this project's results stay as committed; --in-place runs it here)",
        flush=True,
    )
    prepare(root, ws)
    args = list(argv)
    args[args.index("--params") + 1] = given
    # the environment `l2o reproduce` gives its worktree: the project's MLflow store and artifact folder (one UI,
    # one registry), Prefect home, JAX cache and data mirror; L2O_IN_PLACE so that it runs there
    from flows.team.reproduce_worktree import child_env  # noqa: PLC0415
    from flows.tracking import tracking_uri  # noqa: PLC0415

    env = child_env(root, ws, tracking_uri(root))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ws, env=env)
    if proc.returncode == 0:
        print(f"l2o: results of {params_file}: {rel}/ (report {rel}/reports/index.html)", flush=True)
    return proc.returncode
