"""What the modules of the team platform share: names, messages, the tools they run, the workspaces folder.

* the names ``l2o submit``, the deployed flows (``prefect.yaml``) and ``l2o run`` inside a team run agree on:
  work pools, deployments, the environment variables a submission passes on;
* ``l2o: error: ...`` / ``l2o: warning: ...`` on stderr;
* the tools: this environment's executables (``prefect``, ``mlflow``, ``dvc``), ``git``, ``uv``, and a
  subprocess whose output is handed on line by line as it comes;
* the folder team workspaces and reproductions live in (``L2O_WORKSPACES``).

Standard library only: the ``l2o`` commands that import it pay nothing.
"""

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "POOLS",
    "PIPELINE_DEPLOYMENT",
    "STAGE_FLOW",
    "PLACEMENT_ENV",
    "SUBMISSION_ENV",
    "TEAM_ENV",
    "WORKSPACES_ENV",
    "REMOTE_NAME",
    "TeamError",
    "error",
    "warn",
    "executable",
    "dvc_command",
    "remote_add_args",
    "run",
    "run_checked",
    "git",
    "changed_code",
    "stream",
    "uv_lock",
    "find_uv",
    "workspaces_setting",
    "workspace_root",
]

POOLS = {"cpu": "l2o-cpu", "gpu": "l2o-gpu"}  # `l2o worker cpu|gpu` -> work pool
PIPELINE_DEPLOYMENT = "l2o-team/pipeline"
STAGE_FLOW = "l2o-stage"  # deployments l2o-stage/<pool key>, on work pool POOLS[<pool key>]
PLACEMENT_ENV = "L2O_PLACEMENT"  # JSON {stage: pool key}; set for `l2o run` inside a team run
SUBMISSION_ENV = "L2O_SUBMISSION"  # the id `l2o submit` tags every flow run of one submission with
TEAM_ENV = ("L2O_COMMIT", "L2O_REPOSITORY", "L2O_DVC_REMOTE", "MLFLOW_TRACKING_URI", "L2O_WORKSPACES", "L2O_UV")
WORKSPACES_ENV = "L2O_WORKSPACES"
REMOTE_NAME = "l2o"  # the DVC remote `l2o up` and team workspaces configure (in .dvc/config.local)
RUN_WRITTEN = ("params.yaml", "dvc.lock")  # tracked files a run writes: not code changes
BIN = Path(sys.executable).parent


class TeamError(RuntimeError):
    """A team run cannot go on (the message says what is wrong and what to do)."""


def error(msg: str) -> None:
    print(f"l2o: error: {msg}", file=sys.stderr)


def warn(msg: str) -> None:
    print(f"l2o: warning: {msg}", file=sys.stderr)


def executable(name: str) -> list[str]:
    """The command that runs tool ``name`` of this environment: its script, else ``python -m name``."""
    path = BIN / name
    return [str(path)] if path.exists() else [sys.executable, "-m", name]


def dvc_command(*args: str) -> list[str]:
    """``dvc ARGS`` with this environment's DVC."""
    return [*executable("dvc"), *args]


def remote_add_args(url: str) -> list[str]:
    """The ``dvc`` arguments that make ``url`` the default remote (:data:`REMOTE_NAME`, in ``.dvc/config.local``)."""
    return ["remote", "add", "--local", "-d", "-f", REMOTE_NAME, url]


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None, check: bool = False):
    """Run ``cmd``, output captured as text; a ``subprocess.CompletedProcess`` (CalledProcessError if ``check``)."""
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=check)


def run_checked(cmd: list[str], cwd: Path | None = None, env: dict | None = None, what: str = "") -> str:
    """Run ``cmd``; its stdout, or TeamError with the tail of its output when it fails."""
    proc = run(cmd, cwd=cwd, env=env)
    if proc.returncode != 0:
        raise TeamError(
            f"{what or ' '.join(cmd)} failed (exit {proc.returncode}) in {cwd or os.getcwd()}:\n"
            f"{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return proc.stdout


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``git ARGS`` in ``cwd``, output captured as text (CalledProcessError when it fails and ``check``)."""
    return run(["git", *args], cwd=cwd, check=check)


def changed_code(porcelain: str) -> list[str]:
    """The tracked files with uncommitted changes in ``git status --porcelain`` output, less what runs write."""
    return [line[3:] for line in porcelain.splitlines() if line[3:] not in RUN_WRITTEN]


def stream(cmd: list[str], cwd: Path, env: dict, on_line: Callable[[str], None]) -> int:
    """Run ``cmd`` (stderr into stdout), handing each output line to ``on_line`` as it comes; its exit code."""
    with subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        return proc.wait()


def uv_lock(project: Path) -> bytes | None:
    """The bytes of ``project``'s ``uv.lock`` (None without one): equal bytes, equal environments."""
    path = Path(project) / "uv.lock"
    return path.read_bytes() if path.is_file() else None


def find_uv(project: Path | None) -> str | None:
    """``uv`` on PATH, else ``project``'s ``.tools/bin/uv``, else None."""
    found = shutil.which("uv")
    local = Path(project) / ".tools" / "bin" / "uv" if project is not None else None
    return found or (str(local) if local is not None and local.is_file() else None)


def workspaces_setting() -> str:
    """``L2O_WORKSPACES`` as given, else ``~/.cache/l2o/workspaces`` (expanded)."""
    return os.environ.get(WORKSPACES_ENV) or str(Path("~/.cache/l2o/workspaces").expanduser())


def workspace_root() -> Path:
    """The folder team workspaces are checked out in (:func:`workspaces_setting`, ``~`` expanded)."""
    return Path(workspaces_setting()).expanduser()
