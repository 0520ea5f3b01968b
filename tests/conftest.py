"""Shared fixtures: an isolated copy of the project as a fresh git + DVC repository."""

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MIRROR = (REPO.parent / "shared" / "datasets").resolve()
BIN = Path(sys.executable).parent
# XLA programs compiled by one pipeline run are reused by the next (all test copies share it)
JAX_CACHE = Path(tempfile.gettempdir()) / "l2o-test-jax-cache"
PROJECT_FILES = [
    "components",
    "flows",
    "params",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    "uv.lock",
    "prefect.yaml",
    ".gitignore",
    "models/zoo/index.json",  # the zoo's git part: evaluate depends on models/zoo (no entries in a copy)
]

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The test processes themselves (the xdist workers) use the same persistent compilation cache: a program one test
# compiled, in any worker or pipeline run, is loaded by the next test that builds it (e.g. a zoo entry's evaluation
# beside the fresh optimizer of the same architecture: the learned weights are a program argument). Set before
# jax is imported (it reads these at import); loading a cached program gives the bytes compiling it would.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(JAX_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


# the longest work units, started first when the tests run on several workers so that none ends up last on one:
# the shared smoke run's module (every test of it), the optimizer conformance table, then the team's (servers and
# workers running the smoke experiment). The team's module comes after the conformance table so that its
# submission finds the XLA programs the smoke run compiled in the persistent cache (see `smoke_compile_lock`)
HEAVY_FIRST = (
    "tests/flows/test_pipeline_e2e.py",
    "tests/components/optimizers/test_conformance.py",
    "tests/flows/test_team.py",
)


def pytest_collection_modifyitems(config, items):
    """Order the tests.

    On one process: fast tests first (the library's unit tests), then the CLI, pipeline and service tests of
    ``tests/flows`` (real Prefect flows, MLflow stores and servers, DVC repositories); a module's tests keep their
    order. On several workers (``make test``: pytest-xdist, ``--dist loadfile``) each module is one work unit, so
    its module- and session-scoped fixtures (servers, the smoke run) are built once; the heaviest units start
    first, the unit tests fill the other workers meanwhile, and the remaining ``tests/flows`` modules come last."""
    flows = REPO / "tests" / "flows"

    def in_flows(item) -> bool:
        return Path(str(item.fspath)).resolve().is_relative_to(flows)

    if not hasattr(config, "workerinput"):  # one process (under pytest-xdist only the workers collect)
        items.sort(key=in_flows)
        return

    def rank(item) -> int:
        name = Path(str(item.fspath)).resolve().relative_to(REPO).as_posix()
        if name in HEAVY_FIRST:
            return HEAVY_FIRST.index(name)
        return len(HEAVY_FIRST) + in_flows(item)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "SHA256SUMS").exists():
        pytest.fail(f"dataset mirror not found at {MIRROR}: tests need ../shared/datasets beside the repo")
    return MIRROR


def project_env(root: Path, mirror: Path) -> dict:
    """Environment for running `l2o` / `dvc` in a project copy: isolated stores, venv on PATH."""
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        L2O_DATA_MIRROR=str(mirror),
        PREFECT_HOME=str(root / ".prefect"),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(root / ".dvc-site-cache"),
        DVC_GLOBAL_CONFIG_DIR=str(root / ".dvc-global"),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(JAX_CACHE),
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.invalid",
    )
    for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "MLFLOW_RUN_ID"):
        env.pop(var, None)
    return env


def make_project_copy(dest: Path, mirror: Path) -> Path:
    """Copy the project into ``dest`` and make it a fresh git + DVC repository."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PROJECT_FILES:
        src = REPO / name
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    env = project_env(dest, mirror)
    subprocess.run(["git", "init", "-q"], cwd=dest, env=env, check=True, capture_output=True)
    # the copy's private DVC folders (project_env) are machine state, never part of a commit
    (dest / ".git" / "info" / "exclude").write_text("/.dvc-site-cache/\n/.dvc-global/\n")
    for cmd in (
        [str(BIN / "dvc"), "init", "-q"],
        [str(BIN / "dvc"), "config", "core.analytics", "false"],
        [str(BIN / "dvc"), "config", "core.check_update", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "project copy"],
    ):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    return dest


@pytest.fixture
def project(tmp_path, mirror) -> Path:
    return make_project_copy(tmp_path / "project", mirror)


def run_cli(root: Path, mirror: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command (``l2o ...`` or ``dvc ...`` from the venv) in a project copy."""
    exe = str(BIN / args[0])
    return subprocess.run(
        [exe, *args[1:]], cwd=root, env=project_env(root, mirror), capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def smoke_compile_lock():
    """Held while a test runs a whole smoke experiment from scratch (``tiny_run``, the team's submission).

    Two such runs compile the same XLA programs (same params and data; the runner does not change a program).
    Run at the same time on two xdist workers, each compiles all of them, since a program enters JAX's persistent
    cache (``JAX_CACHE``, shared by every test copy) only when its compilation ends. Under this lock (an
    ``flock`` on a file beside the cache, released when its holder exits) the second waits for the first, then
    loads the programs. One process, or one run selected alone, never waits."""
    JAX_CACHE.mkdir(parents=True, exist_ok=True)
    with open(JAX_CACHE.parent / f"{JAX_CACHE.name}.smoke.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mirror):
    """The smoke experiment (``params/tiny.yaml``) run once through ``l2o run`` in a project copy, shared by every
    test that reads its outputs or its MLflow runs: ``(root, completed process)``. Tests that re-run stages there
    keep what the first run wrote that they need (``first_evaluation.json``, ``first_dvc.lock`` beside it)."""
    root = make_project_copy(tmp_path_factory.mktemp("flow") / "project", mirror)
    with smoke_compile_lock():
        t0 = time.perf_counter()
        proc = run_cli(root, mirror, "l2o", "run", "--params", "params/tiny.yaml")
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(f"tiny pipeline through the Prefect flow: {seconds:.0f}s")
    (root.parent / "first_evaluation.json").write_bytes((root / "metrics" / "evaluation.json").read_bytes())
    (root.parent / "first_dvc.lock").write_bytes((root / "dvc.lock").read_bytes())
    return root, proc
