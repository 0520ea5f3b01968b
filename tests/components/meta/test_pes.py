"""PES: it learns, and on a problem whose meta-gradient we can compute exactly it agrees with it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.meta import PES, MetaTrainConfig, meta_train
from components.tasks import ImageMLPFamily, stack_datasets


class LearnableSGD:
    """SGD whose log learning rate is the meta-parameter (learned_optimization's LearnableSGD)."""

    name = "learnable_sgd"

    def __init__(self, log_lr: float = np.log(1e-2)):
        self.log_lr = float(log_lr)

    def config(self):
        return {}

    def init_meta_params(self, key):
        return {"log_lr": jnp.asarray(self.log_lr, jnp.float32)}

    def make(self, meta_params, *, num_steps):
        return optax.with_extra_args_support(optax.sgd(jnp.exp(meta_params["log_lr"])))


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class QuadraticTask:
    """Deterministic quadratic ``0.5 Σ h_i (w_i − c_i)²`` with the normalised loss = raw loss."""

    h: jax.Array

    def tree_flatten(self):
        return (self.h,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def init(self, key):
        return {"w": jnp.zeros_like(self.h)}

    def batch(self, data, key):
        return None

    def loss(self, params, batch, key=None):
        return 0.5 * jnp.sum(self.h * (params["w"] - 1.0) ** 2)

    def normalized_loss(self, loss):
        return loss


@dataclasses.dataclass(frozen=True)
class QuadraticFamily:
    def sample(self, key):
        return QuadraticTask(jnp.array([0.5, 1.0, 2.0], jnp.float32))


def _true_meta_gradient(lopt, meta_params, num_steps):
    """d/dθ of the mean loss over an unroll of ``num_steps`` (pre-update losses), by backprop."""
    task = QuadraticFamily().sample(None)

    def objective(theta):
        opt = lopt.make(theta, num_steps=num_steps)
        params = task.init(None)

        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, None)
            updates, state = opt.update(grads, state, params, loss=loss)
            return (optax.apply_updates(params, updates), state), loss

        _, losses = jax.lax.scan(step, (params, opt.init(params)), None, length=num_steps)
        return losses.mean()

    return jax.grad(objective)(meta_params)["log_lr"]


@pytest.mark.parametrize("windows", [1, 4], ids=["one-truncation", "four-truncations"])
def test_pes_matches_the_true_meta_gradient(windows):
    lopt = LearnableSGD(np.log(0.05))
    theta = lopt.init_meta_params(None)
    k, tasks, sigma = 5, 2048, 0.01
    cfg = PES(num_tasks=tasks, trunc_length=k, min_unroll=k * windows, max_unroll=k * windows, sigma=sigma)
    family = QuadraticFamily()
    state = cfg.init_state(lopt, theta, family, jax.random.PRNGKey(0))
    state = state._replace(inner=state.inner._replace(step=jnp.zeros_like(state.inner.step)))  # no offsets
    step = jax.jit(lambda st, key: cfg.gradient(lopt, theta, family, st, jnp.zeros(()), key))
    grads = []
    for w in range(windows):  # the unroll is cut into `windows` truncations; PES sums their estimates
        g, state, aux = step(state, jax.random.PRNGKey(w + 1))
        grads.append(float(g["log_lr"]))
    assert int(aux["resets"]) == tasks  # the last truncation ended every inner problem exactly
    estimate = np.mean(grads)
    truth = float(_true_meta_gradient(lopt, theta, k * windows))
    assert truth < 0  # a larger learning rate helps on this problem
    # a fixed-seed smoke check (relative SE ≈ 3% at 2048 tasks); the statistical test with standard
    # errors is in test_estimators.py
    assert estimate == pytest.approx(truth, rel=0.05)


def test_meta_training_lowers_the_meta_loss():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 10))
    x = rng.random((1000, 8, 8, 1)).astype(np.float32)
    y = np.argmax(x.reshape(1000, -1) @ w, -1).astype(np.int32)
    family = ImageMLPFamily(("synthetic",), (16,), (8, 8, 1), 10, 32)
    cfg = MetaTrainConfig(
        num_outer_steps=150,
        num_tasks=4,
        trunc_length=10,
        min_unroll=30,
        max_unroll=100,
        sigma=0.1,
        outer_lr=3e-2,
        log_every=50,
    )
    lopt = LearnableSGD(np.log(1e-3))
    lines = []
    result = meta_train(lopt, family, stack_datasets([x], [y]), cfg, key=jax.random.PRNGKey(0), log=lines.append)
    curve = [v for _, v in result.curves["meta_loss"]]
    assert len(curve) == 3 and all(np.isfinite(curve))
    assert curve[-1] < curve[0] - 0.1, curve
    assert float(result.meta_params["log_lr"]) > np.log(1e-3) + 1.0  # it learned to take larger steps
    assert any("ETA" in line for line in lines)  # progress is visible


def test_meta_training_is_deterministic_given_the_key():
    family = QuadraticFamily()
    cfg = MetaTrainConfig(
        num_outer_steps=5,
        num_tasks=4,
        trunc_length=3,
        min_unroll=6,
        max_unroll=12,
        sigma=0.01,
        outer_lr=1e-2,
        log_every=5,
    )
    runs = [
        meta_train(LearnableSGD(), family, jnp.zeros(()), cfg, key=jax.random.PRNGKey(3), log=lambda m: None)
        for _ in range(2)
    ]
    assert float(runs[0].meta_params["log_lr"]) == float(runs[1].meta_params["log_lr"])
    other = meta_train(LearnableSGD(), family, jnp.zeros(()), cfg, key=jax.random.PRNGKey(4), log=lambda m: None)
    assert float(other.meta_params["log_lr"]) != float(runs[0].meta_params["log_lr"])


@pytest.mark.parametrize(("min_unroll", "max_unroll"), [(2, 3), (8, 12)], ids=["short-horizons", "long-horizons"])
def test_inner_problems_are_reset_inside_a_truncation_however_short_their_horizons(min_unroll, max_unroll):
    """Replacement problems are built once per truncation when a horizon cannot end twice in one
    (min_unroll >= trunc_length), at every step otherwise; both count every reset."""
    cfg = PES(num_tasks=3, trunc_length=6, min_unroll=min_unroll, max_unroll=max_unroll, sigma=0.01)
    lopt, family = LearnableSGD(), QuadraticFamily()
    theta = lopt.init_meta_params(None)
    state = cfg.init_state(lopt, theta, family, jax.random.PRNGKey(0))
    step = jax.jit(lambda s, k: cfg.gradient(lopt, theta, family, s, jnp.zeros(()), k))
    resets = []
    for i in range(4):
        grad, state, aux = step(state, jax.random.PRNGKey(10 + i))
        assert np.isfinite(float(grad["log_lr"]))
        resets.append(int(aux["resets"]))
        # every task's position stays inside its (new) horizon, and both branches share it
        assert np.all(np.asarray(state.inner.step) < np.asarray(state.inner.length))
        np.testing.assert_array_equal(np.asarray(state.inner.length[:, 0]), np.asarray(state.inner.length[:, 1]))
    if min_unroll >= cfg.trunc_length:
        assert max(resets) <= cfg.num_tasks  # at most one per task and truncation
    else:
        assert max(resets) > cfg.num_tasks  # horizons of 2-3 steps end twice in a truncation of 6
