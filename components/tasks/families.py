"""Task families for meta-training, and the Celo four-task preset.

:class:`ImageFamily` generalises :class:`~components.tasks.ImageMLPFamily`: any classifier of
:class:`~components.tasks.Task` (MLP, CNN, 1-D CNN; widths, depth, activation, layer norm) on one or
more datasets of one example shape. Per sampled task it chooses the dataset (an array, so a vmapped
population mixes datasets); the architecture is static. Augmentation composes on top::

    family = ReparamFamily(ImageFamily(("mnist_8", "fashion_mnist_8"), (8, 8, 1), 10, 64), "global")

**Celo's recipe** (``research/algorithms.md`` §1.2; learned_optimization's ``fast_mlp_diff_data``):
four image-classification MLPs on 8×8 grayscale inputs, one hidden layer of 32 ReLU units, 10-way
softmax cross-entropy, batch 64, each its own family augmented with
``ReparamWeightsFamily(level="global", param_scale_range=(1e-3, 1e3))``; PES averages one estimator
per family (8 tasks each). The datasets are CIFAR-10 gray, Fashion-MNIST, MNIST and SVHN (cropped,
gray). SVHN is not available offline here (``../shared/datasets/README.md``); in its place we use
**UCI digits** (``digits_8``): it is the only other 10-class grayscale image dataset we have, it is
*natively* 8×8 (no resampling), and like SVHN it is digit recognition from a source unlike MNIST
(scanned 32×32 bitmaps counted into 4×4 blocks, 0..16 intensities). Its ~1,440 training images
(1,797 minus the held-out fifth) are few, but the meta-objective is the training loss of short
runs, for which that is enough. The cost: UCI digits is then in-distribution for optimizers
trained with this preset, so the held-out suite's ``digits_mlp`` (like ``mnist_mlp``) is an
in-distribution reference task for the Celo recipe, not a held-out one:
:func:`~components.tasks.distribution.distribution_relation` computes that (``ood_axes`` of it is
empty) and ``l2o tasks`` labels it ``in-distribution``.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from components.tasks import models
from components.tasks.augment import ReparamFamily
from components.tasks.base import MODELS, Task

__all__ = [
    "ImageFamily",
    "SingleTaskFamily",
    "CELO_DATASETS",
    "CELO_IMAGE_SHAPE",
    "CELO_HIDDEN",
    "CELO_BATCH_SIZE",
    "CELO_PARAM_SCALE_RANGE",
    "celo_families",
    "celo_family",
]

CELO_DATASETS = ("mnist_8", "fashion_mnist_8", "cifar10_jpeg_gray_8", "digits_8")  # digits_8 in place of SVHN
CELO_IMAGE_SHAPE = (8, 8, 1)
CELO_HIDDEN = (32,)
CELO_BATCH_SIZE = 64
CELO_PARAM_SCALE_RANGE = (1e-3, 1e3)


@dataclasses.dataclass(frozen=True)
class ImageFamily:
    """Classifiers of one architecture on ``datasets`` (one example shape): ``sample(key) -> Task``.

    The sampled task's ``dataset_index`` is uniform over ``datasets`` (indices into the
    :class:`~components.tasks.ImageData` built from them in this order, with
    :func:`~components.tasks.stack_datasets`); its built-in ``log_scale`` is 0 (augment with
    :class:`~components.tasks.ReparamFamily`). The other fields are :class:`~components.tasks.Task`'s.
    """

    datasets: tuple[str, ...]
    image_shape: tuple[int, ...]
    num_classes: int
    batch_size: int
    model: str = "mlp"
    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"
    norm: str = "none"
    downsample: bool = False
    kernel_size: int = 3
    name: str = "image_family"

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("ImageFamily needs at least one dataset")
        models.check_choice("model", self.model, MODELS)
        models.check_choice("activation", self.activation, models.ACTIVATIONS)
        models.check_choice("norm", self.norm, models.NORMS)

    def sample(self, key: jax.Array) -> Task:
        return Task(
            name=self.name,
            model=self.model,
            hidden=tuple(self.hidden),
            activation=self.activation,
            image_shape=tuple(self.image_shape),
            num_classes=self.num_classes,
            batch_size=self.batch_size,
            dataset_index=jax.random.randint(key, (), 0, len(self.datasets)),
            log_scale=jnp.zeros((), jnp.float32),
            norm=self.norm,
            downsample=self.downsample,
            kernel_size=self.kernel_size,
        )


@dataclasses.dataclass(frozen=True)
class SingleTaskFamily:
    """A family of one task (STAR meta-trains on one MLP, L3RS specialises to one fine-tuning run).

    ``sample`` ignores its key and returns ``task``; the inner problems still differ, because each
    one draws its initialisation (and minibatches) from its own key. The task's arrays (e.g. a
    fine-tuning task's pre-trained weights) become constants of the compiled meta-training step.
    """

    task: Any

    @property
    def name(self) -> str:
        return getattr(self.task, "name", "task")

    def sample(self, key: jax.Array) -> Any:
        del key
        return self.task


def _celo(datasets: tuple[str, ...], name: str, level: str, param_scale_range: tuple[float, float]) -> ReparamFamily:
    base = ImageFamily(
        datasets, CELO_IMAGE_SHAPE, 10, CELO_BATCH_SIZE, model="mlp", hidden=CELO_HIDDEN, activation="relu", name=name
    )
    return ReparamFamily(base, level, param_scale_range)


def celo_families(
    datasets: tuple[str, ...] = CELO_DATASETS,
    *,
    level: str = "global",
    param_scale_range: tuple[float, float] = CELO_PARAM_SCALE_RANGE,
) -> dict[str, ReparamFamily]:
    """Celo's recipe as published: one family per dataset (each indexes dataset 0 of its own data).

    Returns:
      ``{prepared name: family}``; meta-train with one estimator per family and average their
      meta-gradients (Celo: 8 tasks per family).
    """
    return {d: _celo((d,), f"celo_{d}", level, param_scale_range) for d in datasets}


def celo_family(
    datasets: tuple[str, ...] = CELO_DATASETS,
    *,
    level: str = "global",
    param_scale_range: tuple[float, float] = CELO_PARAM_SCALE_RANGE,
) -> ReparamFamily:
    """Celo's recipe as one family whose tasks pick one of the datasets uniformly.

    For a meta-trainer with a single family (``components.meta.pes``): with ``num_tasks`` tasks it
    estimates the same expected meta-gradient as :func:`celo_families`, but the number of tasks per
    dataset varies from step to step. Its data is ``stack_datasets`` of the four prepared arrays,
    in ``datasets`` order.
    """
    if not datasets:
        raise ValueError("celo_family needs at least one dataset")
    return _celo(tuple(datasets), "celo", level, param_scale_range)
