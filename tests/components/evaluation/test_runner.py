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
