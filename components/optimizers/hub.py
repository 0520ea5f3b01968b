"""HUB: a hybrid of a learned and a hand-designed optimizer mixed per entry by the gradient.

Dai et al., "HUB: Guiding Learned Optimizers with Continuous Prompt Tuning" (arXiv 2305.16823; ICLR
2024 submission "Enhancing Learned Optimizers via Hybrid Update-based Strategy"); see
``research/algorithms.md`` §3.1. Both inner optimizers receive the same gradient ``g`` (and every
extra arg); for each parameter tensor ``l`` with ``n_l`` entries:

.. code-block:: text

    u_L = learned.update(g)            u_H = hand.update(g)          (signed displacements)
    S_l = softmax(|g_l| / temperature)  over all n_l entries of the tensor (flattened), Σ S_l = 1
    default:   Δ_l = S_l ⊙ u_H,l + (1 − S_l) ⊙ u_L,l
    inverted:  Δ_l = (1 − S_l) ⊙ u_H,l + S_l ⊙ u_L,l

Because ``S_l`` sums to 1 over the tensor, most entries of a large tensor get a weight ≈ 1/n_l: in
the default variant almost the whole step comes from the learned optimizer, except where one
gradient entry dominates (the paper's "guidance" on outlier coordinates; reviewers flagged this
scale dependence). A 0-D or one-entry tensor has ``S = 1``: the default takes the hand update there,
the inverted variant the learned one. ``temperature → ∞`` gives uniform weights ``1/n_l``;
``temperature → 0`` a one-hot weight on the largest ``|g|`` entry (ties share it).

Reporting: the state keeps the running mean over steps of the hand-designed optimizer's share of
the step,

.. code-block:: text

    share_t = Σ_l Σ w_H,l·|u_H,l|  /  (Σ_l Σ w_H,l·|u_H,l| + Σ_l Σ w_L,l·|u_L,l|)

with ``(w_H, w_L) = (S, 1 − S)`` (default) or ``(1 − S, S)`` (inverted): the fraction of the step's
L1 mass contributed by the hand-designed optimizer (0: pure learned, 1: pure hand). The mean
weight itself would say nothing (``Σ S_l = 1`` per tensor by construction). Steps where the share
is undefined (both weighted updates exactly zero, or a non-finite update) are left out of the
mean. :func:`hand_share` reports it.

Cost: both inner updates, one softmax per tensor and two extra elementwise passes.

Choices we made (the paper is known to us only from reviews, ``research/algorithms.md`` §3.1):

* ``temperature`` is our addition (the paper uses ``softmax(|g|)``, i.e. ``temperature=1``); it
  makes the limits explicit and testable. A float, or a (possibly traced) scalar array.
* The softmax and the mix are computed in at least float32 and the update is cast back to the
  parameter dtype (the gradient's dtype when ``params`` is not given).
* A NaN or infinite inner update is not masked: HUB is a hybrid, not a safeguard (wrap it in
  :func:`~components.optimizers.guards.guard_with_loss` for that).

Naming: HUB produces a complete optimizer from two, so it is a noun named after the method (like
``adam``, or ``optax.lookahead`` with ``LookaheadState``), not a ``verb_by_*`` transform; one name
(no alias) keeps params, reports and code in step.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from components.optimizers import SmallFcLOpt, adam
  >>> lopt = SmallFcLOpt()
  >>> learned = lopt.make(lopt.init_meta_params(jax.random.key(0)), num_steps=100)
  >>> opt = hub(learned, adam(1e-3))
  >>> params = {"w": jnp.ones((3, 2))}
  >>> state = opt.init(params)
  >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params, loss=jnp.float32(1.0))
  >>> float(hand_share(state)) > 0.0
  True
"""

from numbers import Real
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from components.optimizers import features as F
from components.optimizers.guards import check_transformation

__all__ = ["HubState", "hand_share", "hub", "hub_weights"]


def hub_weights(grad: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
    """HUB's per-tensor weight ``S = softmax(|g| / temperature)`` over all entries of ``grad``.

    Args:
      grad: one gradient tensor (any shape, 0-D included).
      temperature: softmax temperature (> 0; ``inf`` gives uniform weights).

    Returns:
      An array of ``grad``'s shape in at least float32, summing to 1 (``[1.0]`` for a 0-D tensor).
    """
    dtype = F.accumulator_dtype(grad.dtype)
    logits = jnp.abs(grad.astype(dtype)).reshape(-1) / jnp.asarray(temperature, dtype)
    return jax.nn.softmax(logits).reshape(grad.shape)


class HubState(NamedTuple):
    """State of :func:`hub`.

    Attributes:
      learned_state: state of the learned transformation.
      hand_state: state of the hand-designed transformation.
      num_steps: int32 number of updates taken.
      num_measured_steps: int32 number of updates whose hand share was defined (see the module
        docstring).
      mean_hand_share: float32 running mean of the hand-designed share over the measured steps.
    """

    learned_state: Any
    hand_state: Any
    num_steps: jax.Array
    num_measured_steps: jax.Array
    mean_hand_share: jax.Array


def hub(
    learned: optax.GradientTransformation,
    hand: optax.GradientTransformation,
    *,
    inverted: bool = False,
    temperature: float | jax.Array = 1.0,
) -> optax.GradientTransformationExtraArgs:
    """HUB hybrid of a learned and a hand-designed optimizer (see the module docstring's maths).

    Args:
      learned: the learned optimizer, e.g. ``lopt.make(θ, num_steps=T)``.
      hand: the hand-designed optimizer, e.g. ``adam(1e-3)``.
      inverted: ``False``: ``S⊙u_H + (1−S)⊙u_L`` (the paper's default, mostly learned);
        ``True``: ``(1−S)⊙u_H + S⊙u_L`` (the paper's fine-tuning variant, mostly hand-designed).
      temperature: softmax temperature of ``S = softmax(|g|/temperature)``; a positive float
        (``float("inf")`` allowed) or a (possibly traced) scalar array.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params=None,
      **extra_args)`` forwards the gradient, ``params`` and every extra arg to both inner
      transformations (so pass what they need, e.g. ``params`` and ``loss=`` for a learned one).

    Raises:
      TypeError: if ``learned`` or ``hand`` is not a transformation, or ``inverted`` is not a bool.
      ValueError: for a non-positive (or NaN) Python ``temperature``.
    """
    learned = check_transformation(learned, factory="hub", arg="learned")
    hand = check_transformation(hand, factory="hub", arg="hand")
    if not isinstance(inverted, bool):
        raise TypeError(f"hub: inverted must be a bool, got {inverted!r}. Use inverted=True for (1−S)⊙u_H + S⊙u_L.")
    if isinstance(temperature, bool) or (isinstance(temperature, Real) and not temperature > 0):
        raise ValueError(
            f"hub: temperature must be > 0, got {temperature!r}. Use 1.0 for the paper's softmax(|g|), "
            "a large value (or float('inf')) for uniform weights, a small one for a near one-hot weight."
        )

    def init_fn(params):
        counters = (jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))
        return HubState(learned.init(params), hand.init(params), *counters)

    def update_fn(updates, state, params=None, **extra_args):
        learned_updates, learned_state = learned.update(updates, state.learned_state, params, **extra_args)
        hand_updates, hand_state = hand.update(updates, state.hand_state, params, **extra_args)
        grads, treedef = jax.tree.flatten(updates)
        likes = grads if params is None else treedef.flatten_up_to(params)
        per_leaf = zip(
            grads, treedef.flatten_up_to(hand_updates), treedef.flatten_up_to(learned_updates), likes, strict=True
        )
        mixed = [_mix(*args, temperature=temperature, inverted=inverted) for args in per_leaf]
        new_updates = treedef.unflatten([m[0] for m in mixed])
        hand_mass = sum((m[1] for m in mixed), jnp.zeros([], jnp.float32))
        total_mass = hand_mass + sum((m[2] for m in mixed), jnp.zeros([], jnp.float32))
        measured = jnp.isfinite(total_mass) & (total_mass > 0)
        share = hand_mass / jnp.where(measured, total_mass, 1.0)
        num_measured = state.num_measured_steps + measured.astype(jnp.int32)
        delta = (share - state.mean_hand_share) / jnp.maximum(num_measured, 1).astype(jnp.float32)
        new_state = HubState(
            learned_state=learned_state,
            hand_state=hand_state,
            num_steps=state.num_steps + jnp.ones([], jnp.int32),
            num_measured_steps=num_measured,
            mean_hand_share=jnp.where(measured, state.mean_hand_share + delta, state.mean_hand_share),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _mix(grad, u_hand, u_learned, like, *, temperature, inverted: bool):
    """One tensor's mixed update and the hand / learned masses ``Σ w·|u|`` (float32)."""
    dtype = F.accumulator_dtype(like.dtype)
    s = hub_weights(grad, temperature).astype(dtype)
    w_hand, w_learned = (1.0 - s, s) if inverted else (s, 1.0 - s)
    u_hand = u_hand.astype(dtype)
    u_learned = u_learned.astype(dtype)
    update = (w_hand * u_hand + w_learned * u_learned).astype(like.dtype)
    hand_mass = jnp.sum(w_hand * jnp.abs(u_hand)).astype(jnp.float32)
    learned_mass = jnp.sum(w_learned * jnp.abs(u_learned)).astype(jnp.float32)
    return update, hand_mass, learned_mass


def hand_share(state: HubState) -> jax.Array:
    """Mean share of the hand-designed optimizer in HUB's steps (0 before the first measured step).

    The per-step share is ``Σ w_H·|u_H| / (Σ w_H·|u_H| + Σ w_L·|u_L|)`` over all entries of all
    tensors (module docstring); 0 means the learned optimizer made the whole step, 1 the hand one.
    Batched states give a batch of shares.
    """
    return state.mean_hand_share
