"""How an evaluation task relates to a meta-training distribution: in distribution, or out of it and how.

A :class:`MetaTrainDistribution` records what a meta-training task family covers: its datasets
(prepared names with their image size, e.g. ``mnist_8``), its architectures, the parameter count of
its largest task, its longest inner unroll, its batch sizes and whether its tasks fine-tune.
:func:`distribution_relation` compares a :class:`~components.tasks.spec.TaskSpec` with one, axis by
axis, and returns a JSON-ready dict. The rule, per axis (``same`` means *within the distribution*):

* ``dataset``: same dataset identity (registered dataset and grayscale flag, as
  :func:`components.data.parse_variant` reads the name) as one of the meta-training datasets. The
  image size does not matter for identity (``mnist_28`` is MNIST, like ``mnist_8``) but the note
  says when it differs; RGB and gray CIFAR-10 are different datasets. A synthetic task (dataset
  ``""``) matches only a distribution of synthetic tasks.
* ``architecture``: the architecture record equals one of the meta-training ones (same family and
  widths / channels, activation, normalisation, ...): ``MLPArch((32,))`` is not ``MLPArch((32,), "tanh")``.
* ``size``: fewer than :data:`SIZE_FACTOR` (10) times the parameters of the largest meta-training task.
* ``horizon``: at most the longest meta-training unroll (``meta_train.max_unroll``).
* ``finetuning``: the task starts from pre-trained weights iff the meta-training tasks do.
* ``batch_size``: one of the meta-training batch sizes. **Reported, never an OOD axis**: batch size
  changes the gradient noise, not the problem, and learned optimizers are commonly meta-trained with
  reduced-batch augmentation (:class:`~components.tasks.ReducedBatchFamily`).

A task is **in distribution** iff no axis of :data:`OOD_AXES` is out (dataset and architecture
match, size and horizon are within range, same fine-tuning). :func:`ood_axes` is the same relation
against Celo's published meta-training preset (:func:`celo_distribution`).

Example::

    dist = MetaTrainDistribution.from_specs("mine", [TaskSpec("t", "mnist_8", MLPArch((32,)), 128, 1000)])
    distribution_relation(get_spec("digits_mlp"), dist)["ood_axes"]      # ["dataset"]
"""

import dataclasses
import functools
from collections.abc import Sequence

from components.data import parse_variant
from components.tasks.families import CELO_BATCH_SIZE, CELO_DATASETS, CELO_HIDDEN
from components.tasks.spec import (
    Arch,
    Conv1DArch,
    ConvArch,
    MLPArch,
    TaskSpec,
    TransformerArch,
)

__all__ = [
    "RELATION_AXES",
    "OOD_AXES",
    "SIZE_FACTOR",
    "META_TRAIN_MAX_HORIZON",
    "MetaTrainDistribution",
    "arch_label",
    "sized_name",
    "celo_distribution",
    "distribution_relation",
    "ood_axes",
]

RELATION_AXES = ("dataset", "architecture", "size", "horizon", "batch_size", "finetuning")
OOD_AXES = ("dataset", "architecture", "size", "horizon", "finetuning")  # batch_size is reported only
SIZE_FACTOR = 10  # out of distribution by size at >= 10x the largest meta-training task's parameters
META_TRAIN_MAX_HORIZON = 2000  # Celo's longest meta-training unroll (research/algorithms.md §1.2)


def sized_name(name: str, *, image_size: int | None = None) -> str:
    """The prepared name of ``name`` with its image size spelt out (``mnist`` at 8 -> ``mnist_8``).

    Non-image names (``mnist1d``, ``tiny_shakespeare``) and ``""`` (synthetic) come back unchanged.

    Raises:
      ValueError: for a name :func:`components.data.parse_variant` rejects, or an image name
        without a size when ``image_size`` is not given.
    """
    if name == "":
        return ""
    v = parse_variant(name, image_size=image_size)
    if v.image_size is None:
        return name
    return f"{v.dataset}{'_gray' if v.grayscale else ''}_{v.image_size}"


def _identity(dataset: str) -> tuple[str, bool]:
    """Dataset identity: the registered dataset and the grayscale flag (any size; ``""``: synthetic)."""
    if dataset == "":
        return "", False
    v = parse_variant(dataset, image_size=1)  # 1: any size parses; the size is not part of the identity
    return v.dataset, v.grayscale


def _image_size(dataset: str) -> int | None:
    return None if dataset == "" else parse_variant(dataset).image_size


def arch_label(arch: Arch) -> str:
    """A short label of an architecture record: ``mlp 128-128 tanh``, ``conv 32-64 relu layer_norm k3 stride 2``."""
    if isinstance(arch, (MLPArch, ConvArch, Conv1DArch)):
        widths = arch.hidden if isinstance(arch, MLPArch) else arch.channels
        parts = [arch.kind, "-".join(str(w) for w in widths), arch.activation]
        if arch.norm != "none":
            parts.append(arch.norm)
        if not isinstance(arch, MLPArch):
            parts.append(f"k{arch.kernel_size}" + (" stride 2" if arch.downsample else ""))
        return " ".join(parts)
    if isinstance(arch, TransformerArch):
        ratio = f" mlp_ratio {arch.mlp_ratio}" if arch.mlp_ratio != 4 else ""
        return f"char_lm width {arch.width} depth {arch.depth} heads {arch.heads} context {arch.context}{ratio}"
    fields = ", ".join(f"{f.name}={getattr(arch, f.name)}" for f in dataclasses.fields(arch) if f.name != "model")
    return f"{arch.kind}({fields})"


@dataclasses.dataclass(frozen=True)
class MetaTrainDistribution:
    """What a meta-training task family covers (plain data; build it with :meth:`from_specs`).

    Attributes:
      name: a label, e.g. ``"Celo preset"``, ``"image MLP family"``, ``"task fashion_mnist_mlp_2x32"``.
      datasets: prepared names *with* their image size (``mnist_8``; ``""`` for synthetic tasks).
      archs: the architecture records of the meta-training tasks.
      max_params: parameters of the largest meta-training task.
      max_horizon: the longest inner unroll (``meta_train.max_unroll``).
      batch_sizes: the meta-training minibatch sizes.
      finetuning: whether the meta-training tasks start from pre-trained weights.

    Raises:
      ValueError: for an empty field, a non-positive count, or an image dataset named without a size.
    """

    name: str
    datasets: tuple[str, ...]
    archs: tuple[Arch, ...]
    max_params: int
    max_horizon: int
    batch_sizes: tuple[int, ...]
    finetuning: bool = False

    def __post_init__(self):
        for field in ("datasets", "archs", "batch_sizes"):
            value = tuple(getattr(self, field))
            if not value:
                raise ValueError(f"MetaTrainDistribution {self.name!r}: {field} is empty; give at least one")
            object.__setattr__(self, field, value)
        for d in self.datasets:
            try:
                parse_variant(d) if d else None
            except ValueError as err:
                raise ValueError(
                    f"MetaTrainDistribution {self.name!r}: dataset {d!r}: {err}; name the image size,"
                    f" e.g. sized_name({d!r}, image_size=params.data.image_size)"
                ) from None
        for field in ("max_params", "max_horizon"):
            if getattr(self, field) <= 0:
                value = getattr(self, field)
                raise ValueError(f"MetaTrainDistribution {self.name!r}: {field} must be > 0, got {value}")
        if any(b <= 0 for b in self.batch_sizes):
            raise ValueError(f"MetaTrainDistribution {self.name!r}: batch sizes must be > 0, got {self.batch_sizes}")

    @classmethod
    def from_specs(cls, name: str, specs: Sequence[TaskSpec]) -> "MetaTrainDistribution":
        """The distribution covering the meta-training tasks ``specs``, each at its longest unroll.

        Parameter counts come from the specs' shapes (:meth:`TaskSpec.num_params`), without data;
        ``max_horizon`` is the largest ``num_steps`` (give the specs ``num_steps=max_unroll``).

        Example:
          >>> spec = TaskSpec("m", "mnist_8", MLPArch((32,)), 64, 2000)
          >>> MetaTrainDistribution.from_specs("one", [spec]).max_params
          2410
        """
        if not specs:
            raise ValueError(f"MetaTrainDistribution {name!r}: no meta-training task specs given")
        return cls(
            name=name,
            datasets=tuple(dict.fromkeys(s.dataset for s in specs)),
            archs=tuple(dict.fromkeys(s.arch for s in specs)),
            max_params=max(s.num_params() for s in specs),
            max_horizon=max(s.num_steps for s in specs),
            batch_sizes=tuple(sorted({s.batch_size for s in specs})),
            finetuning=any(s.is_finetune for s in specs),
        )

    @property
    def image_sizes(self) -> tuple[int, ...]:
        """The image sizes of its image datasets (empty if it has none)."""
        return tuple(sorted({s for s in map(_image_size, self.datasets) if s is not None}))

    def summary(self) -> str:
        """One line: datasets; architectures; largest task; longest unroll; batch sizes; fine-tuning."""
        datasets = ", ".join(d or "(synthetic)" for d in self.datasets)
        archs = ", ".join(arch_label(a) for a in self.archs)
        batches = ", ".join(str(b) for b in self.batch_sizes)
        return (
            f"{datasets}; {archs}; <= {self.max_params:,} params; unrolls <= {self.max_horizon} steps;"
            f" batch {batches}" + ("; fine-tuning" if self.finetuning else "")
        )

    def as_dict(self) -> dict:
        """A JSON-ready record of the distribution (architectures as :func:`arch_label` strings)."""
        return {
            "name": self.name,
            "datasets": list(self.datasets),
            "image_sizes": list(self.image_sizes),
            "architectures": [arch_label(a) for a in self.archs],
            "max_params": self.max_params,
            "max_horizon": self.max_horizon,
            "batch_sizes": list(self.batch_sizes),
            "finetuning": self.finetuning,
        }


@functools.cache
def celo_distribution(
    datasets: tuple[str, ...] = CELO_DATASETS, *, max_horizon: int = META_TRAIN_MAX_HORIZON
) -> MetaTrainDistribution:
    """Celo's meta-training preset: 8x8 gray MLP-32 (ReLU) on ``datasets`` (UCI digits for SVHN), batch 64.

    ``max_horizon`` defaults to Celo's published longest unroll (2000); a params file passes its
    ``meta_train.max_unroll``.
    """
    specs = [TaskSpec(f"celo_{d}", d, MLPArch(CELO_HIDDEN), CELO_BATCH_SIZE, max_horizon) for d in datasets]
    return MetaTrainDistribution.from_specs("Celo preset", specs)


def distribution_relation(spec: TaskSpec, dist: MetaTrainDistribution) -> dict:
    """How task ``spec`` relates to the meta-training distribution ``dist`` (the rule: module docstring).

    Returns:
      A JSON-ready dict::

        {"in_distribution": bool,            # no axis of OOD_AXES is out
         "ood_axes": [str, ...],             # the out axes, in OOD_AXES order
         "distribution": str,                # dist.name
         "axes": {                           # RELATION_AXES, each with "same" (within the distribution) and "note"
           "dataset":      {"same", "task": str, "meta_train": [str], "note"},
           "architecture": {"same", "task": str, "meta_train": [str], "note"},   # arch_label strings
           "size":         {"same", "task": int, "meta_train": int, "limit": int, "note"},
           "horizon":      {"same", "task": int, "meta_train": int, "note"},
           "batch_size":   {"same", "task": int, "meta_train": [int], "note"},
           "finetuning":   {"same", "task": bool, "meta_train": bool, "note"}}}

      ``note`` is a sentence ("" when there is nothing to add); ``size.limit`` is
      ``SIZE_FACTOR * dist.max_params`` (out at or above it).
    """
    axes = {
        "dataset": _dataset_axis(spec.dataset, dist.datasets),
        "architecture": _arch_axis(spec.arch, dist.archs),
    }
    n, limit = spec.num_params(), SIZE_FACTOR * dist.max_params
    axes["size"] = {
        "same": n < limit,
        "task": n,
        "meta_train": dist.max_params,
        "limit": limit,
        "note": f"{n:,} params, {n / dist.max_params:,.1f}x the largest meta-training task"
        f" ({dist.max_params:,}); out at >= {SIZE_FACTOR}x",
    }
    axes["horizon"] = {
        "same": spec.num_steps <= dist.max_horizon,
        "task": spec.num_steps,
        "meta_train": dist.max_horizon,
        "note": f"{spec.num_steps} steps; meta-training unrolls <= {dist.max_horizon}",
    }
    axes["batch_size"] = {
        "same": spec.batch_size in dist.batch_sizes,
        "task": spec.batch_size,
        "meta_train": list(dist.batch_sizes),
        "note": "reported only: batch size alone does not make a task out of distribution",
    }
    source = f"fine-tunes from {spec.pretrain.dataset}" if spec.pretrain else "trains from scratch"
    axes["finetuning"] = {
        "same": spec.is_finetune == dist.finetuning,
        "task": spec.is_finetune,
        "meta_train": dist.finetuning,
        "note": f"{source}; meta-training tasks " + ("fine-tune" if dist.finetuning else "train from scratch"),
    }
    out = [a for a in OOD_AXES if not axes[a]["same"]]
    return {"in_distribution": not out, "ood_axes": out, "distribution": dist.name, "axes": axes}


def _dataset_axis(dataset: str, meta: tuple[str, ...]) -> dict:
    matches = [d for d in meta if _identity(d) == _identity(dataset)]
    note = ""
    if matches and dataset and _image_size(dataset) not in {_image_size(d) for d in matches}:
        sizes = sorted({_image_size(d) for d in matches})
        note = f"same dataset as {matches[0]} at another image size ({_image_size(dataset)} vs {sizes[0]})"
    elif not matches and dataset:
        base, gray = _identity(dataset)
        other = [d for d in meta if d and _identity(d)[0] == base]
        if other:
            note = f"{base} {'in gray' if gray else 'in colour'}; meta-training has {other[0]}"
    return {
        "same": bool(matches),
        "task": dataset or "(synthetic)",
        "meta_train": [d or "(synthetic)" for d in meta],
        "note": note,
    }


def _arch_axis(arch: Arch, meta: tuple[Arch, ...]) -> dict:
    same = arch in meta
    note = ""
    if not same and any(m.kind == arch.kind for m in meta):
        note = f"same family ({arch.kind}), other widths, activation, normalisation or options"
    return {"same": same, "task": arch_label(arch), "meta_train": [arch_label(a) for a in meta], "note": note}


def ood_axes(spec: TaskSpec) -> tuple[str, ...]:
    """How ``spec`` lies outside Celo's meta-training preset (8x8 gray MLP-32 on its 4 datasets, <= 2000 steps).

    The axes of :func:`distribution_relation` against :func:`celo_distribution`: ``dataset`` (none
    of ``CELO_DATASETS`` at any size; RGB CIFAR-10 counts as another), ``architecture`` (not a
    one-hidden-layer ReLU MLP of width 32 without normalisation), ``size`` (>= 10x the 2,410
    parameters of the meta-training MLP), ``horizon`` (more than :data:`META_TRAIN_MAX_HORIZON`
    steps), ``finetuning`` (starts from pre-trained weights).
    """
    return tuple(distribution_relation(spec, celo_distribution())["ood_axes"])
