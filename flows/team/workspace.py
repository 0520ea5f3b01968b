"""The pull steps of ``prefect.yaml``: what a worker does before it loads a team flow.

:func:`checkout` makes a workspace at the exact submitted commit (reused by a re-submitted run, so
meta-training resumes from its checkpoint), :func:`install` finds or builds the environment of the
commit's ``uv.lock``, and :func:`dvc_pull` fetches the committed outputs and the shared run-cache from
the DVC remote. :func:`configure_remote` and :func:`dvc` serve the team flows as well.

Standard library only (git, uv and DVC run as subprocesses).
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

from flows.team.common import (
    TeamError,
    changed_code,
    dvc_command,
    find_uv,
    remote_add_args,
    run_checked,
    uv_lock,
    workspace_root,
)

__all__ = ["checkout", "install", "dvc_pull", "configure_remote", "dvc"]


def dvc(directory: Path, *args: str) -> str:
    """``dvc ARGS`` in ``directory``; its stdout, or TeamError."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    return run_checked(dvc_command(*args), cwd=directory, env=env, what=f"dvc {' '.join(args)}")


def configure_remote(ws: Path, remote: str | None) -> str | None:
    """Make ``remote`` the workspace's default DVC remote (``config.local``); None when there is none."""
    if remote and not remote.startswith("{{"):
        dvc(ws, *remote_add_args(remote))
        return remote
    return None


def checkout(repository: str = "", commit: str = "", purpose: str = "pipeline") -> dict:
    """Pull step: ``{"directory": ...}``, a git workspace of ``repository`` at exactly ``commit``.

    The workspace is ``<L2O_WORKSPACES>/<repo name>-<commit[:12]>-<purpose>``: a run re-submitted for the
    same commit lands in the same folder and finds its checkpoints there. It is cloned into a temporary
    folder and renamed into place, so a worker killed while cloning leaves nothing half-made. A reused
    workspace must still be at ``commit`` with no change to tracked code.
    """
    if not repository or repository.startswith("{{"):
        raise TeamError("no repository to check out: set L2O_REPOSITORY (l2o submit does) to a git URL or path")
    if not commit or commit.startswith("{{"):
        raise TeamError("no commit to check out: set L2O_COMMIT (l2o submit does) to the full commit sha")
    name = Path(repository.rstrip("/")).name.removesuffix(".git") or "project"
    root = workspace_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{name}-{commit[:12]}-{purpose}"
    if not target.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            run_checked(["git", "clone", "--quiet", "--no-checkout", repository, str(tmp)], what="git clone")
            run_checked(["git", "checkout", "--quiet", "--detach", commit], cwd=tmp, what=f"git checkout {commit}")
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    head = run_checked(["git", "rev-parse", "HEAD"], cwd=target).strip()
    if head != commit and not head.startswith(commit):
        raise TeamError(f"workspace {target} is at {head}, not {commit}: remove the folder to check it out again")
    changed = changed_code(run_checked(["git", "status", "--porcelain", "--untracked-files=no"], cwd=target))
    if changed:
        raise TeamError(f"workspace {target} has changed code ({', '.join(changed)}): remove the folder to start over")
    print(f"l2o: workspace {target} at {commit[:12]}", flush=True)
    return {"directory": str(target)}


def _worker_project() -> Path | None:
    """The project this worker's interpreter has installed (editable), if any."""
    try:
        import flows  # noqa: PLC0415

        return Path(flows.__file__).resolve().parents[1]
    except Exception:  # pragma: no cover - flows is this package
        return None


def install(directory: str) -> dict:
    """Pull step: ``{"python": ...}``, an interpreter with exactly the packages of the workspace's ``uv.lock``.

    When the worker's own project was installed from the same ``uv.lock`` (byte for byte), its
    interpreter already is that environment and is used as is; otherwise ``uv sync --frozen`` builds
    ``<workspace>/.venv`` from the lock file (uv from ``L2O_UV``, PATH, or the worker project's
    ``.tools/bin/uv``).
    """
    ws = Path(directory)
    mine = _worker_project()
    wanted = uv_lock(ws)
    if wanted is None:
        raise TeamError(f"{ws} has no uv.lock: the commit cannot be installed reproducibly")
    if mine is not None and uv_lock(mine) == wanted:
        print(f"l2o: uv.lock matches the worker's environment ({sys.executable})", flush=True)
        os.environ["L2O_PYTHON"] = sys.executable
        return {"python": sys.executable}
    uv = os.environ.get("L2O_UV") or find_uv(mine)
    if uv is None:
        raise TeamError("uv.lock differs from the worker's environment and no uv was found: set L2O_UV or install uv")
    env = dict(os.environ, UV_PROJECT_ENVIRONMENT=str(ws / ".venv"), UV_COMPILE_BYTECODE="1")
    python = str(ws / ".venv" / "bin" / "python")
    print(f"l2o: installing {ws / 'uv.lock'} into {ws / '.venv'} (uv sync --frozen)", flush=True)
    run_checked([uv, "sync", "--frozen"], cwd=ws, env=env, what="uv sync --frozen")
    os.environ["L2O_PYTHON"] = python  # the flow runs in this process after the pull steps
    return {"python": python}


def dvc_pull(directory: str, remote: str | None = None) -> dict:
    """Pull step: the remote becomes the workspace's default (``config.local``); then ``dvc pull``.

    Fetches the outputs its ``dvc.lock`` records and the shared run-cache; outputs no run has pushed
    yet are skipped (they are produced by this run).
    """
    ws = Path(directory)
    if configure_remote(ws, remote) is None:
        print("l2o: no DVC remote (L2O_DVC_REMOTE): nothing pulled, outputs stay on this worker", flush=True)
        return {"remote": ""}
    dvc(ws, "pull", "--run-cache", "--allow-missing", "--quiet")
    return {"remote": remote}
