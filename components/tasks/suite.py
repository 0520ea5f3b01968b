"""Named task specs and suites: what a params file refers to by name.

Suites (:data:`SUITES`):

* ``heldout``: 20 held-out evaluation tasks, 4 of them fine-tuning, spanning dataset,
  architecture, size (two with over 1M parameters) and horizon. How each relates to an
  experiment's meta-training distribution is computed, not declared
  (:func:`~components.tasks.distribution.distribution_relation`; ``l2o tasks --params FILE``). Two
  are *in distribution* for Celo's recipe, as reference points: ``mnist_mlp`` and ``digits_mlp``
  (UCI digits stands in for SVHN among Celo's datasets, see :mod:`components.tasks.families`);
  the others are out of it by at least one axis;
* ``legacy``: the four original ``EVAL_TASKS`` names, same architectures;
* ``convex``: noisy quadratics and linear models for safeguard experiments;
* ``smoke``: one small task of each kind, for quick checks of the whole pipeline;
* ``ood``: the out-of-distribution generalisation suite (:mod:`components.tasks.ood`): a wide MLP, a
  ResNet, a char LM at 4x the zoo's longest unroll and an MLP autoencoder, each *declared* out of
  distribution (``declared_ood`` of :func:`describe_tasks`' rows).
* ``mup``: µP MLPs of widths 32 to 1024 (:mod:`components.tasks.mup`), µLO's narrow-to-wide transfer.

How the pipeline uses a spec (I/O in the stage, everything else in the library)::

    spec = get_spec("ft_mnist_to_fashion_mnist_mlp")
    src = source_task(spec)                                     # MLP on mnist_28
    pretrained = pretrain(src, task_data(spec.pretrain.dataset, load_prepared(root, "mnist_28")),
                          key, spec.pretrain.num_steps, spec.pretrain.learning_rate)     # cache it
    task = build_task(spec, pretrained=pretrained)
    arrays = load_prepared(root, spec.dataset)
    train_curves(task, ..., task_data(spec.dataset, arrays), eval_sets(spec, arrays), ...)
"""

from typing import Any

from components.tasks.distribution import MetaTrainDistribution, celo_distribution, distribution_relation
from components.tasks.ood import OOD_SUITE, OOD_TASKS
from components.tasks.spec import (
    Conv1DArch,
    ConvArch,
    LinearArch,
    MLPArch,
    MuPMLPArch,
    Pretrain,
    QuadraticArch,
    TaskSpec,
    TransformerArch,
    make_source_task,
    make_task,
)

__all__ = ["SUITE_TASKS", "SUITES", "get_spec", "suite", "build_task", "source_task", "describe", "describe_tasks"]


def get_spec(name: str) -> TaskSpec:
    """The spec registered as ``name``.

    Raises:
      ValueError: for an unknown name (the message lists the known ones).
    """
    if name not in SUITE_TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(SUITE_TASKS)}")
    return SUITE_TASKS[name]


def suite(name: str) -> tuple[TaskSpec, ...]:
    """The specs of suite ``name`` (one of :data:`SUITES`)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    return tuple(SUITE_TASKS[n] for n in SUITES[name])


def build_task(spec: TaskSpec | str, *, pretrained: Any = None, **overrides):
    """The task of ``spec`` or of the spec registered under that name (see :func:`~components.tasks.spec.make_task`).

    Example:
      >>> build_task("mnist_mlp", batch_size=16).batch_size
      16
    """
    return make_task(get_spec(spec) if isinstance(spec, str) else spec, pretrained=pretrained, **overrides)


def source_task(spec: TaskSpec | str):
    """The task to pre-train for a fine-tuning spec (or name): see :func:`~components.tasks.spec.make_source_task`."""
    return make_source_task(get_spec(spec) if isinstance(spec, str) else spec)


def describe(name: str, distribution: MetaTrainDistribution | None = None) -> list[dict]:
    """One row per task of suite ``name``: name, kind, dataset, batch size, horizon, parameters, and
    the relation to ``distribution`` (default: Celo's meta-training preset; see :func:`describe_tasks`)."""
    return describe_tasks(SUITES[name] if name in SUITES else suite(name), distribution)


def describe_tasks(names, distribution: MetaTrainDistribution | None = None) -> list[dict]:
    """:func:`describe` for registered task names (or specs), in the given order.

    Each row's ``ood`` (the out-of-distribution axes) and ``in_distribution`` come from
    :func:`~components.tasks.distribution.distribution_relation` against ``distribution``
    (``None``: :func:`~components.tasks.distribution.celo_distribution`); ``relation`` is the whole dict.
    ``declared_ood`` is ``{"axes": [...], "reason": str}`` for a task declared out of distribution
    (:class:`~components.tasks.ood.OODTaskSpec`), else ``None``.
    """
    dist = distribution if distribution is not None else celo_distribution()
    rows = []
    for s in (get_spec(n) if isinstance(n, str) else n for n in names):
        relation = distribution_relation(s, dist)
        rows.append(
            {
                "name": s.name,
                "kind": ("finetune:" if s.is_finetune else "") + s.kind,
                "dataset": s.dataset or "(synthetic)",
                "pretrain_dataset": s.pretrain.dataset if s.pretrain else None,
                "batch_size": s.batch_size,
                "num_steps": s.num_steps,
                "num_params": relation["axes"]["size"]["task"],
                "ood": relation["ood_axes"],
                "in_distribution": relation["in_distribution"],
                "relation": relation,
                "declared_ood": _declared(s),
                "description": s.description,
            }
        )
    return rows


def _declared(spec: TaskSpec) -> dict | None:
    axes = getattr(spec, "declared_axes", None)
    return {"axes": list(axes), "reason": spec.ood_reason} if axes else None


# -- the registry ---------------------------------------------------------------------------------
def _specs(*specs: TaskSpec) -> dict[str, TaskSpec]:
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"task names registered twice: {twice}; give each spec its own name")
    return {s.name: s for s in specs}


_LM_SMALL = TransformerArch(width=64, depth=2, heads=4, context=64)

# fmt: off

SUITE_TASKS: dict[str, TaskSpec] = _specs(
    # the four original EVAL_TASKS (components.tasks.registry), at their default 8x8 / batch 128
    # digits_mlp and mnist_mlp are Celo's own meta-training tasks (UCI digits for SVHN): in distribution
    # for the Celo recipe (distribution_relation computes it; l2o tasks shows it)
    TaskSpec(
        "digits_mlp", "digits_8", MLPArch((32,)), 128, 1000,
        "UCI digits 8x8, MLP 64-32-10 (a Celo-preset meta-training task: digits stands in for SVHN)",
    ),
    TaskSpec(
        "mnist_mlp", "mnist_8", MLPArch((32,)), 128, 1000, "MNIST 8x8, MLP 64-32-10 (a Celo-preset meta-training task)"
    ),
    TaskSpec("mnist_mlp_deep", "mnist_8", MLPArch((128, 128), "tanh"), 128, 1000, "MNIST 8x8, tanh MLP 128-128"),
    TaskSpec("fashion_mnist_conv", "fashion_mnist_8", ConvArch((4, 8)), 128, 1000, "Fashion-MNIST 8x8, CNN 4-8"),
    # bigger inputs and networks (VeLOdrome-like image tasks)
    TaskSpec(
        "mnist28_mlp_128x3", "mnist_28", MLPArch((128, 128, 128)), 128, 8000,
        "MNIST 28x28, ReLU MLP 128-128-128 (VeLOdrome Mnist_128x128x128_Relu), ~17 epochs: Adam 1e-3 reaches"
        " 97% test accuracy (96.3% at 2000 steps)",
    ),
    TaskSpec(
        "fashion_mnist28_mlp_ln_gelu", "fashion_mnist_28", MLPArch((256, 256), "gelu", "layer_norm"), 128, 2000,
        "Fashion-MNIST 28x28, GELU MLP 256-256 with layer norm",
    ),
    TaskSpec(
        "cifar10_gray32_mlp_tanh", "cifar10_jpeg_gray_32", MLPArch((128, 128, 128), "tanh"), 64, 2000,
        "CIFAR-10 gray 32x32, tanh MLP 128-128-128, batch 64 (VeLOdrome Cifar10_128x128x128_Tanh_bs64, gray)",
    ),
    TaskSpec(
        "cifar10_mlp_1024x512", "cifar10_jpeg_32", MLPArch((1024, 512)), 128, 3000,
        "CIFAR-10 RGB 32x32, ReLU MLP 1024-512 (3.7M parameters)",
    ),
    TaskSpec(
        "cifar10_conv_32x64x64", "cifar10_jpeg_32", ConvArch((32, 64, 64), downsample=True), 128, 2000,
        "CIFAR-10 RGB 32x32, CNN 32-64-64 stride 2 (VeLOdrome Conv_Cifar10_32x64x64)",
    ),
    TaskSpec(
        "cifar10_gray16_conv_ln", "cifar10_jpeg_gray_16", ConvArch((32, 64), norm="layer_norm", downsample=True),
        128, 2000, "CIFAR-10 gray 16x16, CNN 32-64 with layer norm",
    ),
    TaskSpec(
        "fashion_mnist28_conv_tanh", "fashion_mnist_28", ConvArch((16, 32, 32), "tanh", downsample=True), 128, 2000,
        "Fashion-MNIST 28x28, tanh CNN 16-32-32 stride 2",
    ),
    # other modalities
    TaskSpec("mnist1d_mlp", "mnist1d", MLPArch((100, 100)), 128, 3000, "MNIST-1D (40-sample signals), MLP 100-100"),
    TaskSpec(
        "mnist1d_conv", "mnist1d", Conv1DArch((32, 32, 32)), 128, 3000, "MNIST-1D, 1-D CNN 32-32-32 kernel 5 stride 2"
    ),
    TaskSpec(
        "shakespeare_char_lm", "tiny_shakespeare", _LM_SMALL, 32, 2000,
        "tiny-shakespeare char LM, transformer width 64, 2 blocks, 4 heads, context 64",
    ),
    TaskSpec(
        "shakespeare_char_lm_tiny", "tiny_shakespeare", TransformerArch(32, 1, 2, 32), 16, 500,
        "tiny-shakespeare char LM, transformer width 32, 1 block, 2 heads, context 32 (quick checks)",
    ),
    TaskSpec(
        "shakespeare_char_lm_1m", "tiny_shakespeare", TransformerArch(128, 6, 4, 128), 32, 5000,
        "tiny-shakespeare char LM, transformer width 128, 6 blocks, 4 heads, context 128 (1.2M parameters)",
    ),
    # horizon
    TaskSpec("mnist_mlp_long", "mnist_8", MLPArch((32,)), 64, 10000, "Celo's MNIST task trained 5x longer"),
    # STAR's meta-training task (research/algorithms.md §4.3: a 2-hidden-layer MLP on Fashion-MNIST,
    # 2000 inner steps; widths not given, 128 inferred), at 8x8 for CPU presets and 28x28 for GPU ones
    TaskSpec(
        "fashion_mnist_mlp_2x32", "fashion_mnist_8", MLPArch((32, 32)), 128, 2000,
        "Fashion-MNIST 8x8, ReLU MLP 32-32 (STAR's meta-training task, CPU size)",
    ),
    TaskSpec(
        "fashion_mnist28_mlp_2x128", "fashion_mnist_28", MLPArch((128, 128)), 128, 2000,
        "Fashion-MNIST 28x28, ReLU MLP 128-128 (STAR's meta-training task)",
    ),
    # fine-tuning
    TaskSpec(
        "ft_mnist_to_fashion_mnist_mlp", "fashion_mnist_28", MLPArch((256, 128)), 128, 500,
        "MLP 256-128 pre-trained on MNIST 28x28, fine-tuned on Fashion-MNIST (fresh head)",
        pretrain=Pretrain("mnist_28", 2000, 1e-3, 128, reinit_head=True),
    ),
    TaskSpec(
        "ft_fashion_mnist_to_cifar10_gray_conv", "cifar10_jpeg_gray_32", ConvArch((32, 64, 64), downsample=True),
        128, 1000, "CNN 32-64-64 pre-trained on Fashion-MNIST 28x28, fine-tuned on CIFAR-10 gray 32x32 (fresh head)",
        pretrain=Pretrain("fashion_mnist_28", 2000, 1e-3, 128, reinit_head=True),
    ),
    TaskSpec(
        "ft_mnist_to_digits_mlp", "digits_8", MLPArch((128,)), 64, 300,
        "MLP 128 pre-trained on MNIST 8x8, fine-tuned on the ~1,440 UCI digits training images (fresh head)",
        pretrain=Pretrain("mnist_8", 2000, 1e-3, 128, reinit_head=True),
    ),
    TaskSpec(
        "ft_shakespeare_char_lm", "tiny_shakespeare", _LM_SMALL, 32, 1000,
        "char LM pre-trained on the first half of tiny-shakespeare's training text, fine-tuned on the second",
        pretrain=Pretrain("tiny_shakespeare", 2000, 1e-3, 32, token_range=(0.0, 0.5), reinit_head=False),
        token_range=(0.5, 1.0),
    ),
    # µP MLPs (components.tasks.mup; µLO): 3 hidden layers on Fashion-MNIST 8x8, narrow for meta-training,
    # wider and longer for evaluation (the reference meta-trains mumlp-w128-d3 for 1000 steps, tests to 5000)
    *(
        TaskSpec(
            f"mup_mlp_w{w}_d3", "fashion_mnist_8", MuPMLPArch(w, 3), 128, steps,
            f"µP MLP, 3 hidden layers of {w} on Fashion-MNIST 8x8 (µLO; train narrow, test wide)",
        )
        for w, steps in ((32, 1000), (128, 2000), (512, 3000), (1024, 5000))
    ),
    # synthetic problems for safeguard experiments
    TaskSpec("noisy_quadratic_d100", "", QuadraticArch(100), 1, 1000, "noisy quadratic, h in [0.01, 1], B=1"),
    TaskSpec(
        "noisy_quadratic_rotated_d100", "", QuadraticArch(100, rotate=True), 1, 1000,
        "noisy quadratic with a random rotation of H and Σ",
    ),
    TaskSpec(
        "least_squares_d50_full", "", LinearArch("least_squares", 50, num_examples=256, condition_number=100.0),
        256, 500, "least squares, 256 examples, full batch (deterministic), condition number 100",
    ),
    TaskSpec(
        "least_squares_d50_sgd", "", LinearArch("least_squares", 50, condition_number=100.0), 32, 1000,
        "least squares on fresh data every step (stochastic), condition number 100",
    ),
    TaskSpec(
        "logistic_d50", "", LinearArch("logistic", 50, num_examples=512, l2=1e-3), 64, 1000,
        "L2-regularised logistic regression, 512 examples, batch 64",
    ),
    # the out-of-distribution generalisation suite (components.tasks.ood)
    *OOD_TASKS,
)

SUITES: dict[str, tuple[str, ...]] = {
    "legacy": ("digits_mlp", "mnist_mlp", "mnist_mlp_deep", "fashion_mnist_conv"),
    "heldout": (
        "digits_mlp",
        "mnist_mlp",
        "mnist_mlp_deep",
        "fashion_mnist_conv",
        "mnist28_mlp_128x3",
        "fashion_mnist28_mlp_ln_gelu",
        "cifar10_gray32_mlp_tanh",
        "cifar10_mlp_1024x512",
        "cifar10_conv_32x64x64",
        "cifar10_gray16_conv_ln",
        "fashion_mnist28_conv_tanh",
        "mnist1d_mlp",
        "mnist1d_conv",
        "shakespeare_char_lm",
        "shakespeare_char_lm_1m",
        "mnist_mlp_long",
        "ft_mnist_to_fashion_mnist_mlp",
        "ft_fashion_mnist_to_cifar10_gray_conv",
        "ft_mnist_to_digits_mlp",
        "ft_shakespeare_char_lm",
    ),
    # one small task of each kind (image MLP, fine-tuning, char LM, quadratic, convex) on 8x8 data and
    # text: the whole pipeline's task handling in minutes on a CPU
    "smoke": (
        "digits_mlp",
        "ft_mnist_to_digits_mlp",
        "shakespeare_char_lm_tiny",
        "noisy_quadratic_d100",
        "logistic_d50",
    ),
    # µLO's width transfer: meta-train on the narrowest (mup_mlp_w32_d3), evaluate on all
    "mup": ("mup_mlp_w32_d3", "mup_mlp_w128_d3", "mup_mlp_w512_d3", "mup_mlp_w1024_d3"),
    "convex": (
        "noisy_quadratic_d100",
        "noisy_quadratic_rotated_d100",
        "least_squares_d50_full",
        "least_squares_d50_sgd",
        "logistic_d50",
    ),
    "ood": OOD_SUITE,
}
# fmt: on
