"""Task specs: plain records naming a dataset, an architecture, a batch size and a horizon.

A :class:`TaskSpec` is plain data: a prepared dataset name (``components.data``: ``mnist_28``,
``cifar10_jpeg_gray_8``, ``mnist1d``, ``tiny_shakespeare``; ``""`` for synthetic problems), an
architecture record (:class:`MLPArch`, :class:`ConvArch`, :class:`Conv1DArch`,
:class:`TransformerArch`, :class:`QuadraticArch`, :class:`LinearArch`, µP MLPs'
:class:`MuPMLPArch` from :mod:`components.tasks.mup`, or a record defined beside its task that has
``kind`` and ``build(name, *, example_shape, num_classes, batch_size) -> task``, e.g.
:class:`components.tasks.ood.ResNetArch`), a batch size and a default horizon (training steps), plus a
:class:`Pretrain` record for fine-tuning tasks. :func:`make_task`
turns it into a task; :meth:`TaskSpec.num_params` counts its parameters from the dataset's known
shapes, without data (``jax.eval_shape``). :func:`task_data` and :func:`eval_sets` turn prepared
arrays (loaded by a stage) into what the task and the evaluation runner take. The named registry
is :mod:`components.tasks.suite`; how a spec relates to a meta-training distribution is
:mod:`components.tasks.distribution`.
"""

import dataclasses
from typing import Any

import jax
import numpy as np

from components.data import DATASETS, parse_variant
from components.tasks.base import ImageData, Task, stack_datasets
from components.tasks.convex import linear_model, noisy_quadratic
from components.tasks.finetune import finetune
from components.tasks.language import CharLMTask, TokenData, token_bounds, token_windows
from components.tasks.mup import MuPMLPArch, mup_mlp_task
from components.tasks.protocol import num_params

__all__ = [
    "Arch",
    "MLPArch",
    "ConvArch",
    "Conv1DArch",
    "TransformerArch",
    "QuadraticArch",
    "LinearArch",
    "MuPMLPArch",
    "Pretrain",
    "TaskSpec",
    "DatasetInfo",
    "dataset_info",
    "make_task",
    "make_source_task",
    "task_data",
    "eval_sets",
    "MNIST1D_LENGTH",
]

MNIST1D_LENGTH = 40  # MNIST-1D signals (components.data.mnist1d)


# -- architectures --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MLPArch:
    hidden: tuple[int, ...]
    activation: str = "relu"
    norm: str = "none"
    kind = "mlp"


@dataclasses.dataclass(frozen=True)
class ConvArch:
    channels: tuple[int, ...]
    activation: str = "relu"
    norm: str = "none"
    downsample: bool = False
    kernel_size: int = 3
    kind = "conv"


@dataclasses.dataclass(frozen=True)
class Conv1DArch:
    channels: tuple[int, ...]
    activation: str = "relu"
    norm: str = "none"
    downsample: bool = True
    kernel_size: int = 5
    kind = "conv1d"


@dataclasses.dataclass(frozen=True)
class TransformerArch:
    width: int
    depth: int
    heads: int
    context: int
    mlp_ratio: int = 4
    kind = "char_lm"


@dataclasses.dataclass(frozen=True)
class QuadraticArch:
    dim: int
    h_min: float = 0.01
    h_max: float = 1.0
    spectrum: str = "geometric"
    noise_std: float = 1.0
    rotate: bool = False
    init_scale: float = 1.0
    kind = "noisy_quadratic"


@dataclasses.dataclass(frozen=True)
class LinearArch:
    model: str  # "least_squares" | "logistic"
    dim: int
    num_examples: int | None = None
    noise_std: float = 0.1
    l2: float = 0.0
    condition_number: float = 10.0

    @property
    def kind(self) -> str:
        return self.model


Arch = MLPArch | ConvArch | Conv1DArch | TransformerArch | QuadraticArch | LinearArch | MuPMLPArch


@dataclasses.dataclass(frozen=True)
class Pretrain:
    """How a fine-tuning task's starting point is made: Adam on ``dataset`` with the same architecture.

    ``reinit_head``: see :func:`components.tasks.finetune` (``None``: iff the class counts differ).
    """

    dataset: str
    num_steps: int
    learning_rate: float = 1e-3
    batch_size: int = 128
    token_range: tuple[float, float] = (0.0, 1.0)
    reinit_head: bool | None = None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A named task: dataset (prepared name, ``""`` if synthetic), architecture, batch size, horizon.

    ``token_range`` selects the part of ``train_tokens`` a char-LM trains on; ``seed`` draws a
    synthetic problem; ``pretrain`` makes it a fine-tuning task.
    """

    name: str
    dataset: str
    arch: Arch
    batch_size: int
    num_steps: int
    description: str = ""
    pretrain: Pretrain | None = None
    token_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0

    @property
    def kind(self) -> str:
        """The architecture kind: mlp, conv, conv1d, char_lm, noisy_quadratic, least_squares, logistic."""
        return self.arch.kind

    @property
    def is_finetune(self) -> bool:
        return self.pretrain is not None

    def num_params(self) -> int:
        """Parameters of the task (of the target model, for fine-tuning), by ``eval_shape``: no data."""
        return num_params(_base_task(self, self.dataset, self.batch_size, self.token_range))


# -- datasets -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a prepared dataset looks like to a model: ``kind`` image | sequence | text | synthetic,
    ``example_shape`` (``None`` for text and synthetic) and ``num_classes`` (vocabulary size for text)."""

    name: str
    kind: str
    example_shape: tuple[int, ...] | None
    num_classes: int | None


def dataset_info(name: str, *, image_size: int | None = None) -> DatasetInfo:
    """Shapes of a prepared dataset from its name alone (``""``: synthetic, no dataset).

    Raises:
      ValueError: for a name that :func:`components.data.parse_variant` rejects.
    """
    if name == "":
        return DatasetInfo("", "synthetic", None, None)
    variant = parse_variant(name, image_size=image_size)
    spec = DATASETS[variant.dataset]
    if spec.kind == "image":
        channels = 1 if variant.grayscale else spec.channels
        return DatasetInfo(name, "image", (variant.image_size, variant.image_size, channels), spec.num_classes)
    if spec.kind == "sequence":
        return DatasetInfo(name, "sequence", (MNIST1D_LENGTH,), spec.num_classes)
    return DatasetInfo(name, "text", None, spec.num_classes)


def _base_task(spec: TaskSpec, dataset: str, batch_size: int, token_range, example_shape=None, num_classes=None):
    arch, info = spec.arch, dataset_info(dataset)
    shape = tuple(example_shape) if example_shape is not None else info.example_shape
    classes = num_classes if num_classes is not None else info.num_classes
    if hasattr(arch, "build"):  # a record defined beside its task (components.tasks.ood) builds it itself
        return arch.build(spec.name, example_shape=shape, num_classes=classes, batch_size=batch_size)
    if isinstance(arch, (MLPArch, ConvArch, Conv1DArch)):
        if shape is None:
            raise ValueError(f"task {spec.name!r}: a {arch.kind} needs an image or sequence dataset, got {dataset!r}")
        extra = {} if isinstance(arch, MLPArch) else {"downsample": arch.downsample, "kernel_size": arch.kernel_size}
        hidden = arch.hidden if isinstance(arch, MLPArch) else arch.channels
        return Task(
            spec.name, arch.kind, tuple(hidden), arch.activation, shape, classes, batch_size, norm=arch.norm, **extra
        )
    if isinstance(arch, MuPMLPArch):
        if shape is None:
            raise ValueError(f"task {spec.name!r}: a µP MLP needs an image or sequence dataset, got {dataset!r}")
        return mup_mlp_task(
            spec.name, shape, classes, batch_size, width=arch.width, depth=arch.depth,
            input_mult=arch.input_mult, output_mult=arch.output_mult, activation=arch.activation,
        )  # fmt: skip
    if isinstance(arch, TransformerArch):
        if info.kind != "text":
            raise ValueError(f"task {spec.name!r}: a char_lm needs a text dataset, got {dataset!r}")
        return CharLMTask(
            spec.name,
            classes,
            arch.context,
            arch.width,
            arch.depth,
            arch.heads,
            batch_size,
            tuple(token_range),
            arch.mlp_ratio,
        )
    key = jax.random.PRNGKey(spec.seed)
    if isinstance(arch, QuadraticArch):
        return noisy_quadratic(
            arch.dim,
            h_min=arch.h_min,
            h_max=arch.h_max,
            spectrum_kind=arch.spectrum,
            noise_std=arch.noise_std,
            batch_size=batch_size,
            init_scale=arch.init_scale,
            rotate_key=key if arch.rotate else None,
            name=spec.name,
        )
    return linear_model(
        key,
        arch.model,
        arch.dim,
        batch_size=batch_size,
        num_examples=arch.num_examples,
        noise_std=arch.noise_std,
        l2=arch.l2,
        condition_number=arch.condition_number,
        name=spec.name,
    )


def make_task(
    spec: TaskSpec,
    *,
    pretrained: Any = None,
    batch_size: int | None = None,
    example_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
):
    """The task of ``spec`` (:func:`components.tasks.suite.build_task` also takes a registered name).

    Args:
      spec: the spec.
      pretrained: for fine-tuning specs, the params :func:`~components.tasks.pretrain` returned for
        :func:`make_source_task` (required there, rejected elsewhere).
      batch_size: overrides the spec's.
      example_shape, num_classes: override the shapes the dataset name implies (e.g. when the data
        is prepared at another size).

    Raises:
      ValueError: if a fine-tuning spec gets no ``pretrained`` params or another spec gets some, or
        the params do not fit (see :func:`~components.tasks.finetune`).
    """
    task = _base_task(spec, spec.dataset, batch_size or spec.batch_size, spec.token_range, example_shape, num_classes)
    if spec.pretrain is None:
        if pretrained is not None:
            raise ValueError(f"task {spec.name!r} is not a fine-tuning task: do not pass pretrained params")
        return task
    if pretrained is None:
        raise ValueError(
            f"task {spec.name!r} fine-tunes from a model pre-trained on {spec.pretrain.dataset!r}: pass"
            f" pretrained=pretrain(source_task(spec), <that data>, key, {spec.pretrain.num_steps},"
            f" {spec.pretrain.learning_rate})"
        )
    return finetune(task, pretrained, reinit_head=spec.pretrain.reinit_head, name=spec.name)


def make_source_task(spec: TaskSpec):
    """The task to pre-train for a fine-tuning spec: same architecture, the pre-training data and batch.

    Raises:
      ValueError: if ``spec`` is not a fine-tuning spec.
    """
    if spec.pretrain is None:
        raise ValueError(f"task {spec.name!r} is not a fine-tuning task; it has no source task")
    p = spec.pretrain
    src = dataclasses.replace(spec, name=f"{spec.name}_source", pretrain=None)
    return _base_task(src, p.dataset, p.batch_size, p.token_range)


# -- data for a spec (pure: the stage loads the arrays) ---------------------------------------------
def task_data(dataset: str, arrays: dict[str, np.ndarray]) -> ImageData | TokenData | None:
    """The training-data pytree a task of ``dataset`` samples from, built from the prepared arrays.

    Image / sequence: ``ImageData`` of ``x_train``/``y_train`` (one dataset); text: ``TokenData`` of
    ``train_tokens`` (the whole array: a task's ``token_range`` selects within it); synthetic: ``None``.
    """
    kind = dataset_info(dataset).kind
    if kind in ("image", "sequence"):
        return stack_datasets([arrays["x_train"]], [arrays["y_train"]])
    if kind == "text":
        return TokenData(jax.numpy.asarray(arrays["train_tokens"], jax.numpy.int32))
    return None


def eval_sets(spec: TaskSpec, arrays: dict[str, np.ndarray], max_examples: int = 2000) -> dict[str, tuple]:
    """Fixed evaluation batches ``{"train": batch, "test": batch}`` for the evaluation runner.

    Image / sequence: the first ``max_examples`` train and test examples. Text: up to
    ``max_examples`` consecutive windows of the task's training range and of ``test_tokens``.
    Synthetic: ``{}`` (no held-out set; the runner records the training loss).
    """
    kind = dataset_info(spec.dataset).kind
    if kind in ("image", "sequence"):
        n = max_examples
        return {
            "train": (arrays["x_train"][:n], arrays["y_train"][:n]),
            "test": (arrays["x_test"][:n], arrays["y_test"][:n]),
        }
    if kind == "text":
        context = spec.arch.context
        train = np.asarray(arrays["train_tokens"])
        lo, hi = token_bounds(len(train), spec.token_range, context)
        return {
            "train": token_windows(train[lo:hi], context, max_examples),
            "test": token_windows(arrays["test_tokens"], context, max_examples),
        }
    return {}
