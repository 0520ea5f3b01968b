"""Team scale on real parts, all on 127.0.0.1: `l2o up` (Prefect server, MLflow server, a CPU and a
"GPU" process worker), a Dask scheduler with two workers started separately, a local-directory DVC
remote. The tiny pipeline is submitted with `l2o submit`; meta-training is handed to the GPU pool and
evaluation fans out on the Dask cluster. Then: the outputs are in the remote, MLflow holds the runs and
the registered optimizer, a local `l2o run` restores every stage from the shared run-cache (linked in
MLflow to the runs that produced them), `l2o reproduce` of the run matches, and a run whose workers are
killed during meta-training resumes from its checkpoint when submitted again."""

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import BIN, make_project_copy, project_env, smoke_compile_lock
from mlflow.tracking import MlflowClient

STAGES = ["prepare_data", "pretrain", "meta_train", "calibrate", "evaluate", "report"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flow_runs(team) -> list[dict]:
    """Every flow run as the Prefect server recorded it (its REST API: this process's Prefect settings
    were fixed at import), oldest first."""
    api = team.state()["services"]["prefect"]["url"]
    body = json.dumps({"limit": 200, "sort": "START_TIME_ASC"}).encode()
    request = urllib.request.Request(f"{api}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def _kill_tree(pid: int) -> None:
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


class Team:
    def __init__(self, root: Path, env: dict, dask: str, procs: list):
        self.root, self.env, self.dask, self.procs = root, env, dask, procs
        self.submitted: dict = {}

    def l2o(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "l2o"), *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def tiny_on_dask(self) -> list[str]:
        """The tiny experiment with its evaluation on the Dask cluster (params of the submitted run)."""
        return ["--params", "params/tiny.yaml", "--set", "evaluate.runner.kind=dask", "--set",
                f"evaluate.runner.address={self.dask}"]  # fmt: skip

    def state(self) -> dict:
        return json.loads((self.root / ".l2o" / "services.json").read_text())

    def mlflow(self) -> MlflowClient:
        uri = self.state()["services"]["mlflow"]["url"]
        return MlflowClient(uri, uri)

    def workspace(self, purpose: str) -> Path:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.root, capture_output=True, text=True).stdout
        return Path(self.env["L2O_WORKSPACES"]) / f"{self.root.name}-{sha.strip()[:12]}-{purpose}"


@pytest.fixture(scope="module")
def team(tmp_path_factory, mirror):
    base = tmp_path_factory.mktemp("team")
    root = make_project_copy(base / "project", mirror)
    # workers poll their pools every 2 s instead of Prefect's 10 (each hand-over between the pools waits for one)
    env = dict(project_env(root, mirror), L2O_WORKSPACES=str(base / "workspaces"), PREFECT_WORKER_QUERY_SECONDS="2")
    procs = []
    port = _free_port()
    dask = f"tcp://127.0.0.1:{port}"
    spawn = dict(cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs.append(subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--no-dashboard"], **spawn))  # fmt: skip
    for _ in range(2):
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", dask, "--nworkers", "1", "--nthreads", "1",
                                       "--no-dashboard"], **spawn))  # fmt: skip
    t = Team(root, env, dask, procs)
    up = t.l2o("up", "--prefect-port", str(_free_port()), "--mlflow-port", str(_free_port()), "--workers", "cpu", "gpu")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield t
    finally:
        state = t.state() if (root / ".l2o" / "services.json").exists() else {}
        started = [r["pid"] for r in (*state.get("services", {}).values(), *state.get("workers", []))]
        tree = []
        for pid in started:
            try:
                tree += [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        down = t.l2o("down")
        for p in procs:
            _kill_tree(p.pid)
        assert down.returncode == 0, down.stdout + down.stderr
        # torn down cleanly: servers, workers and whatever they started are gone, the record too
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, [p.cmdline()[:3] for p in alive]
        assert not (root / ".l2o" / "services.json").exists()


@pytest.fixture(scope="module")
def submitted(team):
    with smoke_compile_lock():  # not beside the shared smoke run: the later of the two loads what the other compiled
        t0 = time.perf_counter()
        proc = team.l2o("submit", *team.tiny_on_dask(), "--timeout", "1500", timeout=1600)
    print(f"tiny pipeline through the workers: {time.perf_counter() - t0:.0f}s")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return proc


def test_submitted_run_completes_through_the_workers(team, submitted):
    out = submitted.stdout
    assert "stages placed: meta_train=gpu" in out
    assert "l2o: meta_train: handing it to work pool gpu" in out
    assert re.search(r"meta_train: ran on pool gpu \(flow run [0-9a-f-]+\)", out), out[-3000:]
    assert "[meta_train@gpu]" in out and "meta_train: meta-loss" in out  # the GPU worker's log, followed
    assert "ran: prepare_data, pretrain, meta_train, calibrate, evaluate, report" in out
    assert re.search(r"flow run [0-9a-f-]+ completed", out)

    runs = {r["name"]: r for r in _flow_runs(team)}
    team_run = next(r for name, r in runs.items() if name.startswith("tiny@"))
    stage_run = runs["meta_train@gpu"]
    assert team_run["state_type"] == "COMPLETED" and team_run["work_pool_name"] == "l2o-cpu", team_run
    assert stage_run["state_type"] == "COMPLETED" and stage_run["work_pool_name"] == "l2o-gpu", stage_run
    assert stage_run["parent_task_run_id"], "the GPU stage is not a subflow run of the pipeline's flow"
    # the workspaces are checkouts of the submitted commit, one per role
    ours = subprocess.run(["git", "rev-parse", "HEAD"], cwd=team.root, capture_output=True, text=True).stdout
    for purpose in ("pipeline", "stage-gpu"):
        ws = team.workspace(purpose)
        assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout == ours


def test_evaluation_ran_on_the_dask_workers(team, submitted):
    from distributed import Client

    with Client(team.dask, timeout=30) as client:
        counts = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(counts) == 2
    assert sum(counts.values()) >= 2, counts  # the evaluation tasks of tiny.yaml (two)
    assert all(n >= 1 for n in counts.values()), counts  # spread over both workers


def test_outputs_and_run_cache_are_in_the_remote(team, submitted):
    remote = Path(team.state()["dvc_remote"])
    lock = (team.workspace("pipeline") / "dvc.lock").read_text()
    import yaml

    stages = yaml.safe_load(lock)["stages"]
    assert sorted(stages) == sorted(STAGES)
    for name, entry in stages.items():
        for out in entry.get("outs", []):
            md5 = out["md5"]
            obj = remote / "files" / "md5" / md5[:2] / md5[2:]
            assert obj.exists(), f"{name}: {out['path']} ({md5}) is not in the DVC remote {remote}"
    assert len(list((remote / "runs").rglob("*"))) >= len(STAGES)  # the shared run-cache


def test_mlflow_holds_the_runs_and_the_registered_optimizer(team, submitted):
    client = team.mlflow()
    exp = client.get_experiment_by_name("l2o-tiny")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    pipeline = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(pipeline) == 1 and pipeline[0].info.status == "FINISHED"
    parent = pipeline[0].info.run_id
    children = {r.data.tags["l2o.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent}
    assert sorted(children) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert all(r.data.tags.get("l2o.run_cache_key") for r in children.values())
    meta = children["meta_train"]
    assert meta.data.metrics["num_meta_params"] > 0
    versions = client.search_model_versions("name = 'small_fc_lopt'")
    assert any(v.run_id == meta.info.run_id for v in versions), "the GPU worker's optimizer is not registered"


def test_local_run_restores_every_stage_from_the_shared_run_cache(team, submitted):
    proc = team.l2o("run", *team.tiny_on_dask())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ran: nothing; restored from run-cache: " + ", ".join(STAGES) in proc.stdout, proc.stdout
    theirs = json.loads((team.workspace("pipeline") / "metrics" / "headline.json").read_text())
    ours = json.loads((team.root / "metrics" / "headline.json").read_text())
    assert ours == theirs
    assert (team.root / "models" / "lopt" / "weights.safetensors").read_bytes() == (
        team.workspace("pipeline") / "models" / "lopt" / "weights.safetensors"
    ).read_bytes()
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=team.root, env=team.env, capture_output=True, text=True)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout + status.stderr
    # MLflow: one restored run per stage, linked to the run that produced the outputs, with its metrics
    client = team.mlflow()
    exp = client.get_experiment_by_name("l2o-tiny")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    local = max((r for r in runs if r.info.run_name == "pipeline"), key=lambda r: r.info.start_time)
    restored = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == local.info.run_id]
    assert sorted(r.data.tags["l2o.stage"] for r in restored) == sorted(STAGES)
    by_id = {r.info.run_id: r for r in runs}
    for r in restored:
        assert r.data.tags["l2o.restored"] == "true"
        source = by_id[r.data.tags["l2o.restored_from_run_id"]]
        assert source.data.tags["l2o.stage"] == r.data.tags["l2o.stage"]
        assert source.data.tags["l2o.run_cache_key"] == r.data.tags["l2o.run_cache_key"]
        assert r.data.metrics == source.data.metrics


def test_reproduce_the_submitted_run(team, submitted):
    client = team.mlflow()
    exp = client.get_experiment_by_name("l2o-tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`l2o.stages_ran` != ''", max_results=50)
    original = min((r for r in runs if r.info.run_name == "pipeline"), key=lambda r: r.info.start_time)
    proc = team.l2o("reproduce", original.info.run_id, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "reproduced:" in proc.stdout
    assert "meta_train/meta_loss_last" in proc.stdout and "evaluate/" in proc.stdout


def test_killed_workers_then_resubmission_resumes_meta_training(team, submitted):
    args = [
        "--params",
        "params/tiny.yaml",
        "--set",
        "meta_train.num_outer_steps=3000",
        "--set",
        "meta_train.checkpoint_every=50",
        "--set",
        "evaluate.tasks=[digits_mlp]",
        # what this test checks is the resume; the longer meta-training gives other weights, hence programs the
        # smoke runs did not compile: only the learned optimizer and Adam's grid are evaluated (2 programs, not 7)
        "--set",
        "evaluate.methods=[learned]",
        "--set",
        "evaluate.baselines=[adam]",
    ]
    proc = team.l2o("submit", *args, "--no-follow")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = team.workspace("stage-gpu") / "checkpoints" / "meta_train" / "main.npz"
    deadline = time.monotonic() + 600
    while not ckpt.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ckpt.exists(), "meta-training on the GPU worker wrote no checkpoint"
    # the machines go down mid-run: both workers and everything they started
    for w in team.state()["workers"]:
        _kill_tree(w["pid"])
    with np.load(ckpt) as f:
        saved = json.loads(bytes(f["__header__"]).decode())["step"]
    assert 0 < saved < 3000
    for kind in ("cpu", "gpu"):
        started = team.l2o("worker", kind, "--background")
        assert started.returncode == 0, started.stdout + started.stderr
    proc = team.l2o("submit", *args, "--timeout", "1200", timeout=1300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    m = re.search(r"meta_train: resumed from \S+main\.npz at outer step (\d+)/3000", proc.stdout)
    assert m, proc.stdout[-5000:]
    assert int(m.group(1)) >= saved
    done = re.search(r"l2o: done in .*", proc.stdout)
    assert done, proc.stdout[-3000:]
    # what ran before the kill is up to date in the same workspace: it does not run again
    assert "ran: meta_train, calibrate, evaluate, report" in done.group(0), done.group(0)
    # the runs the killed workers left "running" were marked crashed when the new ones took over
    states = {}
    for r in _flow_runs(team):
        states.setdefault(r["name"].split("@")[0], []).append(r["state_type"])
    assert states["tiny"] == ["COMPLETED", "CRASHED", "COMPLETED"], states
    assert states["meta_train"] == ["COMPLETED", "CRASHED", "COMPLETED"], states
