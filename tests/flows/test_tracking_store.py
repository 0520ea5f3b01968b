"""A SQLite tracking store shared by several processes and clones (issue 20): its first use by concurrent
processes is serialised (it used to crash in an alembic migration), and an experiment whose artifacts live in
another project's folder is refused with the fix (they used to be written there, and lost with that clone)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, REPO, project_env

from flows.tracking import ARTIFACT_ROOT_ENV, StoreUnsafe, Tracker

OPEN = """
import sys
from pathlib import Path
from flows.tracking import Tracker
t = Tracker(Path(sys.argv[1]), sys.argv[2])
print("experiment", t.experiment_id)
"""


def test_concurrent_first_use_of_a_shared_sqlite_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    env.pop(ARTIFACT_ROOT_ENV, None)
    roots = [tmp_path / f"clone{i}" for i in range(3)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN, str(r), f"exp-{i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for i, r in enumerate(roots)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and b"experiment" in out, err.decode()[-3000:]  # no alembic traceback
    assert (tmp_path / "shared" / "mlflow.db.lock").exists()

    # a clone using another clone's experiment: refused, naming the folder and the fix
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(ARTIFACT_ROOT_ENV, raising=False)
    with pytest.raises(StoreUnsafe, match=r"keeps its artifacts in .*clone0.*another project's folder") as err:
        Tracker(roots[1], "exp-0")
    assert "l2o up" in str(err.value) and ARTIFACT_ROOT_ENV in str(err.value)
    mine = Tracker(roots[1], "exp-1")  # its own experiment is fine
    # and it opens in MLflow 3's classic ML view (runs table), not the GenAI one
    assert mine.client.get_experiment(mine.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # an explicit artifact root that holds the experiment's folder makes sharing it a declared choice
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, str(roots[0] / ".mlflow"))
    Tracker(roots[1], "exp-0")
    # and new experiments then keep their artifacts in that root, whichever clone creates them
    t = Tracker(roots[2], "exp-new")
    location = t.client.get_experiment(t.experiment_id).artifact_location
    assert Path(location.removeprefix("file://")) == (roots[0] / ".mlflow" / "exp-new").resolve()


def test_l2o_run_refuses_another_projects_experiment_with_one_line(project, mirror, tmp_path):
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    env = dict(project_env(project, mirror), MLFLOW_TRACKING_URI=uri)
    env.pop(ARTIFACT_ROOT_ENV, None)
    other = tmp_path / "other-clone"
    made = subprocess.run(
        [sys.executable, "-c", OPEN, str(other), "l2o-tiny"], env={**env, "PYTHONPATH": str(REPO)}, capture_output=True
    )
    assert made.returncode == 0, made.stderr.decode()[-2000:]
    proc = subprocess.run(
        [str(BIN / "l2o"), "run", "--params", "params/tiny.yaml"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "another project's folder" in proc.stderr
    assert str(other) in proc.stderr
    assert not (project / "models" / "lopt").exists()
