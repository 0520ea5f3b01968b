"""Reading the earlier stages' outputs into library objects: what several stages share.

Not a stage: meta_train, calibrate and evaluate read the prepared data, the pre-trained params and the
meta-training family through these functions, and the library builds the objects
(:mod:`components.tasks.meta_family`, :mod:`components.tasks.pretrained`).
"""

from pathlib import Path
from typing import Any

from components.stages.common import load_prepared
from components.stages.params import PipelineParams
from components.stages.paths import PRETRAINED_DIR
from components.tasks import pretrained as _pretrained
from components.tasks.meta_family import image_families, image_family, single_task_family
from components.tasks.spec import TaskSpec
from components.tasks.suite import get_spec

__all__ = ["load_pretrained", "build_family", "build_families"]


def load_pretrained(root: Path, spec: TaskSpec | str) -> Any:
    """The pre-trained params of fine-tuning task ``spec`` (or name), as the pretrain stage wrote them.

    Raises:
      FileNotFoundError: if the pretrain stage has not pre-trained this task (run it).
      ValueError: if the stored arrays do not fit the task's source architecture.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    path = Path(root) / PRETRAINED_DIR / f"{spec.name}.npz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: fine-tuning task {spec.name!r} needs the pretrain stage's output;"
            " run `l2o run` (or `l2o stage pretrain`) with this task in evaluate.tasks"
        )
    return _pretrained.load_pretrained(path, spec)


def _family_options(params: PipelineParams) -> dict:
    fam = params.meta_train.task_family
    return {
        "hidden_sizes": fam.hidden_sizes,
        "batch_size": fam.batch_size,
        "param_scale_range": fam.param_scale_range,
        "preset": fam.preset,
    }


def build_family(params: PipelineParams, root: Path):
    """The meta-training task family and its training data (datasets in family order).

    ``task_family.task`` gives that suite task's family (fine-tuning tasks start from ``models/pretrained``)
    with the task's own training data; otherwise :func:`components.tasks.meta_family.image_family` of the
    listed datasets (Celo's preset, or an image MLP of the listed widths and scale range).
    """
    fam = params.meta_train.task_family
    if fam.task is not None:
        spec = get_spec(fam.task)
        arrays = (
            load_prepared(root, params.data.require(spec.dataset, f"meta_train.task_family.task {fam.task!r}"))
            if spec.dataset
            else {}
        )
        pretrained = load_pretrained(root, spec) if spec.is_finetune else None
        return single_task_family(spec, arrays, pretrained)
    arrays = [load_prepared(root, params.data.require(name, "meta_train.task_family")) for name in fam.datasets]
    return image_family(fam.datasets, arrays, **_family_options(params))


def build_families(params: PipelineParams, root: Path) -> tuple[list, list]:
    """``(families, datas)``: one family per dataset with ``estimator_per_dataset`` (Celo's recipe:
    one PES estimator of ``num_tasks`` tasks per dataset, meta-gradients averaged), else one family."""
    fam = params.meta_train.task_family
    if not fam.estimator_per_dataset:
        family, data = build_family(params, root)
        return [family], [data]
    arrays = [load_prepared(root, params.data.require(name, "meta_train.task_family")) for name in fam.datasets]
    return image_families(fam.datasets, arrays, **_family_options(params))
