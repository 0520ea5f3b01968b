"""The out-of-distribution generalisation suite: held-out tasks of kinds the zoo never meta-trained on.

Every learned optimizer of the zoo is meta-trained on small image classifiers: one-hidden-layer
ReLU MLPs of width 32 (16 in ``tiny``) on 8x8 grayscale MNIST / Fashion-MNIST / CIFAR-10 / UCI
digits, with unrolls of at most :data:`~components.tasks.distribution.META_TRAIN_MAX_HORIZON` (2000)
steps (``params/default.yaml``: 1000; ``params/celo_*.yaml``: Celo's preset). Suite ``ood``
(:data:`OOD_SUITE`) asks how far that transfers. Each task is an :class:`OODTaskSpec`: a
:class:`~components.tasks.spec.TaskSpec` that *declares* the axes of
:data:`~components.tasks.distribution.OOD_AXES` it is out by and why (``declared_axes``,
``ood_reason``); ``l2o tasks`` and :func:`~components.tasks.suite.describe_tasks` show the
declaration beside the relation the registry computes. The declaration is against *the zoo*: the
image-MLP meta-training families of the shipped params files (``default``, ``tiny``, ``celo_*``;
those without a single ``task_family.task``) and Celo's preset; a test checks that the relation
computed against each of them contains the declared axes, and that every task is out of every
shipped params file's distribution by architecture at least (STAR's and L3RS's single-task
distributions included, where a larger MLP can make, e.g., the wide MLP in range by size).

=================================  ===================================================  ==============================
task                               what is new to the zoo                               declared axes
=================================  ===================================================  ==============================
``mnist_mlp_wide_256x2``           8x the width (256) and a second hidden layer, same   architecture, size
                                   data and horizon: width / depth in isolation
``fashion_mnist_resnet_16x32``     a pre-activation ResNet (an identity block at 8x8,    architecture
                                   a strided projection block at 4x4, layer norm): skip
                                   connections, 4-D conv kernels, normalisation params
``shakespeare_char_lm_4x_horizon`` a transformer char LM (the tiny one of the held-out   dataset, architecture, horizon
                                   suite) trained 4x the zoo's longest unroll (8000)
``mnist_mlp_autoencoder``          another objective: sigmoid-MSE reconstruction of the  architecture
                                   input (no labels), 64 outputs, a 16-wide bottleneck
=================================  ===================================================  ==============================

Sizes, chosen so that one training run takes seconds (MLPs) to about a minute (ResNet, char LM) on
a 2-core CPU at the task's own horizon, like the 8x8 held-out tasks (Adam, two seeds, on a CPU
shared with other jobs: ``benchmarks/results/task_baselines_cpu_ood.txt``): the image tasks read
the 8x8 variants the default experiment already prepares (``mnist_8``, ``fashion_mnist_8``), the
char LM tiny-shakespeare; nothing else is downloaded.

Inferred details (the issue names the kinds, not their settings):

* *Width*: 8x the meta-training width (the issue says 4-8x): at 4x (128-128) the MLP is 10.8x the
  meta-training parameters, on the size threshold (:data:`~components.tasks.distribution.SIZE_FACTOR`);
  8x is out by size without doubt. Two hidden layers, ReLU, as the issue asks.
* *ResNet*: on Fashion-MNIST 8x8 (not MNIST, where any network is near its ceiling within a few
  hundred steps) with channels 16 -> 32 and one block per stage: the smallest ResNet with both an
  identity block (stage 1, 8x8) and a projection block (stage 2, stride 2 to 4x4). Measured with
  Adam on the shared 2-core CPU: two blocks per stage ~75 ms per step (well over a minute for the
  horizon), one block per stage ~30 ms. 1000 steps at batch 128 like the other 8x8 tasks. Block details:
  :mod:`components.tasks.residual`.
* *Char LM horizon*: "4x the horizon the zoo was trained for" read as 4x the longest meta-training
  unroll of any shipped preset, ``META_TRAIN_MAX_HORIZON`` (Celo's 2000): 8000 steps, out of every
  preset's horizon range (default: 1000). The network is the held-out suite's
  ``shakespeare_char_lm_tiny`` (width 32, 1 block, 2 heads, context 32, batch 16), so the horizon,
  not a bigger model, makes the run long.
* *Autoencoder*: learned_optimization's ``ImageMLPAE_Mnist_128x32x128_bs128`` scaled to the 8x8
  images: widths 128-16-128 (a 16-wide code for 64 pixels; the reference's 32-wide code would
  hardly compress 64 pixels), batch 128, 1000 steps. Details: :mod:`components.tasks.autoencoder`.
"""

import dataclasses

from components.tasks.autoencoder import AutoencoderTask
from components.tasks.distribution import META_TRAIN_MAX_HORIZON, OOD_AXES
from components.tasks.residual import ResNetTask
from components.tasks.spec import MLPArch, TaskSpec, TransformerArch

__all__ = [
    "ResNetArch",
    "AutoencoderArch",
    "OODTaskSpec",
    "OOD_HORIZON_FACTOR",
    "OOD_TASKS",
    "OOD_SUITE",
]

OOD_HORIZON_FACTOR = 4  # the char LM trains this many times the zoo's longest meta-training unroll


def _image_shape(name: str, kind: str, example_shape) -> tuple[int, ...]:
    if example_shape is None or len(example_shape) != 3:
        raise ValueError(
            f"task {name!r}: a {kind} needs an image dataset (examples (H, W, C)), got example shape"
            f" {example_shape}: name an image dataset such as mnist_8 or fashion_mnist_8"
        )
    return tuple(example_shape)


@dataclasses.dataclass(frozen=True)
class ResNetArch:
    """A pre-activation ResNet (:mod:`components.tasks.residual`): one stage per entry of ``channels``."""

    channels: tuple[int, ...]
    blocks_per_stage: int = 1
    activation: str = "relu"
    norm: str = "layer_norm"
    kernel_size: int = 3
    kind = "resnet"

    def build(self, name: str, *, example_shape, num_classes, batch_size: int) -> ResNetTask:
        """The :class:`~components.tasks.residual.ResNetTask` of this record on images of ``example_shape``.

        Raises:
          ValueError: for a dataset that is not an image dataset.
        """
        shape = _image_shape(name, self.kind, example_shape)
        return ResNetTask(
            name,
            tuple(self.channels),
            self.blocks_per_stage,
            self.activation,
            self.norm,
            shape,
            num_classes,
            batch_size,
            self.kernel_size,
        )


@dataclasses.dataclass(frozen=True)
class AutoencoderArch:
    """An MLP autoencoder (:mod:`components.tasks.autoencoder`): ``hidden`` = encoder and decoder widths."""

    hidden: tuple[int, ...]
    activation: str = "relu"
    kind = "mlp_autoencoder"

    def build(self, name: str, *, example_shape, num_classes, batch_size: int) -> AutoencoderTask:
        """The :class:`~components.tasks.autoencoder.AutoencoderTask` (``num_classes`` is not used).

        Raises:
          ValueError: for a dataset that is not an image dataset.
        """
        del num_classes
        shape = _image_shape(name, self.kind, example_shape)
        return AutoencoderTask(name, tuple(self.hidden), self.activation, shape, batch_size)


@dataclasses.dataclass(frozen=True)
class OODTaskSpec(TaskSpec):
    """A :class:`~components.tasks.spec.TaskSpec` declared out of the zoo's meta-training distribution.

    Attributes (besides the spec's):
      declared_axes: the axes of :data:`~components.tasks.distribution.OOD_AXES` the task is out by
        against the zoo's meta-training distributions (module docstring; a test checks the computed
        relation).
      ood_reason: one sentence: what about the task the zoo never saw.

    Raises:
      ValueError: for no declared axis, an axis outside ``OOD_AXES``, or an empty reason.
    """

    declared_axes: tuple[str, ...] = ()
    ood_reason: str = ""

    def __post_init__(self):
        unknown = [a for a in self.declared_axes if a not in OOD_AXES]
        if not self.declared_axes or unknown:
            raise ValueError(
                f"OOD task {self.name!r}: declared_axes {self.declared_axes} must name at least one axis, each"
                f" one of {list(OOD_AXES)}"
            )
        if not self.ood_reason.strip():
            raise ValueError(f"OOD task {self.name!r}: say in ood_reason what about the task the zoo never saw")


_LM_TINY = TransformerArch(width=32, depth=1, heads=2, context=32)  # = shakespeare_char_lm_tiny's

# fmt: off
OOD_TASKS: tuple[OODTaskSpec, ...] = (
    OODTaskSpec(
        "mnist_mlp_wide_256x2", "mnist_8", MLPArch((256, 256)), 128, 1000,
        "MNIST 8x8, ReLU MLP 256-256: 8x the meta-training width and a second hidden layer (OOD)",
        declared_axes=("architecture", "size"),
        ood_reason="8x wider (256 vs 32) and two hidden layers: 35x the meta-training MLP's parameters;"
        " the data and horizon are the meta-training ones",
    ),
    OODTaskSpec(
        "fashion_mnist_resnet_16x32", "fashion_mnist_8", ResNetArch((16, 32), blocks_per_stage=1), 128, 1000,
        "Fashion-MNIST 8x8, pre-activation ResNet 16-32, one residual block per stage, layer norm (OOD)",
        declared_axes=("architecture",),
        ood_reason="residual blocks with skip connections, 3x3 conv kernels, strided 1x1 projections and"
        " layer-norm parameters: the zoo only saw dense layers of one MLP",
    ),
    OODTaskSpec(
        "shakespeare_char_lm_4x_horizon", "tiny_shakespeare", _LM_TINY, 16, OOD_HORIZON_FACTOR * META_TRAIN_MAX_HORIZON,
        "tiny-shakespeare char LM, transformer width 32, 1 block, 2 heads, context 32, trained"
        f" {OOD_HORIZON_FACTOR * META_TRAIN_MAX_HORIZON} steps: {OOD_HORIZON_FACTOR}x the zoo's longest unroll (OOD)",
        declared_axes=("dataset", "architecture", "horizon"),
        ood_reason=f"text, attention and embeddings, trained {OOD_HORIZON_FACTOR}x the longest meta-training"
        f" unroll ({META_TRAIN_MAX_HORIZON} steps)",
    ),
    OODTaskSpec(
        "mnist_mlp_autoencoder", "mnist_8", AutoencoderArch((128, 16, 128)), 128, 1000,
        "MNIST 8x8, ReLU MLP autoencoder 64-128-16-128-64, sigmoid outputs, MSE reconstruction (OOD)",
        declared_axes=("architecture",),
        ood_reason="another objective: reconstruct the input through a 16-wide code (sigmoid-MSE, no labels,"
        " 64 outputs) instead of classifying it",
    ),
)
# fmt: on

OOD_SUITE: tuple[str, ...] = tuple(s.name for s in OOD_TASKS)
