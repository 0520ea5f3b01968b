"""Tasks, task families and held-out evaluation tasks."""

from components.tasks.base import ImageData, ImageMLPFamily, Task, normalize_loss, stack_datasets
from components.tasks.registry import EVAL_TASKS, EvalTaskSpec, make_eval_task

__all__ = [
    "ImageData",
    "ImageMLPFamily",
    "Task",
    "normalize_loss",
    "stack_datasets",
    "EVAL_TASKS",
    "EvalTaskSpec",
    "make_eval_task",
]
