"""The tiny pipeline end to end on real parts: the `l2o` CLI (Prefect flow, MLflow SQLite store, DVC
repository) and, separately, `dvc repro` in a fresh git + DVC copy; then the MLflow content, the
no-op re-run, the evaluate-only re-run and the registered learned optimizer."""

import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import BIN, make_project_copy, project_env, run_cli
from mlflow.tracking import MlflowClient

from components.optimizers import create, guard_with_loss, load
from flows.params_io import dump_params, load_params
from tests.browser import open_page

STAGES = ["prepare_data", "pretrain", "meta_train", "calibrate", "evaluate", "report"]


def _client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / '.mlflow' / 'mlflow.db'}"
    return MlflowClient(uri, uri)


def _runs(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], max_results=1000)


def _assert_dvc_clean(root: Path, mirror: Path) -> None:
    status = run_cli(root, mirror, "dvc", "status")
    assert status.returncode == 0, status.stderr
    assert "Data and pipelines are up to date" in status.stdout, status.stdout


def proc_mlflow_run_id(proc) -> str:
    """The pipeline's MLflow run id, from `l2o run`'s last line."""
    return proc.stdout.split("MLflow run ")[-1].split(";")[0].strip()


def test_flow_runs_every_stage_and_writes_the_report(tiny_run, mirror):
    root, proc = tiny_run
    assert "ran: prepare_data, pretrain, meta_train, calibrate, evaluate, report" in proc.stdout
    # evaluation progress: each task announces its programs, then one line per finished program with the ETAs
    programs = "7 programs to compile and run (adam, sgdm, learned, hub, hub_inverted, lgl2o, gl2o)"
    assert f"evaluate: digits_mlp: {programs}" in proc.stdout, proc.stdout[-3000:]
    assert re.search(r"evaluate: digits_mlp: 7/7 gl2o \(compiled [\d.]+s, ran [\d.]+s\) \| task \d+s", proc.stdout)
    evaluation = json.loads((root / "metrics" / "evaluation.json").read_text())
    params = load_params(root / "params" / "tiny.yaml")
    assert set(evaluation["tasks"]) == set(params.evaluate.tasks)
    names = ["learned", "hub", "hub_inverted", "lgl2o", "gl2o", "adam", "sgdm"]
    assert evaluation["optimizer_order"] == names
    for summary in evaluation["tasks"].values():
        train, val = summary["train"], summary["validation"]
        for opt in names:
            assert 0.0 <= val[opt]["final_test_acc"]["mean"] <= 1.0
            assert 0.0 <= val[opt]["final_val_acc"]["mean"] <= 1.0
            assert train[opt]["speedup"] > 0 and len(train[opt]["speedup_per_seed"]) == 2
            assert train[opt]["bound"] == 4  # Adam's grid runs adam_horizon_multiplier (4) x the horizon
        # every baseline tuned over the whole grid under both rules, each comparison at its own rule's rate
        assert summary["has_validation"] and summary["adam_num_steps"] == 160
        for b in ("adam", "sgdm"):
            for rule, metric in (("train", "train_loss"), ("validation", "val_loss")):
                tuned = summary["tuning"][b][rule]
                assert tuned["metric"] == metric and len(tuned["scores"]) == len(params.evaluate.lr_grid.values())
                scores = [s if s is not None else math.inf for s in tuned["scores"]]
                assert tuned["index"] == int(np.argmin(scores))
                assert (train if rule == "train" else val)[b]["learning_rate"] == pytest.approx(tuned["learning_rate"])
        # tuned Adam against its own envelope scores about 1 (the train rule picks the envelope's best rate)
        assert 0.8 < train["adam"]["speedup"] <= 1.0 + 1e-6  # interpolation may land a hair past T
        assert summary["relation"]["in_distribution"] is False  # tiny evaluates 40 steps past unrolls of 30
        # no long horizon in tiny.yaml (horizon_multiplier 1: tests/components/evaluation/test_experiment.py runs it)
        assert summary["long_num_steps"] is None and summary["long"] is None
    agg = evaluation["aggregate"]
    for opt in ("learned", "hub", "lgl2o", "gl2o"):
        ci = agg["train"][opt]["speedup_iqm"]
        assert ci["ci_low"] <= ci["value"] <= ci["ci_high"] and ci["n_tasks"] == len(params.evaluate.tasks)
        assert ci["n_runs"] == 2 * len(params.evaluate.tasks)
        assert 0.0 <= agg["train"][opt]["beats_adam_fraction"] <= 1.0 and not agg.get("long")
        assert 0.0 <= agg["validation"][opt]["algoperf_score"] <= 1.0
    assert 0.0 <= agg["train"]["lgl2o"]["fallback_rate"] <= 1.0
    assert set(agg["claims"]) == {"celo", "hub", "lgl2o", "algoperf"}  # STAR's claim needs the long horizon
    headline = json.loads((root / "metrics" / "headline.json").read_text())
    assert set(headline) == set(names)
    assert headline["lgl2o"]["train_rule"]["speedup_iqm"] == agg["train"]["lgl2o"]["speedup_iqm"]["value"]
    assert (
        headline["hub"]["validation_rule"]["test_beats_all_fraction"]
        == agg["validation"]["hub"]["test_beats_all_fraction"]
    )
    # the report: every section, figures, and a real browser renders it without errors
    report = root / "reports"
    html = (report / "index.html").read_text()
    for fragment in (
        "digits_mlp",
        "meta_training.png",
        "IQM",
        "performance profile",
        "Provenance",
        "id='claim-hub-table'",
        "id='claim-lgl2o-table'",
        "id='claim-algoperf-table'",
        "id='generalisation-table'",
        "id='distribution-table'",
    ):
        assert fragment.lower() in html.lower(), fragment
    assert evaluation["params_hash"] in html and headline and proc_mlflow_run_id(proc) not in html  # run log only
    assert json.loads((root / ".l2o" / "runs" / "report.json").read_text())["mlflow_run_id"] == proc_mlflow_run_id(proc)
    for png in report.glob("*.png"):
        assert png.stat().st_size > 5000, png
    page = open_page(report / "index.html", report.parent / "report_screenshot.png")
    assert not page.problems, page.problems  # console errors / warnings, page errors, failed requests, 4xx
    assert len(page.images) >= 6 and not page.broken_images and page.screenshot.stat().st_size > 10_000
    # the fine-tuning task started from the pretrain stage's MLP (50 Adam steps on 8x8 MNIST in tiny.yaml)
    index = json.loads((root / "models" / "pretrained" / "index.json").read_text())
    assert list(index["tasks"]) == ["ft_mnist_to_digits_mlp"]
    row = index["tasks"]["ft_mnist_to_digits_mlp"]
    assert row["num_steps"] == 50 and row["prepared_file"] == "mnist.npz" and "reused" not in row
    assert row["final_train_loss"] < 2.0 and row["source_test_acc"] > 0.3, row  # chance: 2.30 and 0.1
    assert evaluation["num_steps"] == {name: 40 for name in evaluation["tasks"]}
    config = json.loads((root / "models" / "lopt" / "config.json").read_text())
    for key in ("architecture", "hyperparameters", "component_version", "params_hash", "data_hashes"):
        assert key in config, config.keys()
    assert "git_commit" not in config  # the run's commit: MLflow tag and .l2o/runs/meta_train.json
    assert set(config["data_hashes"]) == {"mnist", "fashion_mnist"}
    _assert_dvc_clean(root, mirror)


def test_mlflow_records_runs_metrics_artifacts_and_model(tiny_run, tmp_path):
    root, proc = tiny_run
    client = _client(root)
    runs = _runs(client, "l2o-tiny")
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    for tag in ("git_commit", "l2o.params_hash", "prefect.flow_run_id", "l2o.version.meta_train"):
        assert parent.data.tags.get(tag), tag
    assert parent.data.params["evaluate.num_seeds"] == "2"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == sorted(STAGES)
    assert all(c.info.status == "FINISHED" for c in children.values())
    # metric histories with steps, logged in batches
    meta = children["meta_train"]
    history = client.get_metric_history(meta.info.run_id, "meta_loss")
    assert [m.step for m in history] == [5, 10]
    assert all(math.isfinite(m.value) for m in history)
    evaluate = children["evaluate"]
    acc = client.get_metric_history(evaluate.info.run_id, "digits_mlp/learned/test_acc")
    assert [m.step for m in acc] == [0, 20, 40]
    assert "aggregate/lgl2o/train_rule/speedup_iqm" in evaluate.data.metrics
    assert "aggregate/learned/train_rule/beats_adam_fraction" in evaluate.data.metrics
    assert "aggregate/hub/validation_rule/algoperf_score" in evaluate.data.metrics
    assert meta.data.params["meta_train.num_outer_steps"] == "10"
    # the pipeline run carries the headline (the runs table compares pipelines), and the evaluation names the
    # training run, model and registered version it used
    headline = json.loads((root / "metrics" / "headline.json").read_text())
    assert parent.data.metrics["speedup_iqm"] == headline["learned"]["train_rule"]["speedup_iqm"]
    assert parent.data.metrics["test_acc"] == headline["learned"]["validation_rule"]["mean_test_acc"]
    assert parent.data.metrics["hub/train_rule/speedup_iqm"] == headline["hub"]["train_rule"]["speedup_iqm"]
    for run in (parent, evaluate):
        assert run.data.tags["l2o.meta_train_run_id"] == meta.info.run_id
        assert run.data.tags["l2o.model_uri"] == meta.data.tags["l2o.model_uri"]
        assert run.data.tags["l2o.registered_model"] == "models:/small_fc_lopt/1"
    # artifacts
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"params", "dvc", "report"} <= top
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "dvc")} == {"dvc/dvc.lock"}
    ckpt = {a.path for a in client.list_artifacts(meta.info.run_id, "lopt")}
    assert {"lopt/weights.safetensors", "lopt/config.json"} <= ckpt
    assert "report/index.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    # wall-clock cost (MLflow only: DVC-tracked files hold no wall-clock values): per stage on the pipeline run,
    # per optimizer step (compilation apart) on the evaluate run, and the pipeline run's timings.md table
    assert {f"stage_seconds/{s}" for s in STAGES} <= set(parent.data.metrics)
    for o in ("adam", "learned", "sgdm", "hub"):
        assert evaluate.data.metrics[f"digits_mlp/{o}/step_us"] > 0, o
        assert evaluate.data.metrics[f"timing/{o}/compile_seconds"] > 0, o
        assert parent.data.metrics[f"step_us/{o}"] == evaluate.data.metrics[f"timing/{o}/step_us"]
    table = Path(client.download_artifacts(parent.info.run_id, "timings/timings.md", str(tmp_path))).read_text()
    assert "| evaluate |" in table and "| learned |" in table, table
    assert "wall-clock per stage: prepare_data" in proc.stdout and "µs per evaluation step: " in proc.stdout


def _quadratic_run(opt, steps=60):
    target = jnp.linspace(-1.0, 1.0, 8)
    loss_fn = lambda p: 0.5 * jnp.sum((p["w"] - target) ** 2)  # noqa: E731
    params = {"w": jnp.zeros(8)}
    state = opt.init(params)
    losses = []
    for _ in range(steps):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params, loss=loss, loss_fn=loss_fn)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        losses.append(float(loss))
    return np.array(losses), params, state


def test_registered_model_loads_as_optax_and_steps_a_quadratic(tiny_run, monkeypatch):
    root, _ = tiny_run
    from flows.mlflow_models import resolve_checkpoint  # noqa: PLC0415

    client = _client(root)
    versions = client.search_model_versions("name='small_fc_lopt'")
    assert [str(v.version) for v in versions] == ["1"]
    # the evaluated version is its model's champion, scored by the honest headline metric
    champion = client.get_model_version_by_alias("small_fc_lopt", "champion")
    headline = json.loads((root / "metrics" / "headline.json").read_text())
    assert str(champion.version) == "1"
    assert float(champion.tags["l2o.speedup_iqm"]) == headline["learned"]["train_rule"]["speedup_iqm"]
    uri = f"sqlite:///{root / '.mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    import mlflow  # noqa: PLC0415

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    registered = load(resolve_checkpoint("models:/small_fc_lopt/1")).make(num_steps=60)
    direct = load(root / "models" / "lopt").make(num_steps=60)
    # flows resolve a bare registered name (its latest version) to the directory the library loads
    by_name = load(resolve_checkpoint("small_fc_lopt")).make(num_steps=60)
    losses, params, _ = _quadratic_run(registered)
    direct_losses, direct_params, _ = _quadratic_run(direct)
    assert np.all(np.isfinite(losses))
    np.testing.assert_array_equal(losses, direct_losses)  # the registry gives back the same optimizer
    np.testing.assert_array_equal(_quadratic_run(by_name)[0], direct_losses)
    with pytest.raises(FileNotFoundError, match="not a learned-optimizer checkpoint directory"):
        resolve_checkpoint("no_such_registered_model")
    assert not np.allclose(params["w"], 0.0)  # it moved the parameters
    # guarded by SGD, the registered learned optimizer must descend on the quadratic
    guarded_losses, _, state = _quadratic_run(guard_with_loss(registered, create("sgd", learning_rate=0.1)))
    assert guarded_losses[-1] < 0.05 * guarded_losses[0]
    # and the pyfunc flavour answers predict() with one update per parameter
    model = mlflow.pyfunc.load_model("models:/small_fc_lopt/1")
    out = model.predict([{"params": [0.0, 1.0, 2.0], "grads": [0.1, -0.2, 0.3], "loss": [1.0]}])
    assert np.asarray(out).shape == (1, 3) and np.all(np.isfinite(out))


def test_readme_loading_example_runs_verbatim_after_the_smoke_run(tiny_run, mirror):
    """The README's "Using a trained optimizer" snippet, as written, from the project folder after `l2o run`."""
    root, _ = tiny_run
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("* **Using a trained optimizer**") :]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    snippet = "\n".join(line[2:] for line in snippet.splitlines())  # the list item's indent
    assert 'resolve_checkpoint("models:/small_fc_lopt@champion")' in snippet
    check = snippet + "\nimport numpy as np\nassert np.all(np.isfinite(updates['w'])) and np.any(updates['w'] != 0)\n"
    before = sorted(p.name for p in root.iterdir())
    proc = subprocess.run(
        [str(BIN / "python"), "-c", check],
        cwd=root,
        env=project_env(root, mirror),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in root.iterdir()) == before  # no stray mlflow.db or mlruns/


def test_mlflow_ui_lists_pipeline_runs_with_headline_metrics_and_the_champion_alias(tiny_run, mirror):
    """Headless Chromium against `l2o ui`: the URL it prints opens the runs table (classic view) with the pipeline
    run's headline numbers as columns, and the registered model's page shows its @champion alias."""
    root, proc_run = tiny_run
    parent = [r for r in _runs(_client(root), "l2o-tiny") if r.info.run_name == "pipeline"][0]
    speedup = parent.data.metrics["speedup_iqm"]
    with _l2o_ui(root, mirror) as (_, ui):
        lines = [ui.stdout.readline() for _ in range(3)]
        url = next(ln.split(": ", 1)[1].strip() for ln in lines if ln.strip().startswith("l2o-tiny:"))
        assert "workflowType=machine_learning" in url and "viewStateShareKey=l2o" in url, lines
        models_url = lines[2].split(": ", 1)[1].strip()
        page = open_page(
            url, root.parent / "mlflow_runs.png", timeout_ms=60_000, wait_for=("speedup_iqm", "pipeline"), width=1800
        )
        for column in ("Run Name", "speedup_iqm", "beats_adam_fraction", "test_acc"):
            assert column in page.text, column
        assert "Observability" not in page.text and "Token Usage" not in page.text  # the classic view, not GenAI
        shown = [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", page.text)]
        assert any(abs(x - speedup) < 1e-6 for x in shown), (speedup, page.text[:2000])
        model = open_page(
            models_url.replace("#/models?", "#/models/small_fc_lopt?"),
            root.parent / "mlflow_model.png",
            timeout_ms=60_000,
            wait_for=("Version 1", "champion"),
        )
        assert re.search(r"@\s*champion", model.text), model.text[:2000]  # the alias tag of version 1


@contextlib.contextmanager
def _l2o_ui(root: Path, mirror: Path):
    """`l2o ui` on a free port of 127.0.0.1 in ``root``, once it answers /health: ``(port, process)``."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN / "l2o"), "ui", "--port", str(port)],
        cwd=root,
        env=project_env(root, mirror),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_healthy(port, proc)
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_healthy(port: int, proc: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.time() + limit
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.read().decode().strip() == "OK":
                    return
        except OSError:
            pass
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"MLflow UI did not come up in {limit:.0f} s"
        time.sleep(0.5)


def test_noop_rerun_skips_every_stage(tiny_run, mirror):
    root, _ = tiny_run
    n_runs = len(_runs(_client(root), "l2o-tiny"))
    t0 = time.perf_counter()
    proc = run_cli(root, mirror, "l2o", "run", "--params", "params/tiny.yaml")
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all 6 stages up to date" in proc.stdout
    assert "ran: nothing" in proc.stdout
    assert len(_runs(_client(root), "l2o-tiny")) == n_runs  # nothing new tracked
    print(f"no-op re-run: {seconds:.1f}s")
    _assert_dvc_clean(root, mirror)


def test_evaluate_param_change_reruns_only_evaluate_and_report(tiny_run, mirror):
    root, _ = tiny_run
    before = json.loads((root / "metrics" / "evaluation.json").read_text())
    ckpt = (root / "models" / "lopt" / "weights.safetensors").stat().st_mtime_ns
    env = project_env(root, mirror)
    subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "first run"], cwd=root, env=env, check=True)
    # committed results: another experiment than params/default.yaml now needs --in-place to run here
    # (the learned optimizer alone of its family: the others' programs add time, not coverage, to this check)
    args = ["run", "--params", "params/tiny.yaml", "--set", "evaluate.lr_grid.max=0.3", "--in-place"]
    args += ["--set", "evaluate.methods=[learned]"]
    proc = run_cli(root, mirror, "l2o", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ran: evaluate, report" in proc.stdout
    assert "up to date: prepare_data, pretrain, meta_train, calibrate" in proc.stdout
    assert (root / "models" / "lopt" / "weights.safetensors").stat().st_mtime_ns == ckpt
    after = json.loads((root / "metrics" / "evaluation.json").read_text())
    grid = after["lr_grid"]
    assert grid[-1] == pytest.approx(0.3) and grid != before["lr_grid"]
    assert len(after["tasks"]["digits_mlp"]["tuning"]["adam"]["train"]["scores"]) == len(grid)
    # DVC compares the headline metrics with the committed run
    diff = run_cli(root, mirror, "dvc", "metrics", "diff", "--json")
    assert diff.returncode == 0, diff.stderr
    changes = json.loads(diff.stdout)["metrics/headline.json"]
    assert any(k.startswith("sgdm.") for k in changes), changes  # every rate of the grid moved
    assert "max: 0.3" in (root / "params.yaml").read_text()
    runs = _runs(_client(root), "l2o-tiny")
    latest = max((r for r in runs if r.info.run_name == "pipeline"), key=lambda r: r.info.start_time)
    children = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == latest.info.run_id)
    assert children == ["evaluate", "report"]
    _assert_dvc_clean(root, mirror)


def test_dvc_metrics_and_plots_show_the_evaluation(tiny_run, mirror, tmp_path):
    root, _ = tiny_run
    shown = run_cli(root, mirror, "dvc", "metrics", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    metrics = json.loads(shown.stdout)
    flat = json.dumps(metrics)
    assert "metrics/headline.json" in flat and "speedup_iqm" in flat and "metrics/meta_train.json" in flat
    plots = run_cli(root, mirror, "dvc", "plots", "show", "--out", str(tmp_path / "dvc_plots"))
    assert plots.returncode == 0, plots.stderr
    page = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert "plots/evaluation/digits_mlp.json" in page and "plots/meta_train.json" in page
    # the evaluation plots draw the loss against the step, one line per optimizer (not step against step)
    spec = page[page.index("plots/evaluation/digits_mlp.json") :]
    assert '"field": "optimizer"' in spec.replace("'", '"') or '"field":"optimizer"' in spec.replace("'", '"')
    assert '"loss"' in spec and "smoothed training loss" in spec


def test_dask_local_cluster_gives_the_same_metrics_as_threads(tiny_run, mirror):
    root, _ = tiny_run
    proc = run_cli(
        root,
        mirror,
        "l2o",
        "run",
        "--params",
        "params/tiny.yaml",
        "--set",
        "evaluate.runner.kind=dask",
        "--set",
        "evaluate.runner.n_workers=2",
        "--in-place",  # dvc.lock is committed (see above)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "ran: evaluate, report" in proc.stdout
    ours = json.loads((root / "metrics" / "evaluation.json").read_text())
    theirs = json.loads((root.parent / "first_evaluation.json").read_text())
    assert ours.pop("params_hash") != theirs.pop("params_hash")  # the runner is a param
    assert _close(ours, theirs, rel=1e-5), "the Dask runner and the thread runner disagree"
    # the tasks ran as Prefect task runs on the Dask workers (other processes)
    runs = _runs(_client(root), "l2o-tiny")
    latest = max((r for r in runs if r.info.run_name == "pipeline"), key=lambda r: r.info.start_time)
    assert latest.data.params["evaluate.runner.kind"] == "dask"


def test_dvc_repro_in_fresh_copy_reproduces_the_metrics(tiny_run, tmp_path, mirror):
    flow_root, _ = tiny_run
    root = make_project_copy(tmp_path / "repro", mirror)
    params = load_params(root / "params" / "tiny.yaml")
    (root / "params.yaml").write_text(dump_params(params, "params/tiny.yaml"))
    subprocess.run(["git", "commit", "-qam", "tiny params"], cwd=root, env=project_env(root, mirror), check=True)
    proc = run_cli(root, mirror, "dvc", "repro")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in proc.stdout
    _assert_dvc_clean(root, mirror)
    # same params + seed on the CPU: the same numbers as the Prefect-flow run (before its re-runs)
    ours = json.loads((root / "metrics" / "meta_train.json").read_text())
    theirs = json.loads((flow_root / "metrics" / "meta_train.json").read_text())
    for key in ("meta_loss_first", "meta_loss_last", "num_meta_params"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), key
    a = (root / "models" / "lopt" / "weights.safetensors").read_bytes()
    b = (flow_root / "models" / "lopt" / "weights.safetensors").read_bytes()
    assert a == b
    ours = json.loads((root / "models" / "safeguard.json").read_text())
    theirs = json.loads((flow_root / "models" / "safeguard.json").read_text())
    assert _close(ours["sweep"], theirs["sweep"])
    ours = json.loads((root / "metrics" / "evaluation.json").read_text())
    theirs = json.loads((flow_root.parent / "first_evaluation.json").read_text())
    assert _close(ours, theirs), "dvc repro and the Prefect flow disagree on metrics/evaluation.json"
    # identical inputs, identical hashes (issue 20): the lock of `dvc repro` in another clean copy is the
    # Prefect-flow run's first lock byte for byte (no wall-clock value, commit or run id in any output)
    assert (root / "dvc.lock").read_text() == (flow_root.parent / "first_dvc.lock").read_text()
    # stage runs were tracked too (one MLflow run per stage process)
    names = sorted(r.info.run_name for r in _runs(_client(root), "l2o-tiny"))
    assert names == sorted(STAGES)


def _close(a, b, rel=1e-6):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)
    return a == b


def test_checksum_mismatch_stops_the_pipeline(project, tmp_path, mirror):
    bad_mirror = tmp_path / "mirror"
    shutil.copytree(mirror, bad_mirror, ignore=shutil.ignore_patterns("cifar10_jpeg", "tiny_shakespeare"))
    part = bad_mirror / "mnist" / "train-labels-idx1-ubyte.gz"
    part.chmod(0o644)
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    proc = run_cli(project, bad_mirror, "l2o", "run", "--params", "params/tiny.yaml")
    assert proc.returncode == 1
    assert "prepare_data" in proc.stderr and "train-labels-idx1-ubyte.gz" in proc.stderr
    assert "sha256" in proc.stderr
    assert not (project / "data" / "prepared").exists()
    # nothing written downstream: models/ holds only what the project ships (the zoo's index), no stage output
    models = sorted(str(f.relative_to(project / "models")) for f in (project / "models").rglob("*") if f.is_file())
    assert models == ["zoo/index.json"] and not (project / "reports").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_project_store(project, mirror):
    with _l2o_ui(project, mirror) as (port, _):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        assert (project / ".mlflow" / "mlflow.db").exists()


# `l2o reproduce` of the smoke run (the comparison helpers and bad input: test_reproduce.py)

DRIVER = """
import argparse, sys
from pathlib import Path
from flows.cli import _environment
from flows.team.reproduce import add_arguments, cmd_reproduce
root = Path.cwd().resolve()
_environment(root)
parser = argparse.ArgumentParser(prog="l2o")
add_arguments(parser.add_subparsers(dest="command", required=True))
sys.exit(cmd_reproduce(parser.parse_args(sys.argv[1:]), root))
"""


def _git(cwd: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args]
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_reproduce_the_tiny_pipeline(tiny_run, tmp_path, mirror):
    root, proc = tiny_run  # the shared smoke run (other tests may have re-run stages there since: not its commit)
    original = proc.stdout.split("MLflow run ")[-1].split(";")[0].strip()
    status_before = _git(root, "status", "--porcelain", "--", ".", ":!.dvc-site-cache")
    workdir = tmp_path / "worktree"
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, "reproduce", original[:12], "--workdir", str(workdir)],
        cwd=root,
        env=project_env(root, mirror),
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-8000:]
    assert "uncommitted changes" in proc.stderr  # `l2o run` rewrote params.yaml: the run's commit is +dirty
    assert "  | l2o: done in" in proc.stderr  # the child's output, streamed with a prefix
    lines = proc.stdout.splitlines()
    reproduced = re.match(r"reproduced\s+([0-9a-f]{32})\s", lines[1]).group(1)
    status = {line.split()[0]: line.split()[-1] for line in lines if line.startswith("  ") and len(line.split()) >= 6}
    for key in (
        "meta_train/meta_loss",
        "evaluate/aggregate/lgl2o/train_rule/speedup_iqm",
        "prepare_data/mnist/num_train",
    ):
        assert status[key] == "ok", key
    assert any(k.startswith("evaluate/") for k in status) and any(k.startswith("meta_train/") for k in status)
    assert "MISMATCH" not in status.values() and "missing" not in status.values()
    assert re.search(r"^  prepare_data\s+data/prepared\s+\S+\s+\S+\s+equal$", proc.stdout, re.M), proc.stdout
    assert lines[-1].startswith("reproduced: ") and "data hashes equal" in lines[-1]
    # both runs tagged, in the project's store
    uri = f"sqlite:///{root / '.mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    assert client.get_run(reproduced).data.tags["l2o.reproduces"] == original
    assert client.get_run(original).data.tags["l2o.reproduced_by"] == reproduced
    assert client.get_run(reproduced).data.tags["l2o.reproduce.verdict"] == lines[-1]
    # the worktree is gone and the project untouched
    assert not workdir.exists()
    assert _git(root, "worktree", "list").count("\n") == 0
    assert _git(root, "status", "--porcelain", "--", ".", ":!.dvc-site-cache") == status_before
