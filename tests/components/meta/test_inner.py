"""The one inner step: every loop (PES, ES, TBPTT, the evaluation runner) hands the optimizer the same
extra args and applies its update the same way."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.evaluation import train_curves
from components.meta import PES, FullES, TruncatedBackprop, draw_batches, inner_step
from components.tasks.suite import build_task
from tests.components.meta.test_estimators import NoisyQuadraticFamily
from tests.components.meta.test_pes import LearnableSGD

STEP_ARGS = ["fresh_loss_fn", "loss", "loss_fn"]


def probe(inner: optax.GradientTransformation, seen: list) -> optax.GradientTransformationExtraArgs:
    """``inner`` that records the names of the extra args of every traced update."""

    def update(updates, state, params=None, **extra):
        seen.append(sorted(extra))
        return inner.update(updates, state, params)

    return optax.GradientTransformationExtraArgs(inner.init, update)


class ProbedSGD(LearnableSGD):
    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def make(self, meta_params, *, num_steps):
        return probe(optax.sgd(jnp.exp(meta_params["log_lr"])), self.seen)


@pytest.mark.parametrize(
    "estimator",
    [PES(2, 3, 4, 8, 0.01), FullES(2, 3, 5, 0.01), TruncatedBackprop(2, 3, 4, 8)],
    ids=["pes", "es", "tbptt"],
)
def test_every_estimator_steps_with_the_same_extra_args(estimator):
    seen: list = []
    lopt, family = ProbedSGD(seen), NoisyQuadraticFamily()
    theta = lopt.init_meta_params(None)
    state = estimator.init_state(lopt, theta, family, jax.random.PRNGKey(0))
    grad, _, _ = jax.jit(lambda s, k: estimator.gradient(lopt, theta, family, s, jnp.zeros(()), k))(
        state, jax.random.PRNGKey(1)
    )
    assert np.isfinite(float(grad["log_lr"]))
    assert seen and all(names == STEP_ARGS for names in seen), seen


def test_the_evaluation_runner_steps_with_the_same_extra_args():
    seen: list = []
    out = train_curves(
        build_task("noisy_quadratic_d100"),
        lambda lr: probe(optax.sgd(lr), seen),
        np.asarray([1e-2], np.float32),
        None,
        {},
        keys=jax.random.split(jax.random.PRNGKey(0), 2),
        num_steps=4,
        eval_every=2,
    )
    assert out["batch_loss"].shape == (1, 2, 4)
    assert seen and all(names == STEP_ARGS for names in seen), seen


def test_inner_step_is_one_gradient_step_with_loss_closures_on_both_batches():
    task = build_task("noisy_quadratic_d100")
    params = task.init(jax.random.PRNGKey(0))
    batch, fresh = draw_batches(task, None, jax.random.PRNGKey(1))
    got = {}

    def update(grads, state, params=None, *, loss, loss_fn, fresh_loss_fn):
        got.update(loss=loss, same=loss_fn(params), fresh=fresh_loss_fn(params))
        return jax.tree_util.tree_map(lambda g: -0.1 * g, grads), state

    opt = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    loss, new_params, _ = inner_step(opt, task, params, optax.EmptyState(), batch, fresh)
    want_loss, grads = jax.value_and_grad(task.loss)(params, batch)
    assert float(loss) == float(want_loss) == float(got["loss"]) == float(got["same"])
    assert float(got["fresh"]) == float(task.loss(params, fresh)) != float(got["same"])  # an independent batch
    want = optax.apply_updates(params, jax.tree_util.tree_map(lambda g: -0.1 * g, grads))
    for a, b in zip(jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)
