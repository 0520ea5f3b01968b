"""MLflow "models from code" entry point of a registered learned optimizer (see flows.registry)."""

import mlflow.models

from flows.registry import LearnedOptimizerModel

mlflow.models.set_model(LearnedOptimizerModel())
