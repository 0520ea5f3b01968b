"""Every optimizer by name: ``create(name, **hyperparams)`` and the spec format used in params files.

Two public ways to build, one per thing built:

* ``create(name, **hyperparams)`` — an optax transformation, for every kind of name (what a training
  loop, the evaluation and a params file's spec need);
* ``create_learned(name, **hyperparams)`` — the learned optimizer *object* (``init_meta_params``,
  ``make``, ``config``), which meta-training needs because it draws, perturbs and differentiates θ and
  calls ``make`` itself. It is a separate, clearly named function rather than a mode of ``create``
  (e.g. "no ``num_steps`` → the object"), so that a call's return type never depends on which
  keywords it got, and a forgotten ``num_steps`` stays an error instead of silently returning an
  object a training loop cannot use.

A trained learned optimizer is loaded with :func:`.checkpoint.load` (``components.optimizers.load``).

Three kinds of names (``available()`` lists them):

* **baselines** — hand-designed optax optimizers (``adam``, ``lion``, …):
  ``create("adam", learning_rate=1e-3, b1=0.9)``.
* **learned** — learned optimizers (``small_fc_lopt``, ``celo``, …), from fresh meta-params drawn with
  ``key`` (default ``jax.random.key(0)``) or from given ``meta_params``; ``num_steps`` (the length of
  the run, used by the loss-buffer and progress features) is required; every other keyword is an
  architecture hyperparameter: ``create("celo", num_steps=1000, key=jax.random.key(1))``.
  ``create_learned(name, **hyperparams)`` returns the learned optimizer object itself (with
  ``init_meta_params`` / ``make``), which is what meta-training needs.
* **wrappers** — hybrids and safeguards around inner optimizers (``hub``, ``lgl2o``, ``gl2o``). Their
  inner optimizers may be optax transformations, names, or *specs*: a dict ``{"name": ..., **hyperparams}``
  (exactly what a params YAML holds). ``num_steps`` and ``key`` given to the wrapper are passed down to
  the learned inner optimizers that do not set their own::

      create("lgl2o", learned={"name": "celo"}, guard={"name": "adam", "learning_rate": 1e-3},
             num_steps=1000)

An unknown name is a ``ValueError`` that lists the known names; an unknown hyperparameter is a
``ValueError`` naming the accepted ones. Modules are imported on first use, so importing this package
stays cheap.

Example:
  >>> import jax.numpy as jnp
  >>> opt = create("adam", learning_rate=1e-3)
  >>> params = {"w": jnp.ones(3)}
  >>> updates, state = opt.update({"w": jnp.ones(3)}, opt.init(params), params, loss=jnp.float32(1.0))
"""

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from components.optimizers import baselines

__all__ = [
    "LEARNED",
    "WRAPPERS",
    "available",
    "create",
    "create_learned",
    "kind_of",
    "spec_hyperparameters",
]

LEARNED: dict[str, tuple[str, str]] = {
    "mlp_lopt": ("components.optimizers.mlp_lopt", "MLPLOpt"),
    "adafac_mlp_lopt": ("components.optimizers.small_fc_lopt", "SmallFcLOpt"),
    "small_fc_lopt": ("components.optimizers.small_fc_lopt", "SmallFcLOpt"),
    "mup_small_fc_lopt": ("components.optimizers.mup", "MuSmallFcLOpt"),
    "star": ("components.optimizers.star", "STAR"),
    "celo": ("components.optimizers.celo", "Celo"),
    "celo_adam": ("components.optimizers.celo_adam", "CeloAdam"),
    "celo2": ("components.optimizers.celo2", "Celo2"),
    "velo": ("components.optimizers.velo", "VeLO"),
    "l3rs": ("components.optimizers.l3rs", "L3RS"),
}
"""Learned optimizers: name -> (module, class). ``adafac_mlp_lopt`` and ``small_fc_lopt`` are one class.

Adding a learned optimizer = its module (a :class:`.per_parameter.PerParameterLOpt` subclass for a
per-parameter one) + one line here; checkpoints record the name and rebuild through this table."""

WRAPPERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "hub": ("components.optimizers.hub", "hub", ("learned", "hand")),
    "lgl2o": ("components.optimizers.guards", "guard_with_loss", ("learned", "guard")),
    "gl2o": ("components.optimizers.gl2o", "guard_with_fixed_point", ("learned", "fallback")),
}
"""Hybrids and safeguards: name -> (module, factory, names of the inner-optimizer arguments)."""


def _import(module: str, attr: str) -> Any:
    return getattr(importlib.import_module(module), attr)


def available() -> dict[str, list[str]]:
    """Known names by kind: ``{"baselines": [...], "learned": [...], "wrappers": [...]}``."""
    return {
        "baselines": sorted(baselines.BASELINES),
        "learned": sorted(LEARNED),
        "wrappers": sorted(WRAPPERS),
    }


def kind_of(name: str) -> str:
    """``"baseline"``, ``"learned"`` or ``"wrapper"``.

    Raises:
      ValueError: for an unknown name (the message lists every known name by kind).
    """
    if isinstance(name, str):
        if name in baselines.BASELINES:
            return "baseline"
        if name in LEARNED:
            return "learned"
        if name in WRAPPERS:
            return "wrapper"
    known = available()
    raise ValueError(
        f"Unknown optimizer {name!r}. Known names — baselines: {known['baselines']}; "
        f"learned: {known['learned']}; wrappers: {known['wrappers']}."
    )


def _learned_class(name: str) -> type:
    """The class of the learned optimizer ``name``."""
    if kind_of(name) != "learned":
        raise ValueError(f"{name!r} is a {kind_of(name)}, not a learned optimizer; learned ones: {sorted(LEARNED)}.")
    return _import(*LEARNED[name])


def _accepted(cls) -> list[str]:
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if f.init]
    return [p for p in inspect.signature(cls).parameters if p != "self"]


def create_learned(name: str, **hyperparams) -> Any:
    """The learned optimizer object ``name`` built with ``hyperparams`` (architecture settings).

    This is what meta-training needs (``init_meta_params``, ``make``; see the module docstring for
    why it is not a mode of :func:`create`). ``create_learned(name, **hp).make(theta, num_steps=T)``
    equals ``create(name, meta_params=theta, num_steps=T, **hp)``.

    Raises:
      ValueError: for an unknown name or a hyperparameter the architecture does not have.
    """
    cls = _learned_class(name)
    unknown = sorted(set(hyperparams) - set(_accepted(cls)))
    if unknown:
        raise ValueError(
            f"Learned optimizer {name!r} has no hyperparameter(s) {unknown}; accepted: {sorted(_accepted(cls))}."
        )
    return cls(**hyperparams)


def spec_hyperparameters(name: str) -> list[str]:
    """The keyword arguments ``create(name, ...)`` accepts (for validating params files)."""
    kind = kind_of(name)
    if kind == "baseline":
        return sorted([*baselines.baseline_hyperparameters(name), "learning_rate"])
    if kind == "learned":
        return sorted([*_accepted(_learned_class(name)), "num_steps", "key", "meta_params"])
    module, factory, inner = WRAPPERS[name]
    params = inspect.signature(_import(module, factory)).parameters
    return sorted({*params, *inner, "num_steps", "key"})


def _is_transformation(obj) -> bool:
    return isinstance(obj, optax.GradientTransformation | optax.GradientTransformationExtraArgs)


def _resolve_inner(arg_name: str, value, *, num_steps, key) -> optax.GradientTransformationExtraArgs:
    """An inner optimizer given as a transformation, a name or a spec dict."""
    if _is_transformation(value):
        return optax.with_extra_args_support(value)
    if isinstance(value, str):
        spec: dict = {"name": value}
    elif isinstance(value, Mapping):
        spec = dict(value)
    else:
        raise TypeError(
            f"{arg_name} must be an optax transformation, an optimizer name or a spec dict "
            f"{{'name': ..., **hyperparams}}, got {type(value).__name__}."
        )
    if "name" not in spec:
        raise ValueError(f"{arg_name}: a spec dict needs a 'name' key, got keys {sorted(spec)}.")
    name = spec.pop("name")
    if kind_of(name) in ("learned", "wrapper"):
        if num_steps is not None:
            spec.setdefault("num_steps", num_steps)
        if key is not None:
            spec.setdefault("key", key)
    return create(name, **spec)


def create(name: str, **hyperparams) -> optax.GradientTransformationExtraArgs:
    """Builds the optimizer ``name`` (see the module docstring for the three kinds).

    Args:
      name: a baseline, learned or wrapper name (``available()``).
      **hyperparams: for baselines ``learning_rate`` (required) and their other hyperparameters; for
        learned optimizers ``num_steps`` (required), ``key`` or ``meta_params``, and architecture
        hyperparameters; for wrappers their inner optimizers (transformations, names or spec dicts)
        and settings, plus ``num_steps`` / ``key`` handed to learned inner optimizers.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError: unknown name or hyperparameter, or a missing required one.
    """
    kind = kind_of(name)
    if kind == "baseline":
        if "learning_rate" not in hyperparams:
            raise ValueError(
                f"create({name!r}) needs learning_rate=..., e.g. create({name!r}, learning_rate=1e-3); "
                f"other hyperparameters: {sorted(baselines.baseline_hyperparameters(name))}."
            )
        hp = dict(hyperparams)
        learning_rate = hp.pop("learning_rate")
        accepted = baselines.baseline_hyperparameters(name)
        unknown = sorted(set(hp) - set(accepted))
        if unknown:
            raise ValueError(
                f"Baseline optimizer {name!r} has no hyperparameter(s) {unknown}; accepted: "
                f"{sorted(accepted)} (plus learning_rate)."
            )
        return baselines.BASELINES[name](learning_rate, **hp)
    if kind == "learned":
        hp = dict(hyperparams)
        num_steps = hp.pop("num_steps", None)
        if num_steps is None:
            raise ValueError(
                f"create({name!r}) needs num_steps= (the length of the training run), "
                f"e.g. create({name!r}, num_steps=1000)."
            )
        key = hp.pop("key", None)
        meta_params = hp.pop("meta_params", None)
        if key is not None and meta_params is not None:
            raise ValueError(f"create({name!r}): pass either key= (fresh meta-params) or meta_params=, not both.")
        lopt = create_learned(name, **hp)
        if meta_params is None:
            meta_params = lopt.init_meta_params(jax.random.key(0) if key is None else key)
        return lopt.make(meta_params, num_steps=num_steps)
    module, factory_name, inner_args = WRAPPERS[name]
    factory: Callable = _import(module, factory_name)
    hp = dict(hyperparams)
    num_steps = hp.pop("num_steps", None)
    key = hp.pop("key", None)
    accepted = set(inspect.signature(factory).parameters)
    unknown = sorted(set(hp) - accepted)
    if unknown:
        raise ValueError(f"Wrapper {name!r} has no argument(s) {unknown}; accepted: {sorted(accepted)}.")
    missing = [a for a in inner_args if a not in hp]
    if missing:
        raise ValueError(
            f"create({name!r}) needs its inner optimizers {list(inner_args)}; missing {missing}. "
            f"Pass transformations, names or spec dicts, e.g. {inner_args[0]}={{'name': 'small_fc_lopt'}}."
        )
    keys = list(jax.random.split(key, len(inner_args))) if key is not None else [None] * len(inner_args)
    for arg, k in zip(inner_args, keys, strict=True):
        hp[arg] = _resolve_inner(arg, hp[arg], num_steps=num_steps, key=k)
    return optax.with_extra_args_support(factory(**hp))
