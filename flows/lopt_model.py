"""MLflow "models from code" entry point of a registered learned optimizer (see flows.mlflow_models)."""

import mlflow.models

from flows.mlflow_models import LearnedOptimizerModel

mlflow.models.set_model(LearnedOptimizerModel())
