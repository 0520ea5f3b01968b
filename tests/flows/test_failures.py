"""Failure behaviour of `l2o run` / `l2o stage`: an unreachable tracking or orchestration server stops
the command before any stage (nothing written), a second run in the same repository is refused with a
message naming the first, a lock held by a killed process is free again, and a corrupt checkpoint
fails meta-training with an error naming the file."""

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import BIN, project_env, run_cli

from flows import preflight


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def _l2o(root: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "l2o"), *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if ".git" not in p.parts}


@pytest.mark.parametrize(
    ("var", "url", "named"),
    [
        ("MLFLOW_TRACKING_URI", "http://127.0.0.1:{port}", "MLflow tracking server"),
        ("PREFECT_API_URL", "http://127.0.0.1:{port}/api", "Prefect API"),
    ],
)
def test_unreachable_server_stops_the_run_before_any_stage(project, mirror, var, url, named):
    url = url.format(port=_closed_port())
    env = dict(project_env(project, mirror), L2O_SERVICE_RETRIES="2", **{var: url})
    before = _snapshot(project)
    for args in (["run", "--params", "params/tiny.yaml"], ["stage", "prepare_data"]):
        proc = _l2o(project, env, *args)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert named in proc.stderr and url in proc.stderr and "2 tries" in proc.stderr, proc.stderr
        assert "Nothing was run or written" in proc.stderr
    assert _snapshot(project) == before  # not even params.yaml or a lock file


class _Flaky(http.server.BaseHTTPRequestHandler):
    failures = 0

    def do_GET(self):  # noqa: N802 - http.server's hook
        cls = type(self)
        code = 503 if cls.failures > 0 else 200
        cls.failures -= 1
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


def test_health_check_retries_a_bounded_number_of_times(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        _Flaky.failures = 2
        preflight.check_services(Path("."), retries=3, delay=0.05)  # answers on the third try
        _Flaky.failures = 3
        with pytest.raises(preflight.ServiceUnavailable, match=r"HTTP 503; 3 tries"):
            preflight.check_services(Path("."), retries=3, delay=0.05)
    finally:
        server.shutdown()


def _holder(root: Path) -> subprocess.Popen:
    code = (
        "import sys, time; from pathlib import Path; from flows import preflight\n"
        "with preflight.repository_lock(Path(sys.argv[1]), 'run --params params/default.yaml'):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_in_the_same_repository_is_refused(project, mirror):
    holder = _holder(project)
    try:
        params = (project / "params.yaml").read_bytes()
        for args in (["run", "--params", "params/tiny.yaml"], ["stage", "prepare_data"]):
            proc = run_cli(project, mirror, "l2o", *args)
            assert proc.returncode == 3, proc.stdout + proc.stderr
            assert "another l2o command is running" in proc.stderr
            assert f"pid {holder.pid}" in proc.stderr and "run --params params/default.yaml" in proc.stderr
        assert (project / "params.yaml").read_bytes() == params
        assert not (project / "data" / "prepared").exists()
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's lock: the next command gets it
    with preflight.repository_lock(project, "test"):
        pass


def test_two_locks_in_one_process_tree_exclude_each_other(tmp_path):
    with preflight.repository_lock(tmp_path, "first"):
        with pytest.raises(preflight.RepositoryBusy, match=rf"pid {os.getpid()}, `l2o first`"):
            with preflight.repository_lock(tmp_path, "second"):
                pass
    with preflight.repository_lock(tmp_path, "third"):
        pass


def test_corrupt_checkpoint_fails_meta_training_naming_the_file(project, mirror):
    ckpt = project / "checkpoints" / "meta_train" / "main.npz"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 not really a zip file")
    t0 = time.perf_counter()
    args = ["run", "--params", "params/tiny.yaml", "--set", "meta_train.checkpoint_every=5", "--resume"]
    proc = run_cli(project, mirror, "l2o", *args)
    print(f"up to the corrupt checkpoint: {time.perf_counter() - t0:.0f}s")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stage 'meta_train' failed" in proc.stderr
    assert f"checkpoint {ckpt} is corrupt" in proc.stderr and "delete it" in proc.stderr
    assert ckpt.read_bytes() == b"PK\x03\x04 not really a zip file"  # left for the user to inspect
    assert not (project / "models" / "lopt").exists()  # no half-written outputs


def test_fault_hook_kills_once_the_step_is_reached_and_not_at_the_end():
    """The hook `l2o` builds from L2O_FAULT_KILL_AT_OUTER_STEP (the stage only gets the callable)."""
    code = (
        "from flows.stage_exec import fault_hook\n"
        "hook = fault_hook(print)\n"
        "hook(2, 10); hook(3, 3); print('alive', flush=True)\n"  # before the step; the last step never kills
        "hook(3, 10); print('not reached')\n"
    )
    env = {**os.environ, "L2O_FAULT_KILL_AT_OUTER_STEP": "3"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert "alive" in proc.stdout and "killing this process at outer step 3" in proc.stdout
    assert "not reached" not in proc.stdout


def test_stage_context_takes_resume_and_the_fault_hook_from_the_environment(monkeypatch):
    from flows.stage_exec import FAULT_ENV, RESUME_ENV, stage_context

    monkeypatch.delenv(FAULT_ENV, raising=False)
    monkeypatch.delenv(RESUME_ENV, raising=False)
    ctx = stage_context(print, run_id="run-1")
    assert (ctx.resume, ctx.run_id, ctx.on_outer_step) == (False, "run-1", None)
    monkeypatch.setenv(RESUME_ENV, "1")
    monkeypatch.setenv(FAULT_ENV, "4")
    ctx = stage_context(print)
    assert ctx.resume and callable(ctx.on_outer_step)
    assert stage_context(print, resume=False).resume is False  # an explicit value wins
    monkeypatch.setenv(FAULT_ENV, "four")
    with pytest.raises(ValueError, match="L2O_FAULT_KILL_AT_OUTER_STEP='four': expected an outer step number"):
        stage_context(print)


def test_a_killed_meta_train_stage_resumes_through_the_dvc_repro_path(project, mirror):
    """`l2o stage meta_train` (what `dvc repro` runs) killed by the fault hook, then `L2O_RESUME=1` finishes it.

    Needs ``components.meta.meta_train(..., on_outer_step=...)`` (the stage passes the context's hook).
    """
    raw = (project / "params" / "tiny.yaml").read_text()
    (project / "params" / "fault.yaml").write_text(
        raw.replace("  num_outer_steps: 10\n", "  num_outer_steps: 6\n  checkpoint_every: 2\n")
    )
    assert "checkpoint_every: 2" in (project / "params" / "fault.yaml").read_text()
    env = project_env(project, mirror)
    prep = _l2o(project, env, "stage", "prepare_data", "--params", "params/fault.yaml")
    assert prep.returncode == 0, prep.stderr[-3000:]
    killed = _l2o(
        project, {**env, "L2O_FAULT_KILL_AT_OUTER_STEP": "3"}, "stage", "meta_train", "--params", "params/fault.yaml"
    )
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert "killing this process at outer step 3" in killed.stdout
    assert not (project / "models" / "lopt").exists()

    # the killed process never ended its MLflow run
    from mlflow.tracking import MlflowClient

    from flows.stage_exec import _warn_fresh_over_checkpoint

    store = f"sqlite:///{project / '.mlflow' / 'mlflow.db'}"

    def meta_train_runs():
        client = MlflowClient(store)
        exps = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exps, filter_string="tags.`l2o.stage` = 'meta_train'")
        return sorted(runs, key=lambda r: r.info.start_time)

    (orphan,) = meta_train_runs()
    assert orphan.info.status == "RUNNING"
    # a plain re-run would start over: it says so, and how to resume, before it overwrites the checkpoint
    lines = []
    _warn_fresh_over_checkpoint(project, lines.append)
    assert len(lines) == 1 and "outer step 2" in lines[0] and "l2o run --resume" in lines[0], lines

    resumed = _l2o(project, {**env, "L2O_RESUME": "1"}, "stage", "meta_train", "--params", "params/fault.yaml")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and (project / "models" / "lopt" / "config.json").exists()
    assert "holds an earlier run's state" not in resumed.stdout  # resuming: no warning
    # the next command in the project ended the orphan (its process is gone), and only it
    assert f"marked 1 MLflow run(s) KILLED whose process is gone: {orphan.info.run_id}" in resumed.stdout
    first, second = meta_train_runs()
    assert first.info.run_id == orphan.info.run_id and first.info.status == "KILLED"
    assert "was gone" in first.data.tags["l2o.ended_by"]
    assert second.info.status == "FINISHED"


def test_a_diverging_meta_training_fails_once_with_the_fix_and_registers_nothing(project, mirror):
    """Issue 20: a learned optimizer whose inner losses are inf/nan to the end is not saved or registered, and
    `l2o run` says so once, naming the fix (Prefect's tracebacks only with --verbose)."""
    raw = (project / "params" / "tiny.yaml").read_text()
    diverging = raw.replace("  log_every: 5\n", "  log_every: 5\n  lopt_hyperparams: {step_mult: 1.0e+30}\n")
    assert diverging != raw
    (project / "params" / "diverge.yaml").write_text(diverging)
    env = project_env(project, mirror)
    proc = _l2o(project, env, "run", "--params", "params/diverge.yaml")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and out.count("meta-training ended diverging its tasks") == 1, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("l2o: error:")]
    assert "stage 'meta_train' failed" in error and "Lower meta_train.outer_lr" in error
    assert "re-run with --verbose" in proc.stderr
    assert not (project / "models" / "lopt").exists()
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{project / '.mlflow' / 'mlflow.db'}"
    client = MlflowClient(store, store)  # the registry too: never the process-wide one an earlier test set
    assert client.search_registered_models() == []  # nothing registered, no version of anything
    exps = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(exps, filter_string="tags.`l2o.stage` = 'meta_train'")
    assert run.info.status == "FAILED"
    # --verbose: the same failure with its full traceback
    verbose = _l2o(project, env, "stage", "meta_train", "--params", "params/diverge.yaml", "--verbose")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "FloatingPointError" in verbose.stderr


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dvc_repro_beside_a_running_l2o_run_deletes_nothing(project, mirror):
    """Issue 20: `dvc repro` used to delete the outputs of the stages it would re-run, then have their
    `l2o stage` refused by the running pipeline's lock. `l2o run` now holds DVC's own lock: DVC stops first."""
    raw = (project / "params" / "tiny.yaml").read_text()
    (project / "params" / "slow.yaml").write_text(raw.replace("  num_outer_steps: 10\n", "  num_outer_steps: 100000\n"))
    env = project_env(project, mirror)
    run = subprocess.Popen(
        [str(BIN / "l2o"), "run", "--params", "params/slow.yaml"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        seen = []
        for line in run.stdout:  # prepare_data and pretrain are done and committed once meta_train runs
            seen.append(line)
            if "meta_train: running" in line:
                break
        assert any("meta_train: running" in line for line in seen), "".join(seen)
        before = {d: _tree_bytes(project / d) for d in ("data/prepared", "models/pretrained")}
        assert before["models/pretrained"] and before["data/prepared"]
        # --force: DVC would delete models/pretrained before running `l2o stage pretrain`
        repro = subprocess.run(
            [str(BIN / "dvc"), "repro", "--force", "pretrain"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert repro.returncode != 0 and "Unable to acquire lock" in repro.stdout + repro.stderr, repro.stderr
        assert run.poll() is None  # the pipeline goes on
        assert {d: _tree_bytes(project / d) for d in before} == before  # every output intact
    finally:
        os.killpg(run.pid, 9)
        run.wait()
    # while `dvc repro` (or any dvc command) holds DVC's lock, `l2o run` refuses the same way, exit 3
    from dvc.lock import make_lock

    with make_lock(str(project / ".dvc" / "tmp" / "lock"), friendly=False):
        proc = _l2o(project, env, "run", "--params", "params/slow.yaml")
    assert proc.returncode == 3 and "DVC's lock of" in proc.stderr and "dvc repro" in proc.stderr, proc.stderr
