"""The zoo end to end on a tiny meta-training (real DVC repository, real MLflow SQLite store, real stages).

One project copy is shared by the steps, in order: ``l2o zoo train`` killed part-way, ``l2o zoo add`` of the
partial state (honest budget), ``l2o zoo`` listing it, ``--resume`` continuing from the checkpoint, the complete
entry replacing it, ``load("zoo:...")`` in a fresh process, MLflow registration on first use, and the evaluate
stage with the entry beside the fresh learned optimizer.
"""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import make_project_copy, project_env, run_cli
from safetensors.numpy import load_file

PARAMS = """\
seed: 0
experiment_name: l2o-zoo-test
data:
  datasets: [digits]
  image_size: 8
  test_fraction: 0.2
  max_train_examples: 400
meta_train:
  lopt: small_fc_lopt
  task_family: {datasets: [digits], hidden_sizes: [8], batch_size: 16}
  num_outer_steps: 6
  num_tasks: 2
  trunc_length: 5
  min_unroll: 10
  max_unroll: 20
  sigma: 0.1
  outer_lr: 0.03
  outer_lr_schedule: constant
  log_every: 2
  checkpoint_every: 2
calibrate: {guard: adam, lr_grid: {min: 0.001, max: 0.01, num: 2}, num_steps: 10, num_tasks: 1}
evaluate:
  tasks: [digits_mlp]
  num_steps: 20
  num_seeds: 1
  batch_size: 16
  eval_every: 10
  baselines: [adam]
  lr_grid: {min: 0.001, max: 0.1, num: 3}
  adam_horizon_multiplier: 2
  bootstrap_samples: 20
"""
PARAMS_FILE = "params/zoo/tiny.yaml"


@pytest.fixture(scope="module")
def zoo_project(tmp_path_factory, mirror):
    root = make_project_copy(tmp_path_factory.mktemp("zoo") / "project", mirror)
    (root / PARAMS_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / PARAMS_FILE).write_text(PARAMS)
    remote = root.parent / "dvc-remote"
    out = run_cli(root, mirror, "dvc", "remote", "add", "-d", "local", str(remote))
    assert out.returncode == 0, out.stderr
    subprocess.run(["git", "add", "-A"], cwd=root, env=project_env(root, mirror), check=True)
    subprocess.run(["git", "commit", "-qm", "zoo params"], cwd=root, env=project_env(root, mirror), check=True)
    return root


def _l2o(root, mirror, *args, env_extra=None, timeout=900):
    env = project_env(root, mirror)
    env.update(env_extra or {})
    return subprocess.run(
        [str(Path(sys.executable).parent / "l2o"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _config(root, name="t1") -> dict:
    return json.loads((root / "models/zoo" / name / "config.json").read_text())


def test_partial_entry_then_resume_then_complete(zoo_project, mirror):
    root = zoo_project
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()

    # 1. meta-training killed after outer step 4 (its checkpoint is step 4: checkpoint_every 2)
    out = _l2o(
        root, mirror, "zoo", "train", "t1", "--params", PARAMS_FILE, env_extra={"L2O_FAULT_KILL_AT_OUTER_STEP": "4"}
    )
    assert out.returncode == -9, out.stdout[-2000:] + out.stderr[-2000:]
    ws = root / ".l2o/zoo/t1"
    assert list((ws / "checkpoints/meta_train").glob("*.npz")), "no meta-training checkpoint in the workspace"
    assert not (root / "models/lopt").exists()  # the project's own results are untouched

    # 2. the partial state ships with its budget stated honestly, tracked by DVC and pushed to the remote
    out = _l2o(root, mirror, "zoo", "add", "t1")
    assert out.returncode == 0, out.stderr[-3000:]
    z = _config(root)["zoo"]
    assert (z["outer_steps_done"], z["outer_steps_planned"], z["complete"]) == (4, 6, False)
    assert z["git_commit"] == head and z["sessions"] == 1 and z["wall_time_seconds"] > 0
    assert z["device"].startswith("cpu") and z["params"]["meta_train"]["num_outer_steps"] == 6
    manifest = json.loads((ws / "data/prepared/manifest.json").read_text())
    assert z["data_hashes"] == {"digits": manifest["datasets"]["digits"]["sha256"]}
    assert [s for s, _ in z["curves"]["meta_loss"]] == [2, 4]
    assert (root / "models/zoo/t1.dvc").is_file() and "/t1" in (root / "models/zoo/.gitignore").read_text()
    index = json.loads((root / "models/zoo/index.json").read_text())
    assert [e["name"] for e in index["entries"]] == ["t1"]
    status = run_cli(root, mirror, "dvc", "status", "models/zoo/t1.dvc")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    assert any((root.parent / "dvc-remote").rglob("*")), "nothing pushed to the default remote"

    # 3. `l2o zoo` lists it with its lineage
    out = _l2o(root, mirror, "zoo")
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith("t1"))
    assert "small_fc_lopt" in line and "4/6 outer steps (partial)" in line and "cpu" in line and head[:12] in line

    # 4. a second train without --resume is refused; with --resume it continues from outer step 4
    out = _l2o(root, mirror, "zoo", "train", "t1", "--params", PARAMS_FILE)
    assert out.returncode == 2 and "pass --resume" in out.stderr, out.stderr
    out = _l2o(root, mirror, "zoo", "train", "t1", "--params", PARAMS_FILE, "--resume")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "at outer step 4/6" in out.stdout

    # 5. the finished state replaces the entry only with --force; its weights are the meta_train output's
    out = _l2o(root, mirror, "zoo", "add", "t1")
    assert out.returncode == 2 and "--force" in out.stderr
    out = _l2o(root, mirror, "zoo", "add", "t1", "--force")
    assert out.returncode == 0, out.stderr[-3000:]
    z = _config(root)["zoo"]
    assert (z["outer_steps_done"], z["complete"], z["sessions"]) == (6, True, 2)
    assert [s for s, _ in z["curves"]["meta_loss"]] == [2, 4, 6]
    entry, final = (
        load_file(str(root / "models/zoo/t1/weights.safetensors")),
        load_file(str(ws / "models/lopt/weights.safetensors")),
    )
    assert entry.keys() == final.keys()
    for k in entry:
        np.testing.assert_array_equal(entry[k], final[k])
    status = run_cli(root, mirror, "dvc", "status", "models/zoo/t1.dvc")
    assert "up to date" in status.stdout, status.stdout


def test_entry_loads_in_a_plain_optax_loop_in_a_fresh_process(zoo_project, mirror):
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, optax
        from components.optimizers import load
        trained = load("zoo:t1")  # the zoo of the repository this package is in
        opt = trained.make(num_steps=30)
        params = {"w": jnp.full((4, 3), 1.5)}
        loss_fn = lambda p: jnp.sum(p["w"] ** 2)
        state = opt.init(params)
        for _ in range(30):
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = opt.update(grads, state, params, loss=loss)
            params = optax.apply_updates(params, updates)
        print("OK", trained.config["zoo"]["outer_steps_done"], float(loss_fn(params)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=zoo_project,
        env=project_env(zoo_project, mirror),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    steps, loss = out.stdout.split("OK")[1].split()
    assert steps == "6" and np.isfinite(float(loss))


def test_bad_sources_and_names_fail_clearly(zoo_project, mirror):
    out = _l2o(zoo_project, mirror, "zoo", "add", "t2", "--from", "params")
    assert out.returncode == 2 and "not an `l2o zoo train` workspace" in out.stderr
    out = _l2o(zoo_project, mirror, "zoo", "add", "bad.name", "--from", ".l2o/zoo/t1")
    assert out.returncode == 2 and "invalid zoo entry name" in out.stderr
    out = _l2o(zoo_project, mirror, "zoo", "train", "t1", "--params", PARAMS_FILE, "--resume", "--set", "seed=5")
    assert out.returncode == 2 and "other seed / meta_train params" in out.stderr, out.stderr
    assert json.loads((zoo_project / ".l2o/zoo/t1/zoo_train.json").read_text())["params"]["seed"] == 0  # untouched
    no_ckpt = PARAMS.replace("  checkpoint_every: 2\n", "")
    (zoo_project / "params/zoo/nockpt.yaml").write_text(no_ckpt)
    out = _l2o(zoo_project, mirror, "zoo", "train", "t3", "--params", "params/zoo/nockpt.yaml")
    assert out.returncode == 2 and "meta_train.checkpoint_every" in out.stderr


def test_registered_in_mlflow_on_first_use_only(zoo_project, monkeypatch, tmp_path):
    from components.optimizers import load
    from flows.mlflow_models import resolve_checkpoint
    from flows.zoo import register

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    uri = register(zoo_project, "t1", log=lambda _: None)
    assert uri == "models:/zoo-t1/1"
    assert register(zoo_project, "t1", log=lambda _: None) == uri  # second use: no new version
    path = resolve_checkpoint(uri)
    a, b = load(path), load("zoo:t1", zoo_dir=zoo_project / "models/zoo")
    for x, y in zip(jax.tree.leaves(a.meta_params), jax.tree.leaves(b.meta_params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_evaluate_stage_runs_a_zoo_entry_beside_the_fresh_optimizer(zoo_project, mirror, monkeypatch, tmp_path):
    from components.stages import evaluate
    from flows.params_io import load_params
    from flows.stage_exec import execute_stage
    from flows.tracking import Tracker

    root = zoo_project
    ws = root / ".l2o/zoo/t1"
    shutil.copytree(ws / "data/prepared", root / "data/prepared", dirs_exist_ok=True)
    shutil.copytree(ws / "models/lopt", root / "models/lopt", dirs_exist_ok=True)
    (root / "models/safeguard.json").write_text(
        json.dumps({"guard": "adam", "learning_rate": 0.01, "learning_rates": {"train": 0.01, "validation": 0.01}})
    )
    params = load_params(root / PARAMS_FILE, ["evaluate.zoo=[t1]"])
    assert params.model_dump(mode="json")["evaluate"]["zoo"] == ["t1"]
    assert "zoo" not in load_params(root / PARAMS_FILE).model_dump(mode="json")["evaluate"]  # empty: not dumped
    # through the orchestration's stage runner (what `l2o stage evaluate` / `l2o run` call), with a fresh MLflow store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker = Tracker(root, "zoo-eval-test")
    result = execute_stage("evaluate", params, root, tracker=tracker, param_keys=["evaluate"], resume=False)
    tags = tracker.client.get_run(result.tags["mlflow_run_id"]).data.tags
    assert tags["l2o.zoo.t1"] == "models:/zoo-t1/1"  # registered on first use
    doc = json.loads((root / "metrics/evaluation.json").read_text())
    assert doc["optimizers"]["zoo.t1"] == "learned" and doc["optimizers"]["zoo.t1.hub"] == "hybrid"
    assert doc["optimizers"]["zoo.t1.lgl2o"] == "safeguarded"
    rows = doc["tasks"]["digits_mlp"]["train"]
    # the finished entry has exactly the fresh optimizer's weights: same seeds, same numbers
    for zoo_name, fresh in (("zoo.t1", "learned"), ("zoo.t1.hub", "hub"), ("zoo.t1.lgl2o", "lgl2o")):
        assert rows[zoo_name]["speedup"] == rows[fresh]["speedup"]
        assert rows[zoo_name]["final_train_loss"] == rows[fresh]["final_train_loss"]
    headline = json.loads((root / "metrics/headline.json").read_text())
    assert {"zoo.t1", "zoo.t1.hub", "zoo.t1.lgl2o"} <= set(headline)
    assert doc["zoo_entries"]["t1"]["outer_steps_done"] == 6 and doc["zoo_entries"]["t1"]["complete"] is True

    # the report ranks every learned optimizer by the train rule's speedup IQM
    from components.reporting.ranking import rank_learned, ranking_section

    order = rank_learned(doc)
    assert set(order) == {*params.evaluate.methods, "zoo.t1", "zoo.t1.hub", "zoo.t1.lgl2o"}
    values = [doc["aggregate"]["train"][o]["speedup_iqm"]["value"] for o in order]
    assert values == sorted(values, reverse=True)
    html = ranking_section(doc, {}, {})
    assert html.count("<tr>") == len(order) + 1 and "zoo: 6/6 outer steps" in html
    no_zoo = {**doc, "optimizers": {o: k for o, k in doc["optimizers"].items() if not o.startswith("zoo.")}}
    assert ranking_section(no_zoo, {}, {}) == ""  # a run without zoo entries keeps its page as it was

    missing = load_params(root / PARAMS_FILE, ["evaluate.zoo=[nope]"])
    with pytest.raises(FileNotFoundError, match=r"no zoo entry 'nope'.*\['t1'\]"):
        evaluate.run(missing, root)


def test_zoo_remote_in_git_gives_a_fresh_clone_the_zoo_offline(zoo_project, mirror, tmp_path):
    """With the project's `zoo` remote (models/zoo-store, committed), a `git clone` restores the entry by itself."""
    root = zoo_project
    config = root / ".dvc/config"
    config.write_text(config.read_text() + "['remote \"zoo\"']\n    url = ../models/zoo-store\n")
    out = _l2o(root, mirror, "zoo", "track")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DVC remote 'zoo'" in out.stdout, out.stdout
    assert "remote: zoo" in (root / "models/zoo/t1.dvc").read_text()
    assert any(p.is_file() for p in (root / "models/zoo-store").rglob("*")), "nothing pushed to models/zoo-store"
    env = project_env(root, mirror)
    subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "zoo t1"], cwd=root, env=env, check=True, capture_output=True)

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], env=env, check=True, capture_output=True)
    assert (clone / "models/zoo/t1.dvc").is_file() and not (clone / "models/zoo/t1").exists()
    script = textwrap.dedent(
        """
        from pathlib import Path
        import numpy as np, jax
        from components.optimizers import load
        from flows.zoo import materialize
        assert materialize(Path.cwd(), log=print) == ["t1"]  # default: every entry with a .dvc file
        assert materialize(Path.cwd(), ["t1"], log=print) == []  # already there: nothing to do
        print("OK", load("zoo:t1", zoo_dir=Path.cwd() / "models/zoo").config["zoo"]["outer_steps_done"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=clone, env=project_env(clone, mirror), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("OK")[1].split() == ["6"]
    a, b = (load_file(str(r / "models/zoo/t1/weights.safetensors")) for r in (root, clone))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # an experiment's workspace made first thing in a fresh clone (`l2o run --params params/tiny.yaml` before any
    # `make run`) holds the entry's files: the workspace's own DVC config has no `zoo` remote to pull them from
    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(root), str(fresh)], env=env, check=True, capture_output=True)
    script = "from pathlib import Path; from flows.workspace import prepare; prepare(Path.cwd(), Path('.l2o/ws'))"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=fresh, env=project_env(fresh, mirror), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    c = load_file(str(fresh / ".l2o/ws/models/zoo/t1/weights.safetensors"))
    assert c.keys() == a.keys() and all(np.array_equal(a[k], c[k]) for k in a)


def test_pipeline_stage_order_ignores_the_zoo_dvc_files(zoo_project):
    """The entries' .dvc files are unnamed stages in DVC's graph: the pipeline still sees dvc.yaml's stages only."""
    import yaml

    from flows.dvc_glue import open_repo, stage_order

    assert (zoo_project / "models/zoo/t1.dvc").is_file()
    order = stage_order(open_repo(zoo_project))
    assert sorted(order) == sorted(yaml.safe_load((zoo_project / "dvc.yaml").read_text())["stages"])
    assert order.index("meta_train") < order.index("evaluate") < order.index("report")


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[2] / "params" / "zoo").glob("*.yaml")), ids=lambda p: p.name
)
def test_zoo_params_files_are_valid_and_checkpointed(path):
    from flows.params_io import load_params

    params = load_params(path)
    assert params.meta_train.checkpoint_every, f"{path.name}: `l2o zoo train` needs meta_train.checkpoint_every"


def test_train_workspace_reads_the_project_mirror(tmp_path, monkeypatch):
    """The workspace .l2o/zoo/<name> has no ../shared/datasets beside it: zoo train points the stages at the
    project's mirror (an explicit $L2O_DATA_MIRROR stays as it is)."""
    from components.stages.fetch import MIRROR_ENV, resolve_mirror
    from flows.zoo_train import _use_project_mirror, workspace

    project, shared = tmp_path / "proj", tmp_path / "shared" / "datasets"
    project.mkdir()
    shared.mkdir(parents=True)
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    assert resolve_mirror(workspace(project, "x")) is None  # what the stages would see without the fix
    _use_project_mirror(project)
    assert resolve_mirror(workspace(project, "x")) == shared.resolve()
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv(MIRROR_ENV, str(other))
    _use_project_mirror(project)
    assert resolve_mirror(workspace(project, "x")) == other.resolve()
