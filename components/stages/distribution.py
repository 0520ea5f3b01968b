"""The meta-training distribution of a params file, and how each evaluation task relates to it.

Not a stage: helpers the evaluate stage, the report and ``l2o tasks`` share. Everything is computed
from the params and the task registry (parameter counts from shapes), without prepared data.
The three cases of ``meta_train.task_family`` mirror :func:`components.stages.inputs.build_family`:

* ``task: NAME``: that one suite task (its dataset, architecture, batch size; fine-tuning if it does);
* ``preset: celo``: :func:`components.tasks.celo_distribution` (8x8 gray MLP-32 on Celo's four
  datasets, UCI digits in place of SVHN, batch 64);
* otherwise: an image MLP of ``hidden_sizes`` (ReLU) on each of ``datasets`` at ``data.image_size``
  (where the name gives no size), batch ``batch_size``.

In every case the horizon is ``meta_train.max_unroll``. The relation rule itself is
:func:`components.tasks.distribution_relation`.
"""

import dataclasses

from components.stages.params import PipelineParams
from components.tasks.distribution import MetaTrainDistribution, celo_distribution, distribution_relation, sized_name
from components.tasks.spec import MLPArch, TaskSpec
from components.tasks.suite import get_spec

__all__ = ["meta_train_distribution", "evaluated_spec", "task_relations"]


def meta_train_distribution(params: PipelineParams) -> MetaTrainDistribution:
    """What ``params.meta_train`` meta-trains on, as a :class:`~components.tasks.MetaTrainDistribution`.

    Example:
      >>> meta_train_distribution(PipelineParams()).datasets   # the default family at image_size 8
      ('mnist_8', 'fashion_mnist_8')
    """
    mt = params.meta_train
    fam = mt.task_family
    if fam.task is not None:
        spec = dataclasses.replace(get_spec(fam.task), num_steps=mt.max_unroll)
        return MetaTrainDistribution.from_specs(f"task {fam.task}", [spec])
    datasets = tuple(sized_name(d, image_size=params.data.image_size) for d in fam.datasets)
    if fam.preset == "celo":
        return celo_distribution(datasets, max_horizon=mt.max_unroll)
    arch = MLPArch(tuple(fam.hidden_sizes), "relu")  # ImageMLPFamily's activation
    specs = [TaskSpec(f"family_{d}", d, arch, fam.batch_size, mt.max_unroll) for d in datasets]
    return MetaTrainDistribution.from_specs("image MLP family", specs)


def evaluated_spec(params: PipelineParams, name: str) -> TaskSpec:
    """Task ``name`` as the evaluate stage trains it: ``evaluate.num_steps`` / ``batch_size`` override its own."""
    ev = params.evaluate
    return dataclasses.replace(get_spec(name), num_steps=ev.steps_of(name), batch_size=ev.batch_size_of(name))


def task_relations(params: PipelineParams) -> dict[str, dict]:
    """``{task name: relation}`` for every task of ``params.evaluate.tasks``, in that order.

    Each relation is :func:`components.tasks.distribution_relation` (JSON-ready) of the task as it is
    evaluated (:func:`evaluated_spec`: its main horizon; the ``horizon_multiplier`` runs are longer by
    design) against :func:`meta_train_distribution`.
    """
    dist = meta_train_distribution(params)
    return {name: distribution_relation(evaluated_spec(params, name), dist) for name in params.evaluate.tasks}
