"""`l2o up` / `status` / `down` / `worker` (flows.team) on real processes in a project copy.

The commands run in a subprocess through a small driver (argparse with ``add_arguments``, then the
``cmd_*`` handler, after ``flows.cli._environment``), as ``l2o`` will once it dispatches them. One
module-scoped ``up --workers cpu`` on free ports serves the server tests; a finalizer kills every
recorded process group even when a test fails.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import make_project_copy, project_env

from flows.team.common import POOLS
from flows.team.state import STATE_FILE
from flows.team.workers import gpu_worker_env

DRIVER = """
import sys
from pathlib import Path
import argparse
from flows.cli import _environment
from flows.team import lifecycle, state, workers

root = Path.cwd()
_environment(root)
if sys.argv[1] == "apply":
    import json, os
    state.apply_recorded_services(root)
    keys = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "L2O_DVC_REMOTE", "L2O_DATA_MIRROR")
    print(json.dumps({k: os.environ.get(k) for k in keys}))
    sys.exit(0)
p = argparse.ArgumentParser(prog="l2o")
sub = p.add_subparsers(dest="command", required=True)
lifecycle.add_arguments(sub)
workers.add_arguments(sub)
args = p.parse_args(sys.argv[1:])
sys.exit(getattr(workers if args.command == "worker" else lifecycle, "cmd_" + args.command)(args, root))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(root: Path, mirror: Path) -> dict:
    env = project_env(root, mirror)
    env["L2O_WORKSPACES"] = str(root.parent / "workspaces")  # never the user's ~/.cache
    env["PREFECT_WORKER_QUERY_SECONDS"] = "2"
    env["PREFECT_WORKER_HEARTBEAT_SECONDS"] = "5"
    return env


def l2o(root: Path, mirror: Path, *args: str, env: dict | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *args],
        cwd=root,
        env=env or _env(root, mirror),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by init) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _recorded_pids(root: Path) -> list[int]:
    try:
        state = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [rec["pid"] for rec in [*state.get("services", {}).values(), *state.get("workers", [])]]


def _kill_recorded(root: Path, pids: list[int]) -> None:
    for pid in {*pids, *_recorded_pids(root)}:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, mirror):
    """`up --workers cpu` on free ports in a project copy: (root, ports, up's output, its wall time)."""
    root = make_project_copy(tmp_path_factory.mktemp("services") / "project", mirror)
    pport, mport = _free_port(), _free_port()
    seen: list[int] = []
    try:
        t0 = time.perf_counter()
        proc = l2o(root, mirror, "up", "--prefect-port", str(pport), "--mlflow-port", str(mport), "--workers", "cpu")
        seconds = time.perf_counter() - t0
        seen += _recorded_pids(root)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        print(f"l2o up (2 servers + 1 cpu worker registered): {seconds:.1f}s\n{proc.stdout}")
        yield root, pport, mport, proc
    finally:
        _kill_recorded(root, seen)


def test_up_status_down(stack, mirror):
    root, pport, mport, up = stack
    out = up.stdout
    # the servers answer, and up told the user where they are
    assert _get(f"http://127.0.0.1:{pport}/api/health").strip() == "true"
    assert _get(f"http://127.0.0.1:{mport}/health").strip() == "OK"
    assert f"export PREFECT_API_URL=http://127.0.0.1:{pport}/api MLFLOW_TRACKING_URI=http://127.0.0.1:{mport}" in out
    state = json.loads((root / STATE_FILE).read_text())
    assert state["services"]["prefect"]["url"] == f"http://127.0.0.1:{pport}/api"
    assert state["services"]["mlflow"]["url"] == f"http://127.0.0.1:{mport}"
    assert all(_pid_alive(rec["pid"]) for rec in state["services"].values())
    assert state["dvc_remote"] == str(root / ".l2o" / "dvc-remote") and Path(state["dvc_remote"]).is_dir()
    assert "l2o" in (root / ".dvc" / "config.local").read_text()  # the default remote, never committed
    assert state["pools"] == POOLS
    [worker] = state["workers"]
    assert worker["pool"] == "l2o-cpu" and _pid_alive(worker["pid"])
    for rec in [*state["services"].values(), worker]:
        assert Path(rec["log"]).is_file()

    # the work pools exist (type process) and the cpu worker polls its pool (up waits for that)
    api = state["services"]["prefect"]["url"]
    for pool in POOLS.values():
        assert json.loads(_get(f"{api}/work_pools/{pool}"))["type"] == "process"
    req = urllib.request.Request(
        f"{api}/work_pools/l2o-cpu/workers/filter", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert worker["name"] in [w["name"] for w in json.loads(r.read())]

    # every other l2o command is pointed at the servers; explicit env wins
    # (the dataset mirror too: without L2O_DATA_MIRROR a command gets the one `l2o up` recorded)
    assert state["data_mirror"] == str(mirror.resolve()) and "dataset mirror for the workers" in out
    no_env = {k: v for k, v in _env(root, mirror).items() if k != "L2O_DATA_MIRROR"}
    applied = json.loads(l2o(root, mirror, "apply", env=no_env).stdout)
    assert applied == {
        "PREFECT_API_URL": api,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mport}",
        "L2O_DVC_REMOTE": state["dvc_remote"],
        "L2O_DATA_MIRROR": state["data_mirror"],
    }
    env = dict(_env(root, mirror), MLFLOW_TRACKING_URI="http://elsewhere:5000")
    assert json.loads(l2o(root, mirror, "apply", env=env).stdout)["MLFLOW_TRACKING_URI"] == "http://elsewhere:5000"

    status = l2o(root, mirror, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert any("prefect" in line and "healthy" in line and str(pport) in line for line in lines), status.stdout
    assert any("mlflow" in line and "healthy" in line and str(mport) in line for line in lines), status.stdout
    assert any(worker["name"] in line and "online" in line for line in lines), status.stdout
    assert any("l2o-cpu" in line and "1 worker online" in line for line in lines), status.stdout
    assert any("l2o-gpu" in line and "0 workers online" in line for line in lines), status.stdout
    assert state["dvc_remote"] in status.stdout

    # a second up starts nothing
    again = l2o(root, mirror, "up", "--prefect-port", str(pport), "--mlflow-port", str(mport), "--workers", "cpu")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stdout
    assert json.loads((root / STATE_FILE).read_text())["workers"] == state["workers"]
    other = l2o(root, mirror, "up", "--prefect-port", str(_free_port()))
    assert other.returncode == 2 and "l2o down" in other.stderr, other.stderr

    # a background worker joins the record (what a GPU machine does with `l2o worker gpu --background`)
    extra = l2o(root, mirror, "worker", "cpu", "--background", "--name", "extra-cpu", "--limit", "2")
    assert extra.returncode == 0, extra.stdout + extra.stderr
    [_, added] = json.loads((root / STATE_FILE).read_text())["workers"]
    assert added["name"] == "extra-cpu" and added["limit"] == 2 and _pid_alive(added["pid"])
    assert "2 workers online" in l2o(root, mirror, "status").stdout

    pids = _recorded_pids(root)
    t0 = time.perf_counter()
    down = l2o(root, mirror, "down")
    print(f"l2o down: {time.perf_counter() - t0:.1f}s\n{down.stdout}")
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("stopped") == 4, down.stdout
    deadline = time.time() + 10
    while any(_pid_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_pid_alive(p) for p in pids), [p for p in pids if _pid_alive(p)]
    assert not (root / STATE_FILE).exists()
    after = l2o(root, mirror, "status")
    assert after.returncode == 0 and "nothing running" in after.stdout, after.stdout
    assert "nothing running" in l2o(root, mirror, "down").stdout


def test_busy_port_is_refused_before_starting_anything(project, mirror):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = l2o(project, mirror, "up", "--prefect-port", str(port), "--mlflow-port", str(_free_port()), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"port {port}" in proc.stderr and "--prefect-port" in proc.stderr, proc.stderr
    assert not (project / STATE_FILE).exists() and not (project / ".l2o" / "logs").exists()


def test_up_that_times_out_stops_what_it_started(project, mirror):
    import psutil

    ports = [str(_free_port()), str(_free_port())]
    proc = l2o(project, mirror, "up", "--prefect-port", ports[0], "--mlflow-port", ports[1], "--timeout", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "did not answer the health check within --timeout 1 s" in proc.stderr, proc.stderr
    assert "prefect log" in proc.stderr and "mlflow log" in proc.stderr, proc.stderr
    assert not (project / STATE_FILE).exists()
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if set(ports) & set(p.info["cmdline"] or [])]
    assert not left, left


def test_importing_services_loads_no_heavy_modules():
    code = (
        "import sys, flows.cli, flows.team.lifecycle, flows.team.workers, flows.team.submit, flows.team.reproduce\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'prefect', 'mlflow', 'dvc'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_worker_needs_a_server(project, mirror):
    proc = l2o(project, mirror, "worker", "gpu", timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "export PREFECT_API_URL=http://server:4200/api" in proc.stderr and "l2o up" in proc.stderr


def test_dead_recorded_servers_warn_and_fail_status(project, mirror):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rec = {"pid": dead.pid, "health": "http://127.0.0.1:9/api/health"}
    state = {
        "hostname": socket.gethostname(),
        "services": {
            "prefect": dict(rec, url="http://127.0.0.1:9/api", port=9),
            "mlflow": dict(rec, url="http://127.0.0.1:9", port=9),
        },
        "dvc_remote": "/nowhere",
        "workers": [],
        "pools": POOLS,
    }
    (project / STATE_FILE).parent.mkdir(parents=True)
    (project / STATE_FILE).write_text(json.dumps(state))
    applied = l2o(project, mirror, "apply", timeout=60)
    keys = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "L2O_DVC_REMOTE")
    assert json.loads(applied.stdout) == {**dict.fromkeys(keys), "L2O_DATA_MIRROR": str(mirror)}  # (from the env)
    [warning] = applied.stderr.strip().splitlines()
    assert str(STATE_FILE) in warning and "l2o down" in warning
    status = l2o(project, mirror, "status", timeout=60)
    assert status.returncode == 1, status.stdout + status.stderr
    assert status.stdout.count("dead") >= 2
    down = l2o(project, mirror, "down", timeout=60)
    assert down.returncode == 0 and not (project / STATE_FILE).exists()


def test_dvc_remote_is_the_projects_default_else_configured_locally(project, mirror, monkeypatch):
    from flows.team.servers import choose_dvc_remote

    for key in ("DVC_SITE_CACHE_DIR", "DVC_GLOBAL_CONFIG_DIR", "DVC_NO_ANALYTICS"):
        monkeypatch.setenv(key, project_env(project, mirror)[key])
    url, _ = choose_dvc_remote(project, str(project.parent / "given"))
    assert url == str(project.parent / "given")
    assert "given" in (project / ".dvc" / "config.local").read_text()
    (project / ".dvc" / "config.local").unlink()
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "origin", "s3://bucket/l2o"],
        cwd=project,
        env=project_env(project, mirror),
        check=True,
        capture_output=True,
    )
    assert choose_dvc_remote(project, None)[0] == "s3://bucket/l2o"
    assert not (project / ".dvc" / "config.local").exists() and not (project / ".l2o").exists()


@pytest.mark.parametrize(
    ("env", "runs", "gpu", "expected"),
    [
        ({"A": "1"}, 1, None, {"A": "1"}),
        ({}, 1, "0", {"CUDA_VISIBLE_DEVICES": "0"}),
        ({}, 3, None, {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.300"}),
        (
            {},
            4,
            "1",
            {
                "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.225",
                "CUDA_VISIBLE_DEVICES": "1",
            },
        ),
        (
            {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5", "CUDA_VISIBLE_DEVICES": "2,3"},
            2,
            "0",
            {
                "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5",
                "CUDA_VISIBLE_DEVICES": "2,3",
            },
        ),
    ],
)
def test_gpu_worker_env(env, runs, gpu, expected):
    before = dict(env)
    assert gpu_worker_env(env, runs_per_gpu=runs, gpu=gpu) == expected
    assert env == before  # a copy


def test_gpu_worker_env_rejects_zero_runs():
    with pytest.raises(ValueError, match="runs_per_gpu"):
        gpu_worker_env({}, runs_per_gpu=0, gpu=None)


def test_workers_get_the_recorded_dataset_mirror_or_refuse_with_the_fix(project, mirror, monkeypatch):
    """Issue 20: a worker's flow runs happen in workspaces where ../shared/datasets does not resolve."""
    from flows.team.state import data_mirror_setting
    from flows.team.workers import _worker_env, mirror_problem

    monkeypatch.delenv("L2O_DATA_MIRROR", raising=False)
    state = {"services": {}, "data_mirror": str(mirror)}
    assert _worker_env(state, None, 1, None)["L2O_DATA_MIRROR"] == str(mirror)
    assert mirror_problem(_worker_env(state, None, 1, None)) is None
    monkeypatch.setenv("L2O_DATA_MIRROR", "none")  # the worker's own environment wins
    assert _worker_env(state, None, 1, None)["L2O_DATA_MIRROR"] == "none" and data_mirror_setting(project) == "none"
    monkeypatch.setenv("L2O_DATA_MIRROR", str(mirror))
    assert data_mirror_setting(project) == str(mirror.resolve())
    # recorded on another machine, absent here: the worker refuses, naming the fix, and starts nothing
    state = {
        "services": {"prefect": {"url": "http://127.0.0.1:9/api"}},
        "hostname": socket.gethostname(),
        "data_mirror": "/nowhere/datasets",
    }
    (project / STATE_FILE).parent.mkdir(parents=True)
    (project / STATE_FILE).write_text(json.dumps(state))
    env = {k: v for k, v in _env(project, mirror).items() if k != "L2O_DATA_MIRROR"}
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    proc = l2o(project, mirror, "worker", "cpu", "--background", env=env, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "/nowhere/datasets" in proc.stderr and "export L2O_DATA_MIRROR=" in proc.stderr
    assert "workers" not in json.loads((project / STATE_FILE).read_text())
