"""Experiments other than the committed one run in their own workspace (flows.workspace): a real `l2o run` in a
project copy with committed results, stopped early by an empty dataset mirror, leaves the project untouched."""

import subprocess

from conftest import BIN, project_env

from flows.workspace import IN_PLACE_ENV, workspace_for

COMMITTED = "schema: '2.0'\nstages: {}\n"


def _commit_results(root):
    (root / "dvc.lock").write_text(COMMITTED)
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "headline.json").write_text('{"learned": {}}\n')
    subprocess.run(["git", "add", "-f", "dvc.lock", "metrics"], cwd=root, check=True, capture_output=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results"],
        cwd=root,
        check=True,
        capture_output=True,
    )


def _status(root) -> str:
    out = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    return "\n".join(ln for ln in out.stdout.splitlines() if ".dvc-site-cache" not in ln and ".dvc-global" not in ln)


def test_which_runs_go_to_a_workspace(project, monkeypatch):
    monkeypatch.delenv(IN_PLACE_ENV, raising=False)
    assert workspace_for(project, "params/tiny.yaml") is None  # no committed results: in place
    _commit_results(project)
    assert workspace_for(project, "params/tiny.yaml") == project / ".l2o" / "experiments" / "tiny"
    assert workspace_for(project, "params/default.yaml") is None  # the committed experiment
    assert workspace_for(project, "params.yaml") is None  # the resolved params (l2o reproduce)
    assert workspace_for(project, "params/tiny.yaml", in_place=True) is None
    monkeypatch.setenv(IN_PLACE_ENV, "1")  # team workers and reproduce's checkouts
    assert workspace_for(project, "params/tiny.yaml") is None


def test_smoke_run_leaves_the_committed_results_alone(project, mirror, tmp_path):
    _commit_results(project)
    env = project_env(project, mirror)
    env.pop(IN_PLACE_ENV, None)
    env["L2O_DATA_MIRROR"] = str(tmp_path / "empty-mirror")  # prepare_data stops the run at once
    (tmp_path / "empty-mirror").mkdir()
    proc = subprocess.run(
        [str(BIN / "l2o"), "run", "--params", "params/tiny.yaml"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "it runs in its own workspace .l2o/experiments/tiny/" in proc.stdout
    assert "prepare_data" in proc.stderr
    ws = project / ".l2o" / "experiments" / "tiny"
    for part in (".git", ".dvc", "dvc.yaml", "params/tiny.yaml", "components", "params.yaml"):
        assert (ws / part).exists(), part
    assert "l2o-tiny" in (ws / "params.yaml").read_text()  # the workspace's resolved params
    assert _status(project) == ""  # params.yaml, dvc.lock and metrics as committed
    assert (project / ".mlflow" / "mlflow.db").exists() and not (ws / ".mlflow").exists()  # the project's store
    # --in-place runs it here: the project's params.yaml is rewritten
    proc = subprocess.run(
        [str(BIN / "l2o"), "run", "--params", "params/tiny.yaml", "--in-place"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1 and "own workspace" not in proc.stdout
    assert "params.yaml" in _status(project)
