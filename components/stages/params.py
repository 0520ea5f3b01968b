"""Experiment params: one pydantic model per stage section, validated at the boundary.

A params file (``params/*.yaml``) is one :class:`PipelineParams`. Every model forbids unknown keys
and is frozen, so a typo fails loudly. Params stop at the stage boundary: stages read these models
and pass plain values to the library factories.
"""

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

__all__ = [
    "DatasetName",
    "PreparedName",
    "EvalTaskName",
    "DataParams",
    "TaskFamilyParams",
    "MetaTrainPhase",
    "PretrainParams",
    "MetaTrainParams",
    "CalibrateParams",
    "LogGrid",
    "EvaluateParams",
    "RunnerParams",
    "ReportParams",
    "PipelineParams",
    "params_hash",
]

# Registered datasets (components.data.DATASETS). cifar10 is the canonical, lossless CIFAR-10 (download);
# cifar10_jpeg the lossy JPEG copy that the offline mirror holds (mirror-only).
DatasetName = Literal["mnist", "fashion_mnist", "digits", "cifar10", "cifar10_jpeg", "mnist1d", "tiny_shakespeare"]


def _check_prepared_name(name: str) -> str:
    from components.data import parse_variant  # noqa: PLC0415 - keeps `import params` light

    parse_variant(name, image_size=1)  # grammar, dataset and explicit size; 1 fits every image dataset
    return name


# A prepared dataset: "<dataset>[_gray][_<size>]", e.g. mnist, mnist_28, cifar10_jpeg_gray_8, tiny_shakespeare
# (components.data.prepare). It names the file data/prepared/<name>.npz and the manifest entry.
PreparedName = Annotated[str, AfterValidator(_check_prepared_name)]


def _check_task_name(name: str) -> str:
    from components.tasks.suite import get_spec  # noqa: PLC0415

    get_spec(name)  # the error lists the registered names
    return name


def _check_suite_name(name: str) -> str:
    from components.tasks.suite import SUITES  # noqa: PLC0415

    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)} (`l2o tasks --suite NAME` lists one)")
    return name


# A registered task (components.tasks.suite.SUITE_TASKS; `l2o tasks --suite heldout` lists them).
EvalTaskName = Annotated[str, AfterValidator(_check_task_name)]
SuiteName = Annotated[str, AfterValidator(_check_suite_name)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    """prepare_data: which prepared datasets to write and how.

    Each entry of ``datasets`` is a prepared name ``<dataset>[_gray][_<size>]`` and becomes
    ``data/prepared/<name>.npz``: ``mnist`` (at ``image_size``), ``mnist_28``, ``mnist_32``
    (zero-padded), ``cifar10_jpeg_gray_8``, ``mnist1d``, ``tiny_shakespeare``. Several variants of
    one dataset are prepared from one decoding, with the same examples in the same order.
    """

    datasets: list[PreparedName] = Field(
        default=["mnist", "fashion_mnist", "digits"],
        min_length=1,
        description="prepared names <dataset>[_gray][_<size>]; one data/prepared/<name>.npz each",
    )
    image_size: PositiveInt = Field(
        default=8, le=28, description="square side of image datasets named without _<size> (area downsampling)"
    )
    test_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="held-out fraction for datasets without a test split"
    )
    max_train_examples: PositiveInt | None = Field(
        default=None, description="keep at most this many training examples per labelled dataset (seeded)"
    )
    text_split: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(
        default=(0.9, 0.05, 0.05),
        description="train/validation/test fractions of a text corpus, as contiguous ranges in that order",
    )

    @model_validator(mode="after")
    def _unique(self):
        from components.data import parse_variant  # noqa: PLC0415

        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets must be unique, got {self.datasets}")
        for name in self.datasets:
            try:
                parse_variant(name, image_size=self.image_size)
            except ValueError as err:
                raise ValueError(
                    f"data.datasets: {err}; set data.image_size accordingly, or name the size: {name}_<size>"
                ) from None
        if not math.isclose(sum(self.text_split), 1.0, abs_tol=1e-9):
            raise ValueError(f"text_split fractions must sum to 1, got {list(self.text_split)}")
        return self

    def prepared_name(self, name: str) -> str | None:
        """The entry of ``datasets`` that prepares the same variant as ``name``, or ``None``.

        ``mnist_8`` and ``mnist`` (with ``image_size: 8``) are one variant, written once as
        ``data/prepared/mnist.npz``; tasks name their data with explicit sizes and find it here.
        """
        from components.data import parse_variant  # noqa: PLC0415

        want = parse_variant(name, image_size=self.image_size)
        for entry in self.datasets:
            got = parse_variant(entry, image_size=self.image_size)
            if (got.dataset, got.image_size, got.grayscale) == (want.dataset, want.image_size, want.grayscale):
                return entry
        return None

    def require(self, name: str, where: str) -> str:
        """:meth:`prepared_name`, or a ValueError that says what to add to ``data.datasets``."""
        entry = self.prepared_name(name)
        if entry is None:
            raise ValueError(
                f"{where} needs prepared dataset {name!r}, which data.datasets does not prepare"
                f" ({list(self.datasets)}): add {name!r} to data.datasets"
            )
        return entry


class TaskFamilyParams(_Section):
    """The meta-training distribution: image MLPs on prepared image datasets of one shape.

    ``preset: celo`` is Celo's recipe (``components.tasks.celo_family``): 8x8 grayscale MNIST,
    Fashion-MNIST, CIFAR-10 and UCI digits (in place of SVHN), one hidden layer of 32 ReLU units,
    batch 64, global weight re-parametrisation ``s ~ logU[1e-3, 1e3]``. It fixes every other field.
    """

    preset: Literal["celo"] | None = Field(default=None, description="celo: Celo's four-task recipe (fixes the rest)")
    datasets: list[PreparedName] = Field(
        default=["mnist", "fashion_mnist"],
        min_length=1,
        description="prepared image datasets of one shape (each must be in data.datasets, by variant)",
    )
    hidden_sizes: list[PositiveInt] = Field(default=[32], min_length=1)
    batch_size: PositiveInt = 128
    param_scale_range: tuple[PositiveFloat, PositiveFloat] = Field(
        default=(1.0, 1.0),
        description="global weight-reparametrisation scale ~ logU[lo, hi] (1, 1 = no augmentation)",
    )
    task: EvalTaskName | None = Field(
        default=None,
        description="meta-train on this one suite task (STAR, L3RS) instead of an image-MLP family;"
        " fine-tuning tasks start from the pretrain stage's model",
    )
    estimator_per_dataset: bool = Field(
        default=False,
        description="one estimator (num_tasks tasks) per dataset, meta-gradients averaged (Celo's recipe)",
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, values):
        if isinstance(values, dict) and values.get("preset") == "celo":
            from components.tasks.families import (  # noqa: PLC0415
                CELO_BATCH_SIZE,
                CELO_DATASETS,
                CELO_HIDDEN,
                CELO_PARAM_SCALE_RANGE,
            )

            fixed = {
                "datasets": list(CELO_DATASETS),
                "hidden_sizes": list(CELO_HIDDEN),
                "batch_size": CELO_BATCH_SIZE,
                "param_scale_range": tuple(CELO_PARAM_SCALE_RANGE),
            }
            clash = sorted(k for k in fixed if k in values and _norm(values[k]) != _norm(fixed[k]))
            if clash:
                raise ValueError(
                    f"task_family.preset celo fixes {clash}: remove them, or drop the preset to set them yourself"
                )
            values = {**values, **fixed}
        return values

    @model_validator(mode="after")
    def _range(self):
        from components.tasks.spec import dataset_info  # noqa: PLC0415

        if self.task is not None:
            fixed = sorted(
                f
                for f in ("preset", "datasets", "hidden_sizes", "batch_size", "param_scale_range")
                if f in self.model_fields_set
            )
            if fixed:
                raise ValueError(
                    f"task_family.task {self.task!r} fixes the model and data: remove {fixed}, or drop task"
                )
            if self.estimator_per_dataset:
                raise ValueError("task_family.task is one task: estimator_per_dataset needs a family of datasets")
        lo, hi = self.param_scale_range
        if lo > hi:
            raise ValueError(f"param_scale_range must be [low, high] with low <= high, got {[lo, hi]}")
        for d in self.datasets:
            kind = dataset_info(d, image_size=1).kind
            if kind != "image":
                raise ValueError(f"task_family.datasets: {d!r} is a {kind} dataset; the family holds image MLPs only")
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"task_family.datasets must be unique, got {self.datasets}")
        return self


def _norm(value):
    """Lists and tuples compare alike; numbers compare as floats (YAML writes 64 and 64.0 alike)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _check_optimizer(name: str, hyperparams: dict, kind: str, where: str) -> None:
    """Validates an optimizer name of the wanted kind and its hyperparameter names (and values)."""
    from components.optimizers import registry  # noqa: PLC0415 - keeps `import params` light

    try:
        actual = registry.kind_of(name)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if actual != kind:
        names = registry.available()["learned" if kind == "learned" else "baselines"]
        raise ValueError(f"{where}: {name!r} is a {actual}, expected a {kind} optimizer: one of {names}")
    if kind == "learned":
        try:
            registry.create_learned(name, **hyperparams)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}_hyperparams for {name!r}: {err}") from None


class MetaTrainPhase(_Section):
    """One phase of meta-training: optimizer hyperparameters merged over ``meta_train.lopt_hyperparams``."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    lopt_hyperparams: dict[str, Any] = Field(default_factory=dict, description="e.g. {train_phase: 2}")
    num_outer_steps: PositiveInt | None = Field(default=None, description="unset: meta_train.num_outer_steps")


class MetaTrainParams(_Section):
    """meta_train: the learned optimizer and its truncated-PES meta-training."""

    lopt: str = Field(
        default="small_fc_lopt",
        description="learned optimizer to meta-train: a name of components.optimizers.available()['learned']",
    )
    lopt_hyperparams: dict[str, Any] = Field(
        default_factory=dict, description="its architecture hyperparameters, e.g. {hidden_size: 4} (defaults otherwise)"
    )
    task_family: TaskFamilyParams = TaskFamilyParams()
    num_outer_steps: PositiveInt = 1000
    num_tasks: PositiveInt = Field(default=8, description="inner problems vmapped per outer step")
    trunc_length: PositiveInt = Field(default=20, description="inner steps per PES truncation")
    min_unroll: PositiveInt = Field(default=200, description="shortest inner-problem length")
    max_unroll: PositiveInt = Field(default=1000, description="longest inner-problem length")
    sigma: PositiveFloat = Field(default=0.01, description="PES perturbation std")
    outer_lr: PositiveFloat = 1e-3
    outer_lr_schedule: Literal["constant", "cosine"] = Field(
        default="cosine", description="cosine decays the outer LR to 10% by the last outer step"
    )
    outer_weight_decay: float = Field(default=0.0, ge=0.0)
    grad_clip: PositiveFloat = Field(default=3.0, description="clip meta-gradient by value")
    log_every: PositiveInt = 50
    registered_name: str = Field(default="small_fc_lopt", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    estimator: Literal["pes", "es", "tbptt"] = Field(
        default="pes", description="meta-gradient: truncated PES, full antithetic ES, or truncated backprop"
    )
    es_loss_type: Literal["avg", "min", "last", "last_recompute"] = Field(
        default="avg", description="es: which loss of the unroll is the objective"
    )
    es_recompute_samples: PositiveInt = Field(default=50, description="es last_recompute: fresh batches at the end")
    sign_delta_loss: PositiveFloat | None = Field(
        default=None, description="es: replace the antithetic loss difference by sign(ΔL) x this"
    )
    steps_per_call: PositiveInt = Field(
        default=1, description="outer steps per compiled call (lax.scan); must divide log_every and checkpoint_every"
    )
    checkpoint_every: PositiveInt | None = Field(
        default=None, description="write the loop state every N outer steps (checkpoints/meta_train; l2o run --resume)"
    )
    shard_population: bool = Field(default=True, description="split the tasks over all local devices")
    phases: list[MetaTrainPhase] = Field(
        default_factory=list,
        description="run in order, each from the previous phase's meta-params (Celo: phase 1 MLP, phase 2 scheduler)",
    )

    def phase_list(self) -> list["MetaTrainPhase"]:
        """The phases to run: ``phases``, or one phase of the top-level settings."""
        return list(self.phases) or [MetaTrainPhase(name="main")]

    def phase_hyperparams(self, phase: "MetaTrainPhase") -> dict[str, Any]:
        return {**self.lopt_hyperparams, **phase.lopt_hyperparams}

    def phase_steps(self, phase: "MetaTrainPhase") -> int:
        return phase.num_outer_steps or self.num_outer_steps

    @model_validator(mode="after")
    def _lengths(self):
        _check_optimizer(self.lopt, self.lopt_hyperparams, "learned", "meta_train.lopt")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"meta_train.phases need distinct names, got {names}")
        for p in self.phases:
            _check_optimizer(self.lopt, self.phase_hyperparams(p), "learned", f"meta_train.phases[{p.name}].lopt")
        for name in ("log_every", "checkpoint_every"):
            every = getattr(self, name)
            if every is not None and every % self.steps_per_call:
                raise ValueError(
                    f"meta_train.{name} ({every}) must be a multiple of steps_per_call ({self.steps_per_call})"
                )
        if self.min_unroll > self.max_unroll:
            raise ValueError(f"min_unroll ({self.min_unroll}) must be <= max_unroll ({self.max_unroll})")
        if self.estimator != "es" and self.trunc_length > self.min_unroll:
            raise ValueError(
                f"trunc_length ({self.trunc_length}) must be <= min_unroll ({self.min_unroll}):"
                " a truncation may contain at most one reset"
            )
        return self


class LogGrid(_Section):
    """A log-spaced grid ``num`` points from ``min`` to ``max`` (inclusive)."""

    min: PositiveFloat
    max: PositiveFloat
    num: PositiveInt

    @model_validator(mode="after")
    def _order(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        if self.num == 1 and self.min != self.max:
            raise ValueError("num=1 needs min == max")
        return self

    def values(self) -> list[float]:
        if self.num == 1:
            return [float(self.min)]
        lo, hi = math.log10(self.min), math.log10(self.max)
        return [10 ** (lo + (hi - lo) * i / (self.num - 1)) for i in range(self.num)]


class CalibrateParams(_Section):
    """calibrate: the LGL2O loss guard and the sweep that picks the guard's learning rate."""

    guard: str = Field(default="adam", description="hand-designed guard: a name of available()['baselines']")
    loss_batch: Literal["same", "fresh"] = Field(
        default="same",
        description="LGL2O compares the two candidates' losses on the training batch or on an independent batch",
    )
    lr_grid: LogGrid = LogGrid(min=1e-4, max=1e-2, num=5)
    num_steps: PositiveInt = 300
    num_tasks: PositiveInt = Field(default=4, description="meta-training tasks sampled for the sweep")

    @model_validator(mode="after")
    def _guard(self):
        _check_optimizer(self.guard, {}, "baseline", "calibrate.guard")
        return self


class RunnerParams(_Section):
    """Where evaluation's Prefect tasks run (one task per evaluation task).

    ``threads`` (default): Prefect's thread pool in the pipeline process (XLA releases the GIL);
    ``dask``: a Dask cluster through ``prefect-dask`` -- a ``LocalCluster`` of ``n_workers``
    processes started for the stage, or, with ``address``, an existing scheduler
    (``tcp://host:8786``) whose workers can import this project and read its files.
    """

    kind: Literal["threads", "dask"] = "threads"
    max_workers: PositiveInt | None = Field(
        default=None, description="threads: tasks evaluated at once (unset: Prefect's default)"
    )
    n_workers: PositiveInt = Field(default=2, description="dask LocalCluster: worker processes")
    threads_per_worker: PositiveInt = Field(default=1, description="dask LocalCluster: threads per worker")
    address: str | None = Field(default=None, description="dask: an existing scheduler's address (unset: LocalCluster)")

    @model_validator(mode="after")
    def _checks(self):
        if self.address is not None and self.kind != "dask":
            raise ValueError(f"runner.address ({self.address!r}) needs kind: dask (it is a Dask scheduler address)")
        if self.address is not None and "://" not in self.address:
            raise ValueError(
                f"runner.address {self.address!r} is not a scheduler address: give e.g. tcp://127.0.0.1:8786"
            )
        return self


class EvaluateParams(_Section):
    """evaluate: held-out tasks, the hand-designed baselines, seeds, horizons, and the fan-out.

    ``tasks`` are registered task names (``components.tasks.suite``; ``l2o tasks --suite heldout``
    lists them); ``suite: heldout`` stands for all of that suite's tasks (then leave ``tasks`` out).
    ``num_steps`` / ``batch_size`` left unset mean each task's own horizon and batch size.
    Every baseline's learning rate is tuned per task over ``lr_grid`` on a validation split carved
    from the training data (``validation_fraction``); the learned and safeguarded optimizers run
    untuned. ``horizon_multiplier`` k > 1 also runs the learned family and tuned Adam for k times
    each task's horizon, for the stability table; Adam's grid runs ``adam_horizon_multiplier`` x the
    horizon so that speedups above 1 are measurable.
    """

    suite: SuiteName | None = Field(default=None, description="a named suite; sets tasks to its tasks")
    tasks: list[EvalTaskName] = Field(default=["digits_mlp", "mnist_mlp_deep", "fashion_mnist_conv"], min_length=1)
    baselines: list[str] = Field(
        default=["adam", "sgdm"],
        min_length=1,
        description="hand-designed optimizers (names of `l2o optimizers`), each LR-tuned per task; must include adam",
    )
    methods: list[Literal["learned", "hub", "hub_inverted", "lgl2o", "gl2o"]] = Field(
        default=["learned", "hub", "hub_inverted", "lgl2o", "gl2o"],
        min_length=1,
        description="the seed papers' methods built from the trained learned optimizer (untuned): the learned"
        " optimizer alone, HUB and inverted HUB, LGL2O and GL2O with the calibrated guard; must include learned",
    )
    num_steps: PositiveInt | None = Field(default=None, description="training steps of every task (unset: its own)")
    horizon_multiplier: PositiveInt = Field(
        default=1, description="k: also train k x each task's horizon (1: no long-horizon runs)"
    )
    adam_horizon_multiplier: PositiveInt = Field(
        default=4,
        description="m: Adam's LR grid (the speedup normaliser) trains m x each task's horizon, so speedups up to m"
        " are measurable (VeLO uses 10); at least horizon_multiplier is used",
    )
    num_seeds: PositiveInt = 3
    batch_size: PositiveInt | None = Field(default=None, description="minibatch size of every task (unset: its own)")
    eval_every: PositiveInt = 50
    eval_examples: PositiveInt = Field(
        default=2000, description="train/test examples (first N of each split) scored at each evaluation point"
    )
    validation_fraction: float = Field(
        default=0.1,
        gt=0.0,
        lt=0.5,
        description="share of each task's training data held out to tune the baselines (at most eval_examples)",
    )
    lr_grid: LogGrid = Field(
        default=LogGrid(min=1e-5, max=1.0, num=11), description="baselines' learning rates (default: half-decades)"
    )
    smoothing: float = Field(default=0.95, ge=0.0, lt=1.0, description="EMA for the speedup metric")
    bootstrap_samples: PositiveInt = Field(default=2000, description="stratified bootstrap resamples for the CIs")
    runner: RunnerParams = RunnerParams()

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, values):
        if isinstance(values, dict) and "adam_lr_grid" in values:
            raise ValueError(
                "evaluate.adam_lr_grid is now evaluate.lr_grid (every baseline in evaluate.baselines is tuned"
                " over it): rename the key"
            )
        return values

    @model_validator(mode="before")
    @classmethod
    def _expand_suite(cls, values):
        if isinstance(values, dict) and values.get("suite") is not None:
            from components.tasks.suite import SUITES  # noqa: PLC0415

            if values["suite"] not in SUITES:  # the field validator says what is wrong
                return values
            tasks = list(SUITES[values["suite"]])
            # a resolved params.yaml holds both, equal; anything else is ambiguous
            if "tasks" in values and list(values["tasks"]) != tasks:
                raise ValueError(
                    f"evaluate: give either suite ({values['suite']!r}) or tasks, not both"
                    " (a suite stands for its tasks; list tasks to pick a subset)"
                )
            values = {**values, "tasks": tasks}
        return values

    @model_validator(mode="after")
    def _checks(self):
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be unique, got {self.tasks}")
        from components.optimizers.baselines import BASELINES  # noqa: PLC0415

        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}: choose from {sorted(BASELINES)} (`l2o optimizers`)")
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"baselines must be unique, got {self.baselines}")
        if "learned" not in self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(
                f"methods {self.methods} must be unique and include learned: every other method is built from it"
            )
        if "adam" not in self.baselines:
            raise ValueError(
                f"baselines {self.baselines} must include adam: speedups and final-loss ratios are measured"
                " against tuned Adam"
            )
        for name in self.tasks:
            steps = self.steps_of(name)
            if steps % self.eval_every:
                raise ValueError(
                    f"task {name!r} trains {steps} steps, not a multiple of eval_every ({self.eval_every}):"
                    " change eval_every (or num_steps)"
                )
        return self

    def steps_of(self, name: str) -> int:
        """Training steps of task ``name``: ``num_steps`` if set, else the task's default horizon."""
        from components.tasks.suite import get_spec  # noqa: PLC0415

        return self.num_steps or get_spec(name).num_steps

    def batch_size_of(self, name: str) -> int:
        """Minibatch size of task ``name``: ``batch_size`` if set, else the task's own."""
        from components.tasks.suite import get_spec  # noqa: PLC0415

        return self.batch_size or get_spec(name).batch_size


class PretrainParams(_Section):
    """pretrain: the starting points of fine-tuning tasks (Adam on their source data, as each task says)."""

    num_steps: PositiveInt | None = Field(
        default=None, description="pre-training steps of every fine-tuning task (unset: each task's own)"
    )


class ReportParams(_Section):
    """report: the HTML report."""

    title: str = "l2o-pipeline report"


class PipelineParams(_Section):
    """A whole experiment."""

    seed: NonNegativeInt = 0
    experiment_name: str = Field(default="l2o-pipeline", min_length=1, description="MLflow experiment")
    data: DataParams = DataParams()
    meta_train: MetaTrainParams = MetaTrainParams()
    pretrain: PretrainParams = PretrainParams()
    calibrate: CalibrateParams = CalibrateParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()

    @model_validator(mode="after")
    def _datasets_prepared(self):
        from components.tasks.spec import dataset_info  # noqa: PLC0415
        from components.tasks.suite import get_spec  # noqa: PLC0415

        data = self.data
        shapes = {}
        one = self.meta_train.task_family.task
        if one is not None:
            spec = get_spec(one)
            if spec.dataset:
                data.require(spec.dataset, f"meta_train.task_family.task {one!r}")
            if spec.pretrain is not None:
                data.require(spec.pretrain.dataset, f"meta_train.task_family.task {one!r} (pre-training)")
        for d in [] if one is not None else self.meta_train.task_family.datasets:
            entry = data.require(d, "meta_train.task_family")
            shapes[d] = dataset_info(entry, image_size=data.image_size).example_shape
        if len(set(shapes.values())) > 1:
            raise ValueError(
                f"meta_train.task_family.datasets must share one image shape, got {shapes}: name them with"
                " one size, e.g. mnist_8, cifar10_jpeg_gray_8"
            )
        for name in self.evaluate.tasks:
            spec = get_spec(name)
            if spec.dataset:
                data.require(spec.dataset, f"evaluate task {name!r}")
            if spec.pretrain is not None:
                data.require(spec.pretrain.dataset, f"evaluate task {name!r} (pre-training)")
        return self


def params_hash(params: PipelineParams) -> str:
    """A short, stable hash of the resolved params (canonical JSON)."""
    import hashlib  # noqa: PLC0415
    import json  # noqa: PLC0415

    blob = json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
