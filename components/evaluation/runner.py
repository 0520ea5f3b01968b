"""Train a task with an optax optimizer: one compiled program, ``vmap`` over seeds (and
hyperparameters), ``lax.scan`` over steps, evaluation at fixed intervals.

Every optimizer goes through this one path (baseline, learned, guarded), and each step is
:func:`components.meta.inner_step`, the step meta-training uses: the update receives the keyword
extra args ``loss`` (the minibatch loss), ``loss_fn`` (a closure giving the loss of any parameters on
the *same* minibatch, used by the LGL2O guard to compare candidates) and ``fresh_loss_fn`` (the same
on an independent minibatch), and is applied with ``optax.apply_updates``.

A learned optimizer's meta-parameters go into the program as an argument (:class:`WithWeights`), not as
closed-over constants: one compiled program then serves every optimizer of the same structure on a task (the
freshly trained one, a zoo entry of the same architecture, the next meta-training run's), and JAX's persistent
cache finds it on later runs. ``benchmarks/weights_as_arguments.py`` shows the two forms give bitwise-identical
results.
"""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from components.meta.inner import draw_batches, inner_step
from components.tasks.protocol import TaskProtocol as Task

__all__ = ["train_curves", "lower_training", "run_training", "split_weights", "OptFactory", "WithWeights"]

# hyperparameter (a scalar array, e.g. a learning rate; ignored by learned optimizers) -> optimizer
OptFactory = Callable[[jax.Array], optax.GradientTransformationExtraArgs]


@dataclasses.dataclass(frozen=True)
class WithWeights:
    """An :data:`OptFactory` whose weights (a learned optimizer's meta-parameters) are a program argument.

    ``make(hparam, weights)`` builds the optimizer; calling the factory, ``f(hparam)``, builds it with
    :attr:`weights`, so it works wherever an :data:`OptFactory` does. :func:`train_curves` instead passes
    ``weights`` to the compiled program as an argument and calls ``make`` with the traced value inside, so
    the program does not depend on the values of the weights, only on their structure.
    """

    make: Callable[[jax.Array, Any], optax.GradientTransformationExtraArgs]
    weights: Any

    def __call__(self, hparam: jax.Array) -> optax.GradientTransformationExtraArgs:
        return self.make(hparam, self.weights)


def split_weights(make_opt: OptFactory) -> tuple[Callable[[jax.Array, Any], Any], Any]:
    """``(build, weights)`` with ``build(hparam, weights)`` the optimizer: a :class:`WithWeights`'s own parts, and
    ``(make_opt(hparam), None)`` for any other factory (whose values, if any, stay closed over)."""
    if isinstance(make_opt, WithWeights):
        return make_opt.make, make_opt.weights
    return (lambda hparam, _: make_opt(hparam)), None


def run_training(
    task: Task,
    make_opt: OptFactory,
    hparam: jax.Array,
    train: Any,
    eval_sets: dict[str, tuple[jax.Array, jax.Array]],
    key: jax.Array,
    num_steps: int,
    eval_every: int,
    tail_steps: int = 0,
    tail_eval_every: int | None = None,
) -> dict[str, Any]:
    """One training run (unbatched, traceable): see :func:`train_curves` for the outputs."""
    opt = make_opt(hparam)
    k_init, k_run = jax.random.split(key)
    params = task.init(k_init)
    opt_state = opt.init(params)

    def evaluate(params):
        out = {}
        for name, batch in eval_sets.items():
            out[f"{name}_loss"] = task.loss(params, batch)
            out[f"{name}_acc"] = task.accuracy(params, batch)
        return out

    def step(carry, k):
        params, opt_state = carry
        # the independent batch is for safeguards that estimate losses on fresh data (LGL2O
        # loss_batch="fresh"); XLA drops the sampling when no optimizer uses it
        batch, fresh_batch = draw_batches(task, train, *jax.random.split(k))
        loss, params, opt_state = inner_step(opt, task, params, opt_state, batch, fresh_batch)
        return (params, opt_state), loss

    def segment(carry, chunk_keys, every):
        def chunk(carry, k):
            carry, losses = jax.lax.scan(step, carry, jax.random.split(k, every))
            return carry, (losses, evaluate(carry[0]))

        return jax.lax.scan(chunk, carry, chunk_keys)

    first_eval = evaluate(params)
    carry, (losses, evals) = segment((params, opt_state), jax.random.split(k_run, num_steps // eval_every), eval_every)
    parts_loss, parts_eval = [losses.reshape(-1)], [evals]
    if tail_steps:
        # a longer run whose first num_steps are evaluated as usual and the rest more sparsely (the
        # speedup normaliser's long Adam grid, the stability runs): the first part's minibatches are
        # unchanged, and chunk i of every tail has the same keys whatever the tail's length
        tail_key = jax.random.fold_in(k_run, 1)
        keys = jax.vmap(lambda i: jax.random.fold_in(tail_key, i))(jnp.arange(tail_steps // tail_eval_every))
        carry, (losses, evals) = segment(carry, keys, tail_eval_every)
        parts_loss.append(losses.reshape(-1))
        parts_eval.append(evals)
    evals = {k: jnp.concatenate([first_eval[k][None], *(e[k] for e in parts_eval)]) for k in first_eval}
    return {"batch_loss": jnp.concatenate(parts_loss), "opt_state": carry[1], **evals}


def train_curves(
    task: Task,
    make_opt: OptFactory,
    hparams: jax.Array,
    train: Any,
    eval_sets: dict[str, tuple[jax.Array, jax.Array]],
    *,
    keys: jax.Array,
    num_steps: int,
    eval_every: int,
    tail_steps: int = 0,
    tail_eval_every: int | None = None,
    timing: dict | None = None,
) -> dict[str, jax.Array]:
    """Train ``task`` for every (hyperparameter, seed) pair in one compiled, batched program.

    Args:
      task: the problem: any task of :mod:`components.tasks.protocol` (a pytree, passed to the
        compiled program as an argument).
      make_opt: builds the optimizer from one hyperparameter value; a :class:`WithWeights` gets its weights
        as a program argument (one program for every set of weights of the same structure).
      hparams: ``[H]`` hyperparameter values (e.g. learning rates; pass ``jnp.zeros(1)`` if unused).
      train: training data; minibatches are drawn from it with per-step keys.
      eval_sets: name -> full batch ``(x, y)`` evaluated every ``eval_every`` steps (and at step 0);
        ``{}`` for tasks without held-out data (then only ``batch_loss`` is recorded).
      keys: ``[S]`` PRNG keys, one per seed (same seeds for every hyperparameter).
      num_steps: training steps; must be a multiple of ``eval_every``.
      eval_every: evaluation interval.
      tail_steps: more steps after ``num_steps`` (0: none), evaluated every ``tail_eval_every``;
        the first ``num_steps`` are the same as without a tail (same minibatches, same points).
      timing: a dict to add the wall-clock cost to (it is the caller's: nothing here depends on it):
        ``compile_seconds`` (tracing, lowering and compiling, or loading the program from JAX's
        persistent cache), ``run_seconds`` (executing it) and ``steps`` (training steps of all runs,
        ``H x S x (num_steps + tail_steps)``). The program is compiled ahead of time (``lower`` then
        ``compile``: the same program a plain call compiles), so the two are measured apart.

    Returns:
      ``batch_loss``: ``[H, S, num_steps + tail_steps]`` minibatch loss at the pre-update parameters;
      ``<set>_loss`` / ``<set>_acc``: ``[H, S, num_steps // eval_every + 1 + tail_steps // tail_eval_every]``;
      ``opt_state``: final optimizer states (batched), for counters such as guard fallbacks.
    """
    if num_steps % eval_every:
        raise ValueError(f"num_steps ({num_steps}) must be a multiple of eval_every ({eval_every})")
    if tail_steps and (not tail_eval_every or tail_steps % tail_eval_every):
        raise ValueError(f"tail_steps ({tail_steps}) must be a multiple of tail_eval_every ({tail_eval_every})")

    fn, args = _program(
        task, make_opt, hparams, train, eval_sets, keys, num_steps, eval_every, tail_steps, tail_eval_every
    )
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    if timing is not None:
        timing["compile_seconds"] = timing.get("compile_seconds", 0.0) + (t1 - t0)
        timing["run_seconds"] = timing.get("run_seconds", 0.0) + (time.perf_counter() - t1)
        runs = args[0].shape[0] * keys.shape[0]
        timing["steps"] = timing.get("steps", 0) + runs * (num_steps + tail_steps)
    return out


def lower_training(
    task: Task,
    make_opt: OptFactory,
    hparams: jax.Array,
    train: Any,
    eval_sets: dict[str, tuple[jax.Array, jax.Array]],
    *,
    keys: jax.Array,
    num_steps: int,
    eval_every: int,
    tail_steps: int = 0,
    tail_eval_every: int | None = None,
) -> jax.stages.Lowered:
    """The program :func:`train_curves` compiles, lowered (``.as_text()`` is its StableHLO): to inspect it, e.g.
    to check that it does not depend on a :class:`WithWeights`'s values."""
    fn, args = _program(
        task, make_opt, hparams, train, eval_sets, keys, num_steps, eval_every, tail_steps, tail_eval_every
    )
    return fn.lower(*args)


def _program(task, make_opt, hparams, train, eval_sets, keys, num_steps, eval_every, tail_steps, tail_eval_every):
    """``(jitted function, its arguments)`` of :func:`train_curves`: ``vmap`` over hparams, then seeds."""
    # the task (its arrays: dataset index, scales, pre-trained weights), the data and a learned optimizer's
    # weights are arguments, not closed-over constants: XLA would otherwise fold them into the program
    build, weights = split_weights(make_opt)

    def run(hparam, key, task, train, eval_sets, weights):
        return run_training(
            task,
            lambda h: build(h, weights),
            hparam,
            train,
            eval_sets,
            key,
            num_steps,
            eval_every,
            tail_steps,
            tail_eval_every,
        )

    shared = (None, None, None, None)
    fn = jax.jit(jax.vmap(jax.vmap(run, in_axes=(None, 0, *shared)), in_axes=(0, None, *shared)))
    args = (jnp.asarray(hparams), keys, task, train, eval_sets, weights)
    return fn, args
