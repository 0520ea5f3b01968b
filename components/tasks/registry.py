"""The original named held-out evaluation tasks (other datasets and/or architectures than meta-training).

Kept as they were for the stages and params that use them. :mod:`components.tasks.suite`
generalises this registry (every task kind, fine-tuning, prepared dataset names with sizes,
default horizons, parameter counts without data); its ``legacy`` suite holds these four names with
the same architectures (``build_task(name, batch_size=...)`` equals ``make_eval_task`` at 8x8).
"""

import dataclasses

import jax.numpy as jnp

from components.tasks.base import Task

__all__ = ["EvalTaskSpec", "EVAL_TASKS", "make_eval_task"]


@dataclasses.dataclass(frozen=True)
class EvalTaskSpec:
    dataset: str
    model: str
    hidden: tuple[int, ...]
    activation: str = "relu"
    description: str = ""


EVAL_TASKS: dict[str, EvalTaskSpec] = {
    "digits_mlp": EvalTaskSpec("digits", "mlp", (32,), description="UCI digits 8x8, MLP 64-32-10 (unseen data)"),
    "mnist_mlp": EvalTaskSpec("mnist", "mlp", (32,), description="MNIST, MLP 64-32-10 (in-distribution)"),
    "mnist_mlp_deep": EvalTaskSpec(
        "mnist", "mlp", (128, 128), activation="tanh", description="MNIST, tanh MLP 64-128-128-10 (unseen architecture)"
    ),
    "fashion_mnist_conv": EvalTaskSpec(
        "fashion_mnist", "conv", (4, 8), description="Fashion-MNIST, CNN 4-8 channels (unseen architecture)"
    ),
}


def make_eval_task(name: str, *, image_shape: tuple[int, int, int], num_classes: int, batch_size: int) -> Task:
    """The held-out task ``name`` (dataset index 0 of the data it is given, no reparametrisation)."""
    if name not in EVAL_TASKS:
        raise ValueError(f"unknown evaluation task {name!r}; choose one of {sorted(EVAL_TASKS)}")
    spec = EVAL_TASKS[name]
    return Task(
        name=name,
        model=spec.model,
        hidden=spec.hidden,
        activation=spec.activation,
        image_shape=tuple(image_shape),
        num_classes=num_classes,
        batch_size=batch_size,
        dataset_index=jnp.asarray(0, jnp.int32),
        log_scale=jnp.asarray(0.0, jnp.float32),
    )
