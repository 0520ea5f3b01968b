"""MLflow "models from code" entry point of a registered learned optimizer (see flows.models)."""

import mlflow.models

from flows.models import LearnedOptimizerModel

mlflow.models.set_model(LearnedOptimizerModel())
