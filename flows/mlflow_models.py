"""Learned optimizers in the MLflow model registry.

A registered learned optimizer is an MLflow pyfunc model whose artifact is the checkpoint directory.
:func:`resolve_checkpoint` turns a registered name (``models:/<name>/<version>``,
``models:/<name>@alias`` or a bare name meaning its latest version) into that local directory; the
library's ``components.optimizers.load`` then reads it. The library never reaches this module: the
pipeline resolves names here before calling it.

Example::

    from components.optimizers import load
    opt = load(resolve_checkpoint("models:/small_fc_lopt/1")).make(num_steps=1000)
"""

import warnings
from pathlib import Path

import mlflow.pyfunc

__all__ = ["LearnedOptimizerModel", "log_learned_optimizer", "resolve_checkpoint"]


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

        return load(self.checkpoint).make(num_steps=num_steps)

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


def resolve_checkpoint(reference: str | Path) -> Path:
    """The local checkpoint directory of ``reference``, for ``components.optimizers.load``.

    Args:
      reference: a checkpoint directory (returned as is), a registered model
        (``models:/<name>/<version>``, ``models:/<name>@<alias>``) or a bare registered name (its
        latest version), looked up in the store of ``MLFLOW_TRACKING_URI`` and downloaded.

    Raises:
      FileNotFoundError: if ``reference`` is neither a directory nor a registered model.
    """
    path = Path(reference)
    if path.is_dir():
        return path
    text = str(reference)
    if not text.startswith("models:/") and ("/" in text or "\\" in text):
        raise FileNotFoundError(
            f"{text!r} is not a learned-optimizer checkpoint directory (no such folder): pass the directory written"
            " by the meta_train stage (e.g. models/lopt) or a registered name (e.g. small_fc_lopt)"
        )
    store = _store_uri()
    client = mlflow.tracking.MlflowClient(store, store)
    uri = text if text.startswith("models:/") else _latest_uri(client, text)
    if uri is None:
        raise FileNotFoundError(
            f"{text!r} is not a learned-optimizer checkpoint directory and not a registered model"
            f" ({_available(client, store)}). Pass the directory written by the meta_train stage (e.g. models/lopt)"
            " or a registered name, e.g. models:/small_fc_lopt/1 or small_fc_lopt (its latest version)."
        )
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:  # an unknown name or version: one line, with what there is
        raise FileNotFoundError(f"{uri}: {str(exc).splitlines()[0]} ({_available(client, store)})") from None
    return Path(model.unwrap_python_model().checkpoint)


def _store_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the store of the project around the working directory (never MLflow's
    default ``./mlflow.db``, which would leave a stray database wherever the loader runs)."""
    import os  # noqa: PLC0415

    from flows.dvc_glue import find_root  # noqa: PLC0415
    from flows.tracking import tracking_uri  # noqa: PLC0415

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    try:
        root = find_root()
    except FileNotFoundError:
        raise FileNotFoundError(
            "no MLflow store to look registered optimizers up in: set MLFLOW_TRACKING_URI, or run from an"
            " l2o-pipeline project folder (its store is .mlflow/mlflow.db)"
        ) from None
    uri = tracking_uri(root)
    if not Path(uri.removeprefix("sqlite:///")).exists():
        raise FileNotFoundError(f"no MLflow store in {root} yet: `l2o run` creates it and registers what it trains")
    return uri


def _available(client, store: str) -> str:
    names = sorted(m.name for m in client.search_registered_models())
    return f"registered in {store}: {', '.join(names)}" if names else f"nothing is registered in {store}"


def _latest_uri(client, name: str) -> str | None:
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        return None
    latest = max(versions, key=lambda v: int(v.version))
    return f"models:/{name}/{latest.version}"
