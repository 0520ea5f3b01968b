"""The params sections of the stages after meta-training: calibrate and evaluate (with its runner)."""

from typing import Literal

from pydantic import Field, PositiveInt, model_serializer, model_validator

from components.stages.params.common import EvalTaskName, LogGrid, SuiteName, _check_optimizer, _Section

__all__ = ["CalibrateParams", "RunnerParams", "EvaluateParams"]


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
    zoo: list[str] = Field(
        default=[],
        description="zoo entries (models/zoo/<name>, `l2o zoo`) evaluated beside the freshly trained optimizer,"
        " untuned and not re-trained, each alone, in HUB and under LGL2O (those of `methods`); empty: none",
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

    @model_serializer(mode="wrap")
    def _omit_empty_zoo(self, handler):
        # an empty zoo is left out of dumps, so params.yaml, params hashes and every output recording them stay
        # exactly what they were before the zoo existed (the committed default experiment is byte-identical)
        data = handler(self)
        if not self.zoo:
            data.pop("zoo", None)
        return data

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
        from components.optimizers.zoo import check_name  # noqa: PLC0415

        for entry in self.zoo:
            check_name(entry)
        if len(set(self.zoo)) != len(self.zoo):
            raise ValueError(f"zoo entries must be unique, got {self.zoo}")
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
