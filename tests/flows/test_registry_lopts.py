"""Any learned optimizer's checkpoint goes into the MLflow model registry and comes back through
``flows.mlflow_models.resolve_checkpoint`` + ``components.optimizers.load`` (a real SQLite tracking store
in a temporary directory); the library's ``load`` itself does not read registered names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.optimizers import load, registry, save


@pytest.mark.parametrize("name", ["celo", "l3rs"])
def test_registered_checkpoint_loads_by_name(name, tmp_path, monkeypatch):
    import mlflow  # noqa: PLC0415

    from flows.mlflow_models import log_learned_optimizer, resolve_checkpoint  # noqa: PLC0415

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    hyper = {"celo": {"lstm_hidden_size": 8}, "l3rs": {"num_layers": 2}}[name]
    lopt = registry.create_learned(name, **hyper)
    theta = jax.tree.map(lambda x: x + 0.01, lopt.init_meta_params(jax.random.key(3)))
    ckpt = save(tmp_path / "ckpt", lopt, theta, {"git_commit": "test"})
    client = mlflow.MlflowClient()
    # artifacts in the temporary directory too (a SQLite store's default artifact root is ./mlruns)
    experiment_id = client.create_experiment(f"registry-{name}", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment_id)
    log_learned_optimizer(run.info.run_id, ckpt, f"{name}_test")

    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda x: 0.1 * x - 0.02, params)
    direct = load(ckpt).make(num_steps=30)
    for ref in (f"{name}_test", f"models:/{name}_test/1"):
        opt = load(resolve_checkpoint(ref)).make(num_steps=30)
        u, _ = opt.update(grads, opt.init(params), params, loss=jnp.float32(0.5))
        d, _ = direct.update(grads, direct.init(params), params, loss=jnp.float32(0.5))
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(d), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError, match=r"resolve_checkpoint\('models:/"):
        load(f"models:/{name}_test/1")  # the library reads directories only: flows resolve names first
    # an unknown name or version: one line that lists what is registered (not MLflow's traceback)
    for ref in ("no_such_optimizer", "models:/no_such_optimizer/1", f"models:/{name}_test/7"):
        with pytest.raises(FileNotFoundError, match=rf"registered in {uri}: {name}_test") as err:
            resolve_checkpoint(ref)
        assert "\n" not in str(err.value)


def test_without_a_tracking_uri_the_loader_uses_the_projects_store_and_leaves_no_stray_file(tmp_path, monkeypatch):
    from flows.mlflow_models import resolve_checkpoint  # noqa: PLC0415

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(project / "sub")
    with pytest.raises(FileNotFoundError, match=r"no MLflow store in .*project yet: `l2o run` creates it"):
        resolve_checkpoint("small_fc_lopt")
    monkeypatch.chdir(tmp_path)  # outside any project: says what to set
    with pytest.raises(FileNotFoundError, match="set MLFLOW_TRACKING_URI, or run from an l2o-pipeline project"):
        resolve_checkpoint("small_fc_lopt")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dvc.yaml", "project", "sub"]  # no mlflow.db anywhere
