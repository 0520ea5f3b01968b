"""The evaluation runner's longer runs: Adam's m x T grid and the k x T stability runs share their minibatches."""

import jax
import numpy as np

from components.evaluation import train_curves
from components.optimizers import create
from components.tasks.suite import build_task


def _run(tail_steps: int, timing: dict | None = None) -> dict:
    task = build_task("noisy_quadratic_d100")
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    out = train_curves(
        task,
        lambda lr: create("adam", learning_rate=lr),
        np.asarray([1e-2, 1e-1], np.float32),
        None,
        {},
        keys=keys,
        num_steps=20,
        eval_every=10,
        tail_steps=tail_steps,
        tail_eval_every=20,
        timing=timing,
    )
    return {k: np.asarray(v) for k, v in out.items() if k != "opt_state"}


def test_a_tail_extends_a_run_without_changing_its_start():
    plain, double, quadruple = _run(0), _run(20), _run(60)
    assert plain["batch_loss"].shape == (2, 2, 20) and quadruple["batch_loss"].shape == (2, 2, 80)
    # the first T steps are the same minibatches and the same numbers whatever the tail
    np.testing.assert_array_equal(double["batch_loss"][..., :20], plain["batch_loss"])
    # chunk i of a tail is the same whatever the tail's length: a 2T run is the prefix of a 4T run
    np.testing.assert_array_equal(quadruple["batch_loss"][..., :40], double["batch_loss"])
    assert not np.array_equal(quadruple["batch_loss"][..., 40:60], quadruple["batch_loss"][..., 20:40])


def test_timing_is_measured_apart_from_compilation_and_changes_no_number():
    timing = {"steps": 1000}  # the caller's dict: added to, so one optimizer's several programs sum up
    timed = _run(20, timing)
    np.testing.assert_array_equal(timed["batch_loss"], _run(20)["batch_loss"])
    assert timing["steps"] == 1000 + 2 * 2 * 40  # 2 learning rates x 2 seeds x (20 + 20 tail) steps
    assert timing["compile_seconds"] > 0 and timing["run_seconds"] > 0


def _learned_setup():
    from components.optimizers import create_learned

    task = build_task("noisy_quadratic_d100")
    lopt = create_learned("small_fc_lopt", hidden_size=4, hidden_layers=1)
    theta = lopt.init_meta_params(jax.random.PRNGKey(3))
    other = jax.tree.map(lambda x: x * 1.5 + 0.01, theta)
    kw = dict(keys=jax.random.split(jax.random.PRNGKey(0), 2), num_steps=10, eval_every=5)
    return task, lopt, theta, other, kw


def test_weights_as_an_argument_give_the_same_numbers_and_one_program_for_all_weights():
    from components.evaluation import WithWeights
    from components.evaluation.runner import lower_training

    task, lopt, theta, other, kw = _learned_setup()
    build = lambda _, w: lopt.make(w, num_steps=10)  # noqa: E731
    hp = np.zeros(1, np.float32)
    as_argument = train_curves(task, WithWeights(build, theta), hp, None, {}, **kw)
    closed_over = train_curves(task, lambda _: lopt.make(theta, num_steps=10), hp, None, {}, **kw)
    for a, b in zip(jax.tree.leaves(as_argument), jax.tree.leaves(closed_over)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # different weights: different numbers, the same program (so compiled once, and found in JAX's persistent cache)
    moved = train_curves(task, WithWeights(build, other), hp, None, {}, **kw)
    assert not np.array_equal(np.asarray(moved["batch_loss"]), np.asarray(as_argument["batch_loss"]))
    text = lambda f: lower_training(task, f, hp, None, {}, **kw).as_text()  # noqa: E731
    assert text(WithWeights(build, theta)) == text(WithWeights(build, other))
    # (closed over, the weights are constants of the program: each set of weights is another program)
    assert text(lambda _: lopt.make(theta, num_steps=10)) != text(lambda _: lopt.make(other, num_steps=10))
    # a WithWeights is also a plain factory
    assert callable(WithWeights(build, theta)(0.0).update)
