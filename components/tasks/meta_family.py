"""The meta-training task family of an experiment, from its prepared arrays (what meta_train and calibrate share).

Three recipes, chosen by the experiment's ``meta_train.task_family``:

* one suite task (:func:`single_task_family`): a :class:`~components.tasks.families.SingleTaskFamily`
  of that task (fine-tuning tasks start from their pre-trained params) with the task's own data;
* Celo's preset (``preset="celo"``): :func:`components.tasks.celo_family` (8x8 gray MLP-32 on four
  datasets, batch 64, global re-parametrisation in [1e-3, 1e3]);
* otherwise an :class:`~components.tasks.ImageMLPFamily` of the datasets, widths and scale range.

:func:`image_family` gives one family over all datasets (their training data stacked);
:func:`image_families` one per dataset (Celo's recipe: one PES estimator per dataset, meta-gradients
averaged). The arrays are the prepared files' (``x_train``, ``y_train``); reading them is the caller's.
"""

from collections.abc import Sequence
from typing import Any

from components.tasks.base import ImageData, ImageMLPFamily, stack_datasets
from components.tasks.families import SingleTaskFamily, celo_families, celo_family
from components.tasks.spec import TaskSpec, make_task, task_data

__all__ = ["single_task_family", "image_family", "image_families"]


def single_task_family(spec: TaskSpec, arrays: dict, pretrained: Any = None) -> tuple[SingleTaskFamily, Any]:
    """``(family, data)`` of one suite task: ``arrays`` its dataset's (``{}`` for a synthetic problem)."""
    return SingleTaskFamily(make_task(spec, pretrained=pretrained)), task_data(spec.dataset, arrays)


def image_family(
    datasets: Sequence[str],
    arrays: Sequence[dict],
    *,
    hidden_sizes: Sequence[int],
    batch_size: int,
    param_scale_range: tuple[float, float],
    preset: str | None = None,
) -> tuple[Any, ImageData]:
    """``(family, data)``: one family over ``datasets`` (``arrays`` in the same order), their data stacked."""
    data = stack_datasets([a["x_train"] for a in arrays], [a["y_train"] for a in arrays])
    if preset == "celo":
        return celo_family(tuple(datasets)), data
    num_classes = int(max(int(a["y_train"].max()) for a in arrays)) + 1
    family = ImageMLPFamily(
        datasets=tuple(datasets),
        hidden_sizes=tuple(hidden_sizes),
        image_shape=tuple(int(s) for s in data.x.shape[2:]),
        num_classes=num_classes,
        batch_size=batch_size,
        param_scale_range=tuple(param_scale_range),
    )
    return family, data


def image_families(
    datasets: Sequence[str],
    arrays: Sequence[dict],
    *,
    hidden_sizes: Sequence[int],
    batch_size: int,
    param_scale_range: tuple[float, float],
    preset: str | None = None,
) -> tuple[list, list[ImageData]]:
    """``(families, datas)``: one family and its data per dataset (``arrays`` in the same order)."""
    datas = [stack_datasets([a["x_train"]], [a["y_train"]]) for a in arrays]
    if preset == "celo":
        return list(celo_families(tuple(datasets)).values()), datas
    families = [
        ImageMLPFamily(
            datasets=(name,),
            hidden_sizes=tuple(hidden_sizes),
            image_shape=tuple(int(s) for s in d.x.shape[2:]),
            num_classes=int(a["y_train"].max()) + 1,
            batch_size=batch_size,
            param_scale_range=tuple(param_scale_range),
        )
        for name, d, a in zip(datasets, datas, arrays)
    ]
    return families, datas
