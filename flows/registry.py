"""Learned optimizers in the MLflow model registry.

A registered learned optimizer is an MLflow pyfunc model whose artifact is the checkpoint directory.
:func:`load_optimizer` turns a registered name (``models:/<name>/<version>``, ``models:/<name>@alias``
or a bare name meaning its latest version) or a checkpoint path into the optax transformation.
"""

import warnings
from pathlib import Path

import mlflow.pyfunc

__all__ = ["LearnedOptimizerModel", "log_learned_optimizer", "load_optimizer", "resolve_checkpoint"]


class LearnedOptimizerModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a learned-optimizer checkpoint.

    ``unwrap_python_model().transformation(num_steps=...)`` gives the
    ``optax.GradientTransformationExtraArgs``. ``predict`` applies one step from a fresh optimizer
    state to flat parameter vectors: each input instance has ``params`` and ``grads`` (floats) and
    optionally ``loss``; the output has one update vector per instance.
    """

    def load_context(self, context):
        self.checkpoint = context.artifacts["checkpoint"]

    def transformation(self, *, num_steps: int):
        from components.optimizers import load  # noqa: PLC0415

        return load(self.checkpoint, num_steps=num_steps)

    def predict(
        self, context, model_input: list[dict[str, list[float]]], params: dict | None = None
    ) -> list[list[float]]:
        import jax.numpy as jnp  # noqa: PLC0415
        import numpy as np  # noqa: PLC0415

        num_steps = int((params or {}).get("num_steps", 1000))
        opt = self.transformation(num_steps=num_steps)
        out = []
        for instance in model_input:
            p = jnp.asarray(np.asarray(instance["params"], np.float32))
            g = jnp.asarray(np.asarray(instance["grads"], np.float32))
            loss = float(np.asarray(instance.get("loss", [0.0]))[0])
            updates, _ = opt.update(g, opt.init(p), p, loss=jnp.asarray(loss))
            out.append(np.asarray(updates).tolist())
        return out


def log_learned_optimizer(run_id: str, checkpoint: Path, registered_name: str) -> str:
    """Log ``checkpoint`` as a pyfunc model of run ``run_id`` and register it; returns the model URI."""
    with mlflow.start_run(run_id=run_id, nested=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # type-hint and pip-version notices that do not apply
        info = mlflow.pyfunc.log_model(
            name="learned_optimizer",
            python_model=str(Path(__file__).with_name("lopt_model.py")),
            artifacts={"checkpoint": str(checkpoint)},
            pip_requirements=["jax", "optax", "numpy", "safetensors"],
            registered_model_name=registered_name,
        )
    return info.model_uri


def load_optimizer(name_or_path: str, *, num_steps: int):
    """The optax transformation of a registered learned optimizer or of a checkpoint directory."""
    path = Path(name_or_path)
    if path.is_dir():
        from components.optimizers import load  # noqa: PLC0415

        return load(path, num_steps=num_steps)
    uri = name_or_path if name_or_path.startswith("models:/") else _latest_uri(name_or_path)
    if uri is None:
        raise ValueError(
            f"{name_or_path!r} is neither a checkpoint directory nor a registered model: run the pipeline"
            " (`l2o run`) or pass models:/<name>/<version>"
        )
    model = mlflow.pyfunc.load_model(uri)
    return model.unwrap_python_model().transformation(num_steps=num_steps)


def resolve_checkpoint(reference: str) -> str | None:
    """Checkpoint source for ``components.optimizers.load`` (entry point ``l2o_pipeline.checkpoint_sources``).

    Downloads the checkpoint of a registered model (``models:/<name>/<version>``,
    ``models:/<name>@<alias>`` or a bare registered name = its latest version) from the tracking
    store of ``MLFLOW_TRACKING_URI`` and returns its local directory; ``None`` for a name that is not
    registered there.
    """
    if not reference.startswith("models:/"):
        if "/" in reference or "\\" in reference:
            return None  # a path that does not exist, not a model name
        reference = _latest_uri(reference)
        if reference is None:
            return None
    model = mlflow.pyfunc.load_model(reference)
    return model.unwrap_python_model().checkpoint


def _latest_uri(name: str) -> str | None:
    client = mlflow.tracking.MlflowClient()
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        return None
    latest = max(versions, key=lambda v: int(v.version))
    return f"models:/{name}/{latest.version}"
