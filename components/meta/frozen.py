"""Frozen subsets of meta-parameters and meta-level regularisers declared by learned optimizers.

A learned optimizer may declare

* ``frozen_keys() -> tuple[str, ...]``: top-level keys of its meta-params that are not trained (Celo's
  phase 1 freezes the scheduler, phase 2 the MLP update rule, research/algorithms.md §1.1). The
  optimizer itself stops gradients through them; the meta-trainer neither perturbs them (ES / PES)
  nor updates them (not even by weight decay);
* ``meta_penalty(meta_params) -> scalar``: a regulariser added to the meta-objective (STAR's
  meta-level weight decay, §4.2); its exact gradient is added to the estimated meta-gradient.
"""

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["frozen_keys", "penalty_gradient", "trainable_mask"]


def frozen_keys(lopt) -> tuple[str, ...]:
    """The declared frozen top-level keys of ``lopt`` (empty when it declares none)."""
    fn = getattr(lopt, "frozen_keys", None)
    return tuple(fn()) if callable(fn) else ()


def trainable_mask(lopt, meta_params: Any) -> Any:
    """A pytree of Python bools shaped like ``meta_params``: ``False`` under a frozen top-level key.

    Raises:
      ValueError: if a declared frozen key is not a top-level key of ``meta_params``.
    """
    frozen = frozen_keys(lopt)
    if not frozen:
        return jax.tree.map(lambda _: True, meta_params)
    if not isinstance(meta_params, dict):
        raise ValueError(f"{type(lopt).__name__} declares frozen keys {frozen} but its meta-params are not a dict.")
    unknown = sorted(set(frozen) - set(meta_params))
    if unknown:
        raise ValueError(
            f"{type(lopt).__name__} declares frozen keys {unknown} that are not in its meta-params "
            f"(top-level keys: {sorted(meta_params)})."
        )
    return {k: jax.tree.map(lambda _, keep=(k not in frozen): keep, v) for k, v in meta_params.items()}


def penalty_gradient(lopt, meta_params: Any) -> Any | None:
    """Gradient of ``lopt.meta_penalty`` at ``meta_params`` (zero on frozen leaves), or ``None``."""
    fn = getattr(lopt, "meta_penalty", None)
    if not callable(fn):
        return None
    grad = jax.grad(lambda mp: jnp.asarray(fn(mp), jnp.float32))(meta_params)
    mask = trainable_mask(lopt, meta_params)
    return jax.tree.map(lambda g, keep: g if keep else jnp.zeros_like(g), grad, mask)
