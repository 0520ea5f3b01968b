"""`l2o submit` before anything is submitted: bad input and missing parts stop it with exit 2 and a
message naming the fix; the placement falls back to the CPU when no GPU worker is online."""

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO, project_env, run_cli

from flows.team.submit import choose_placement


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's hook
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


@pytest.fixture
def healthy_url():
    """A server that answers every health check (the submit stops before it asks for more)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _submit(project: Path, mirror: Path, monkeypatch, *args: str, **env: str):
    """`l2o submit --params params/tiny.yaml ARGS` in the project copy, with ``env`` on top of its env."""
    import conftest

    original = conftest.project_env

    def with_env(root, mirror):
        e = original(root, mirror)
        e.update(env)
        return e

    monkeypatch.setattr(conftest, "project_env", with_env)
    return run_cli(project, mirror, "l2o", "submit", "--params", "params/tiny.yaml", *args)


def test_without_servers_nothing_is_submitted(project, mirror, monkeypatch):
    proc = _submit(project, mirror, monkeypatch)
    assert proc.returncode == 2
    assert "no Prefect server to submit to: run `l2o up`" in proc.stderr


def test_bad_placement_and_bad_params_are_refused(project, mirror, monkeypatch):
    proc = _submit(project, mirror, monkeypatch, "--place", "meta_train=tpu")
    assert proc.returncode == 2 and "--place 'meta_train=tpu'" in proc.stderr and "gpu, cpu, pipeline" in proc.stderr
    proc = _submit(project, mirror, monkeypatch, "--place", "nosuchstage=gpu")
    assert proc.returncode == 2 and "STAGE one of prepare_data" in proc.stderr
    proc = _submit(project, mirror, monkeypatch, "--set", "evaluate.num_seeds=-1")
    assert proc.returncode == 2 and "evaluate.num_seeds" in proc.stderr


def test_uncommitted_code_and_a_missing_remote_are_refused(project, mirror, monkeypatch, healthy_url):
    servers = {"PREFECT_API_URL": f"{healthy_url}/api", "MLFLOW_TRACKING_URI": healthy_url}
    (project / "components" / "stages" / "report.py").write_text("# edited\n", encoding="utf-8")
    proc = _submit(project, mirror, monkeypatch, **servers)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "uncommitted changes to components/stages/report.py" in proc.stderr and "Commit" in proc.stderr
    import subprocess

    subprocess.run(["git", "checkout", "--", "components"], cwd=project, check=True)
    proc = _submit(project, mirror, monkeypatch, **servers)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no DVC remote to carry data and outputs between workers" in proc.stderr


def test_meta_training_goes_to_gpu_workers_when_they_exist_else_to_the_cpu():
    placed = {"meta_train": "gpu"}
    assert choose_placement(placed, set(), {"l2o-cpu": 1, "l2o-gpu": 2}) == ({"meta_train": "gpu"}, [])
    final, notes = choose_placement(placed, set(), {"l2o-cpu": 1, "l2o-gpu": 0})
    assert final == {} and "meta_train runs in the pipeline's own process" in notes[0]
    # placed by the user: it stays on the GPU pool and waits for a worker
    final, notes = choose_placement(placed, {"meta_train"}, {"l2o-cpu": 1})
    assert final == {"meta_train": "gpu"} and "meta_train waits for one" in notes[0]


# run in a fresh process: a temporary Prefect API (``prefect_test_harness``) beside the logging that earlier tests
# of the same pytest worker configured fails on exit
FOLLOW_DRIVER = """
import contextlib, datetime, io, json
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.testing.utilities import prefect_test_harness
from flows.team.submit import print_new_logs

@flow(name="l2o-follow-test")
def pipeline():
    pass

out = io.StringIO()
with prefect_test_harness(), get_client(sync_client=True) as client:
    run = client.create_flow_run(pipeline, name="tiny@test", tags=["l2o-submission:test"])
    stage = client.create_flow_run(pipeline, name="meta_train@gpu", tags=["l2o-submission:test"])
    names = {run.id: run.name, stage.id: stage.name}
    t = datetime.datetime.now(datetime.UTC)

    def send(flow_run, message, seconds):
        at = t + datetime.timedelta(seconds=seconds)
        client.create_logs([LogCreate(name="l2o", level=20, message=message, timestamp=at, flow_run_id=flow_run.id)])

    seen = set()
    with contextlib.redirect_stdout(out):
        send(run, "handing meta_train to pool gpu", 0)
        send(stage, "stage done", 5)
        newest = print_new_logs(client, list(names), names, seen, None)
        send(run, "ran on pool gpu", 3)  # stamped before the newest line printed, reaching the API after it
        newest = print_new_logs(client, list(names), names, seen, newest)
        print_new_logs(client, list(names), names, seen, newest)  # nothing new: nothing printed again
print("FOLLOWED " + json.dumps(out.getvalue().splitlines()))
"""


def test_following_a_submission_prints_a_line_that_reaches_prefect_after_a_later_stamped_one(tmp_path, mirror):
    """Each process of a submission sends its log lines to the Prefect API in batches: a line of the pipeline's
    process can arrive after a later-stamped line of a stage's process (the team test once lost the pipeline's
    "ran on pool" line so). Following from the newest line printed would skip it; the follower prints it once."""
    env = project_env(tmp_path, mirror)  # no server from outside; its Prefect home in tmp_path
    proc = subprocess.run(
        [sys.executable, "-c", FOLLOW_DRIVER], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    followed = next(line for line in proc.stdout.splitlines() if line.startswith("FOLLOWED "))
    assert json.loads(followed.removeprefix("FOLLOWED ")) == [
        "[tiny@test] handing meta_train to pool gpu",
        "[meta_train@gpu] stage done",
        "[tiny@test] ran on pool gpu",
    ]
