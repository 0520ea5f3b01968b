"""The re-run of `l2o reproduce`: the run's commit checked out in a git worktree outside the repository, the
environment its ``uv.lock`` asks for, and ``l2o run --force`` there with its output echoed (see
:mod:`flows.team.reproduce` for the whole procedure)."""

import os
import re
import shutil
import sys
import tempfile
from collections import deque
from pathlib import Path

from flows.team.common import WORKSPACES_ENV, find_uv, git, run, stream, uv_lock

__all__ = [
    "ReproduceError",
    "RerunFailed",
    "say",
    "checked_commit",
    "workdir",
    "link_tree",
    "child_env",
    "rerun_command",
    "rerun",
    "remove_worktree",
]

_PREFIX = "  | "  # the child's output lines, on stderr
_TAIL = 60  # lines of the child's output repeated when it fails


class ReproduceError(Exception):
    """Bad input for a reproduction (the message names the problem and the fix); the CLI exits with 2."""


class RerunFailed(Exception):
    """The re-run could not start or did not finish; ``tail`` holds the last lines of what it printed."""

    def __init__(self, message: str, tail: str = ""):
        super().__init__(message)
        self.tail = tail


def say(msg: str) -> None:
    print(f"l2o: reproduce: {msg}", file=sys.stderr, flush=True)


def checked_commit(root: Path, run) -> tuple[str, list[str]]:
    """The full sha of the MLflow run's commit (tag ``git_commit``), checked to be in ``root``'s repository, and
    warnings (a ``+dirty`` run's uncommitted changes are lost)."""
    tag = (run.data.tags.get("git_commit") or "").strip()
    sha = tag.removesuffix("+dirty")
    if not sha or sha == "unknown" or not re.fullmatch(r"[0-9a-fA-F]{7,64}", sha):
        raise ReproduceError(
            f"run {run.info.run_id} records no git commit (tag git_commit={tag!r}): it was not run inside a git"
            " repository, so its code cannot be recovered"
        )
    warnings = []
    if tag.endswith("+dirty"):
        warnings.append(
            f"the original run had uncommitted changes (git_commit {tag}): they are not reproducible, commit"
            f" {sha[:12]} is re-run as committed (the params are exact: they come from the run's artifact)"
        )
    try:
        inside = git(root, "rev-parse", "--is-inside-work-tree", check=False)
    except OSError as exc:
        raise ReproduceError(f"cannot run git ({exc}): install git and put it on PATH") from None
    if inside.returncode != 0:
        raise ReproduceError(f"{root} is not a git repository: reproduce from the repository the run was made in")
    if git(root, "cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode != 0:
        raise ReproduceError(
            f"commit {sha} of run {run.info.run_id} is not in the git repository at {root}: `git fetch` the branch"
            " or remote that has it (e.g. `git fetch --all`), then run `l2o reproduce` again"
        )
    return git(root, "rev-parse", f"{sha}^{{commit}}").stdout.strip(), warnings


def workdir(root: Path, given: str | None, run_id: str) -> tuple[Path, Path | None]:
    """(the worktree folder, a folder to delete with it, if this command created it)."""
    root = root.resolve()
    prefix = f"l2o-reproduce-{run_id[:8]}-"
    if given:
        base = Path(given).expanduser().resolve()
        what = "--workdir"
    else:
        env = os.environ.get(WORKSPACES_ENV)
        base = Path(env).expanduser().resolve() if env else Path(tempfile.gettempdir()).resolve()
        what = f"${WORKSPACES_ENV}" if env else "the temp folder (TMPDIR)"
    if base == root or base.is_relative_to(root):
        raise ReproduceError(
            f"{what} {base} is inside the repository {root}: DVC would find the worktree's dvc.yaml there; choose a"
            f" folder outside it (--workdir DIR or ${WORKSPACES_ENV})"
        )
    if given and not base.exists():
        base.parent.mkdir(parents=True, exist_ok=True)
        return base, None
    if given and base.is_dir() and not any(base.iterdir()):
        return base, None
    if base.exists() and not base.is_dir():
        raise ReproduceError(f"{what} {base} is a file, not a folder: give a folder for the worktree")
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    return path, path


def link_tree(src: Path, dest: Path) -> None:
    """Hard-link (else copy) the files of ``src`` into ``dest`` (a download cache: verified, never edited)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dest, copy_function=link, dirs_exist_ok=True)


def child_env(root: Path, worktree: Path, uri: str) -> dict[str, str]:
    """The re-run's environment: the original tracking store, the worktree's code first on ``PYTHONPATH``, the
    project's Prefect home, XLA cache and dataset mirror; no variable of a run in progress."""
    from components.stages.fetch import MIRROR_ENV, resolve_mirror  # noqa: PLC0415

    env = dict(os.environ)
    for var in ("L2O_MLFLOW_RUN_ID", "L2O_MLFLOW_PARENT_RUN_ID", "L2O_RESUME", "MLFLOW_RUN_ID", "DVC_STAGE"):
        env.pop(var, None)
    env["MLFLOW_TRACKING_URI"] = uri
    env["L2O_IN_PLACE"] = "1"  # the worktree is the re-run's own workspace (flows.workspace)
    # the re-run's artifacts go where the original's are: the project's store folder (flows.tracking refuses an
    # experiment whose artifacts are in another folder unless it is this explicit root)
    env.setdefault("L2O_MLFLOW_ARTIFACT_ROOT", str(root / ".mlflow"))
    env["PYTHONPATH"] = os.pathsep.join([str(worktree), *filter(None, [env.get("PYTHONPATH")])])
    # the project's state and caches, not fresh ones in the worktree (the worktree's ../shared is not the mirror)
    env.setdefault("PREFECT_HOME", str(root / ".prefect"))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / ".jax_cache"))
    try:
        mirror = resolve_mirror(root)
    except FileNotFoundError:
        mirror = None  # the child reports the bad L2O_DATA_MIRROR itself
    if mirror is not None and MIRROR_ENV not in env:
        env[MIRROR_ENV] = str(mirror)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def rerun_command(root: Path, worktree: Path, env: dict[str, str]) -> tuple[list[str], str]:
    """The `l2o run` command for the worktree and the environment it runs in (words for the report)."""
    run_args = ["run", "--params", "params.yaml", "--force"]
    theirs = uv_lock(worktree)
    same = uv_lock(root) == theirs
    if same or theirs is None:
        if not same:
            say("warning: the commit has no uv.lock: running it with the current environment")
        return [sys.executable, "-m", "flows.cli", *run_args], f"current interpreter {sys.executable}"
    uv = find_uv(root)
    if uv is None:
        raise ReproduceError(
            "the commit's uv.lock differs from the project's, and uv is not installed to build its environment:"
            " put uv on PATH (https://docs.astral.sh/uv/) or in .tools/bin/uv"
        )
    venv = worktree / ".venv"
    say(f"the commit's uv.lock differs from the project's: installing it into {venv} (uv sync --frozen)")
    env.update(UV_PROJECT_ENVIRONMENT=str(venv))
    env.pop("VIRTUAL_ENV", None)
    proc = run([uv, "sync", "--frozen"], cwd=worktree, env=env)
    if proc.returncode != 0:
        raise RerunFailed(f"`uv sync --frozen` failed in {worktree} (exit {proc.returncode})", proc.stderr)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return [str(venv / "bin" / "l2o"), *run_args], f"uv.lock of the commit in {venv}"


def rerun(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run ``cmd``, echoing its output on stderr with a prefix; (exit code, its last lines)."""
    tail: deque[str] = deque(maxlen=_TAIL)

    def echo(line: str) -> None:
        tail.append(line)
        print(_PREFIX + line, file=sys.stderr, flush=True)

    code = stream(cmd, cwd, env, echo)
    return code, "\n".join(tail)


def remove_worktree(root: Path, worktree: Path, created: Path | None) -> None:
    git(root, "worktree", "remove", "--force", str(worktree), check=False)
    if worktree.exists():
        shutil.rmtree(worktree, ignore_errors=True)
    if created is not None and created.exists():
        shutil.rmtree(created, ignore_errors=True)
    git(root, "worktree", "prune", check=False)
