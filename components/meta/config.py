"""Meta-training settings, declared once: every field with its default, its bound and its description.

:class:`MetaTrainConfig` is the one declaration. The library validates it on construction; the
``meta_train`` section of the params files (:mod:`components.stages.params`) is built from its fields
(names, types, defaults, bounds and descriptions), so the pipeline and the library cannot disagree.
The estimators take their defaults from it too.

:func:`load_preset` reads the ``meta_train`` section of a params file (``params/*.yaml``) into these
configs without pydantic, for a bare GPU worker or a benchmark. It checks the settings only (names,
types, bounds); the full validation of an experiment is the params models'.
"""

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

__all__ = ["DEFAULT_LOPT", "MetaTrainConfig", "MetaTrainPhase", "MetaTrainPreset", "load_preset", "setting"]

DEFAULT_LOPT = "small_fc_lopt"
"""The learned optimizer meta-trained when a params file names none."""

# keys of a params file's meta_train section that are not MetaTrainConfig settings
_PRESET_KEYS = ("lopt", "lopt_hyperparams", "task_family", "registered_name", "phases")


def setting(default: Any, description: str | None = None, *, gt: float | None = None, ge: float | None = None):
    """A :class:`MetaTrainConfig` field: its default, description and bound (``> gt`` / ``>= ge``)."""
    return dataclasses.field(default=default, metadata={"description": description, "gt": gt, "ge": ge})


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    """The meta-training loop and its estimator (:func:`components.meta.meta_train`).

    Raises:
      ValueError: a value out of its bound or choices (the message names the field), or
        ``log_every`` / ``checkpoint_every`` not a multiple of ``steps_per_call``.
    """

    num_outer_steps: int = setting(1000, gt=0)
    num_tasks: int = setting(8, "inner problems vmapped per outer step", gt=0)  # per family (estimator)
    trunc_length: int = setting(20, "inner steps per PES truncation", gt=0)
    min_unroll: int = setting(200, "shortest inner-problem length", gt=0)
    max_unroll: int = setting(1000, "longest inner-problem length", gt=0)
    sigma: float = setting(0.01, "PES perturbation std", gt=0)
    outer_lr: float = setting(1e-3, gt=0)
    outer_lr_schedule: Literal["constant", "cosine"] = setting(
        "cosine", "cosine decays the outer LR to 10% by the last outer step"
    )
    outer_weight_decay: float = setting(0.0, ge=0.0)
    grad_clip: float = setting(3.0, "clip meta-gradient by value", gt=0)
    grad_clip_norm: float | None = setting(
        None, "then rescale the meta-gradient to at most this global norm (none: no norm clipping)", gt=0
    )
    log_every: int = setting(50, gt=0)
    estimator: Literal["pes", "es", "tbptt"] = setting(
        "pes", "meta-gradient: truncated PES, full antithetic ES, or truncated backprop"
    )
    es_loss_type: Literal["avg", "min", "last", "last_recompute"] = setting(
        "avg", "es: which loss of the unroll is the objective"
    )
    es_recompute_samples: int = setting(50, "es last_recompute: fresh batches at the end", gt=0)
    sign_delta_loss: float | None = setting(None, "es: replace the antithetic loss difference by sign(ΔL) x this", gt=0)
    steps_per_call: int = setting(
        1, "outer steps per compiled call (lax.scan); must divide log_every and checkpoint_every", gt=0
    )
    checkpoint_every: int | None = setting(
        None, "write the loop state every N outer steps (checkpoints/meta_train; l2o run --resume)", gt=0
    )
    shard_population: bool = setting(True, "split the tasks over all local devices")

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
            if choices and value not in choices:
                raise ValueError(f"MetaTrainConfig.{f.name} must be one of {list(choices)}, got {value!r}")
            if value is not None and meta["gt"] is not None and not value > meta["gt"]:
                raise ValueError(f"MetaTrainConfig.{f.name} must be > {meta['gt']}, got {value!r}")
            if value is not None and meta["ge"] is not None and not value >= meta["ge"]:
                raise ValueError(f"MetaTrainConfig.{f.name} must be >= {meta['ge']}, got {value!r}")
        for name in ("log_every", "checkpoint_every"):
            every = getattr(self, name)
            if every is not None and every % self.steps_per_call:
                raise ValueError(f"{name} ({every}) must be a multiple of steps_per_call ({self.steps_per_call})")


@dataclasses.dataclass(frozen=True)
class MetaTrainPhase:
    """One phase of a preset: its name, the learned optimizer's hyperparameters and its config."""

    name: str
    lopt_hyperparams: dict
    config: MetaTrainConfig


@dataclasses.dataclass(frozen=True)
class MetaTrainPreset:
    """The ``meta_train`` section of a params file: the learned optimizer, its task family (the raw
    mapping, as written) and the phases to run in order (one ``main`` phase when none are listed)."""

    lopt: str
    lopt_hyperparams: dict
    task_family: dict
    phases: tuple[MetaTrainPhase, ...]
    seed: int = 0


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """A YAML value as the field's type (PyYAML reads ``1e-3`` as a string, ``64.0`` as a float)."""
    kinds = {t for t in typing.get_args(hint) if t is not type(None)} or {hint}
    try:
        if value is None or kinds & {bool, str} or typing.get_origin(hint) is Literal:
            return value
        if float in kinds and not isinstance(value, bool):
            return float(value)
        if int in kinds and not isinstance(value, bool) and float(value) == int(value):
            return int(value)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"meta_train.{name}: expected {hint}, got {value!r}")


def load_preset(path: str | Path) -> MetaTrainPreset:
    """The ``seed`` and ``meta_train`` section of the params file ``path`` as library configs.

    Settings left out take :class:`MetaTrainConfig`'s defaults; each phase's ``num_outer_steps``
    overrides the section's and its ``lopt_hyperparams`` are merged over the section's.

    Raises:
      ValueError: an unknown key in ``meta_train`` (the message lists the known ones) or a value of
        the wrong type or out of its bound.
    """
    import yaml  # noqa: PLC0415 - only the preset loader reads YAML

    doc = yaml.safe_load(Path(path).read_text()) or {}
    section = dict(doc.get("meta_train") or {})
    hints = typing.get_type_hints(MetaTrainConfig)
    unknown = sorted(set(section) - set(hints) - set(_PRESET_KEYS))
    if unknown:
        raise ValueError(
            f"{path}: unknown meta_train keys {unknown}: use settings of MetaTrainConfig"
            f" ({sorted(hints)}) or {list(_PRESET_KEYS)}"
        )
    settings = {k: _coerce(k, v, hints[k]) for k, v in section.items() if k in hints}
    hyper = dict(section.get("lopt_hyperparams") or {})
    phases = section.get("phases") or [{"name": "main"}]
    return MetaTrainPreset(
        lopt=section.get("lopt", DEFAULT_LOPT),
        lopt_hyperparams=hyper,
        task_family=dict(section.get("task_family") or {}),
        phases=tuple(
            MetaTrainPhase(
                name=p["name"],
                lopt_hyperparams={**hyper, **(p.get("lopt_hyperparams") or {})},
                config=MetaTrainConfig(
                    **{**settings, **({"num_outer_steps": p["num_outer_steps"]} if p.get("num_outer_steps") else {})}
                ),
            )
            for p in phases
        ),
        seed=int(doc.get("seed", 0)),
    )
