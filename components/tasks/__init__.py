"""Tasks, task families, augmentation and named task suites.

The protocol every task follows (``init`` / ``loss`` / ``batch`` / ``accuracy`` /
``normalized_loss``; pytrees with static architecture and array choices) is documented in
:mod:`components.tasks.protocol`. Modules:

* ``base``: :class:`Task` (MLP / CNN / 1-D CNN classifiers on :class:`ImageData`), ``ImageMLPFamily``;
* ``models``, ``transformer``: the networks, pure functions on dicts of arrays;
* ``language``: :class:`CharLMTask` on :class:`TokenData` (tiny-shakespeare);
* ``convex``: the noisy quadratic, least squares, logistic regression (synthetic data from the key);
* ``finetune``: :class:`FineTuneTask` / :func:`finetune`, :func:`pretrain`;
* ``augment``: weight reparametrisation and reduced batch size, for any task or family;
* ``families``: :class:`ImageFamily` and Celo's four-task preset;
* ``spec``: :class:`TaskSpec` records (dataset, architecture, batch size, horizon, pre-training),
  the tasks and data they make;
* ``distribution``: :class:`MetaTrainDistribution` (what a meta-training family covers) and
  :func:`distribution_relation` (how a spec relates to it: in distribution, or out by which axes);
* ``suite``: the named specs and suites (held-out evaluation, smoke, legacy, convex, ood): what
  ``params.evaluate.tasks`` / ``evaluate.suite`` name;
* ``ood``: the out-of-distribution suite's specs (:class:`OODTaskSpec`, declared OOD) and the records
  of its new kinds, whose tasks live in ``residual`` (:class:`ResNetTask`, a pre-activation ResNet)
  and ``autoencoder`` (:class:`AutoencoderTask`, an MLP autoencoder).
"""

from components.tasks.augment import (
    LEVELS,
    ReducedBatchFamily,
    ReparamFamily,
    ReparamTask,
    reparametrize,
    sample_log_scales,
    with_batch_size,
)
from components.tasks.autoencoder import AutoencoderTask
from components.tasks.base import MODELS, ImageData, ImageMLPFamily, Task, normalize_loss, stack_datasets
from components.tasks.convex import (
    LinearModelFamily,
    LinearModelTask,
    NoisyQuadraticFamily,
    NoisyQuadraticTask,
    linear_model,
    noisy_quadratic,
    spectrum,
)
from components.tasks.distribution import (
    OOD_AXES,
    RELATION_AXES,
    SIZE_FACTOR,
    MetaTrainDistribution,
    arch_label,
    celo_distribution,
    distribution_relation,
    ood_axes,
    sized_name,
)
from components.tasks.families import (
    CELO_BATCH_SIZE,
    CELO_DATASETS,
    CELO_HIDDEN,
    CELO_IMAGE_SHAPE,
    CELO_PARAM_SCALE_RANGE,
    ImageFamily,
    celo_families,
    celo_family,
)
from components.tasks.finetune import FineTuneTask, finetune, pretrain, pretrain_with_losses
from components.tasks.language import CharLMTask, TokenData, token_windows
from components.tasks.mup import MuPMLPArch, MuPMLPFamily, MuPMLPTask, mup_mlp_task
from components.tasks.ood import OOD_TASKS, AutoencoderArch, OODTaskSpec, ResNetArch
from components.tasks.protocol import FamilyProtocol, TaskProtocol, clip_loss, num_params, param_shapes
from components.tasks.residual import ResNetTask
from components.tasks.spec import (
    Conv1DArch,
    ConvArch,
    DatasetInfo,
    LinearArch,
    MLPArch,
    Pretrain,
    QuadraticArch,
    TaskSpec,
    TransformerArch,
    dataset_info,
    eval_sets,
    make_source_task,
    make_task,
    task_data,
)
from components.tasks.suite import (
    SUITE_TASKS,
    SUITES,
    build_task,
    describe,
    describe_tasks,
    get_spec,
    source_task,
    suite,
)

__all__ = [
    # protocol
    "TaskProtocol",
    "FamilyProtocol",
    "num_params",
    "param_shapes",
    "clip_loss",
    "normalize_loss",
    # task kinds and their data
    "MODELS",
    "Task",
    "ImageData",
    "stack_datasets",
    "CharLMTask",
    "TokenData",
    "token_windows",
    "NoisyQuadraticTask",
    "noisy_quadratic",
    "spectrum",
    "LinearModelTask",
    "linear_model",
    "FineTuneTask",
    "finetune",
    "ResNetTask",
    "AutoencoderTask",
    "pretrain",
    "pretrain_with_losses",
    "MuPMLPTask",
    "MuPMLPArch",
    "mup_mlp_task",
    # augmentation
    "LEVELS",
    "ReparamTask",
    "reparametrize",
    "sample_log_scales",
    "ReparamFamily",
    "with_batch_size",
    "ReducedBatchFamily",
    # families
    "ImageMLPFamily",
    "ImageFamily",
    "MuPMLPFamily",
    "NoisyQuadraticFamily",
    "LinearModelFamily",
    "CELO_DATASETS",
    "CELO_IMAGE_SHAPE",
    "CELO_HIDDEN",
    "CELO_BATCH_SIZE",
    "CELO_PARAM_SCALE_RANGE",
    "celo_families",
    "celo_family",
    # named tasks and suites
    "TaskSpec",
    "Pretrain",
    "MLPArch",
    "ConvArch",
    "Conv1DArch",
    "TransformerArch",
    "QuadraticArch",
    "LinearArch",
    "ResNetArch",
    "AutoencoderArch",
    "OODTaskSpec",
    "OOD_TASKS",
    "DatasetInfo",
    "dataset_info",
    "SUITE_TASKS",
    "SUITES",
    "get_spec",
    "suite",
    "build_task",
    "source_task",
    "make_task",
    "make_source_task",
    "task_data",
    "eval_sets",
    "describe",
    "describe_tasks",
    # relation to a meta-training distribution
    "MetaTrainDistribution",
    "RELATION_AXES",
    "OOD_AXES",
    "SIZE_FACTOR",
    "arch_label",
    "sized_name",
    "celo_distribution",
    "distribution_relation",
    "ood_axes",
]
