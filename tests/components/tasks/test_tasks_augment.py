"""Task augmentation: reparametrisation keeps the network function at every level, scales are drawn
as documented, wrappers compose with any task and family; reduced batch sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.tasks import (
    LEVELS,
    CharLMTask,
    ImageFamily,
    ReducedBatchFamily,
    ReparamFamily,
    ReparamTask,
    Task,
    TokenData,
    finetune,
    noisy_quadratic,
    reparametrize,
    sample_log_scales,
    stack_datasets,
    with_batch_size,
)

RNG = np.random.default_rng(0)
IMAGES = stack_datasets([RNG.random((30, 4, 4, 1)).astype(np.float32)], [RNG.integers(0, 10, 30).astype(np.int32)])
TOKENS = TokenData(jnp.asarray(RNG.integers(0, 11, 100), jnp.int32))
TASKS = {
    "mlp": (Task("t", "mlp", (8,), "relu", (4, 4, 1), 10, 6, norm="layer_norm"), IMAGES),
    "char_lm": (CharLMTask("lm", 11, 8, 16, 1, 2, 3), TOKENS),
    "noisy_quadratic": (noisy_quadratic(5, batch_size=2), None),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reparametrisation_keeps_the_network_function_at_every_level(name):
    task, data = TASKS[name]
    augmented = tuple(reparametrize(task, jax.random.PRNGKey(i), level, (1e-3, 1e3)) for i, level in enumerate(LEVELS))

    @jax.jit
    def check(task, augmented, data, key):
        params = task.init(key)
        batch = task.batch(data, key)
        out = []
        for aug in augmented:
            stored = jax.tree_util.tree_map(lambda w, s: w / s, params, aug.scales)  # w / s
            out.append((task.loss(params, batch), aug.loss(stored, batch), aug.init(key), stored))
        return out

    for (ref, loss, init, stored), aug in zip(check(task, augmented, data, jax.random.PRNGKey(7)), augmented):
        np.testing.assert_allclose(loss, ref, rtol=2e-5)  # the loss at (w / s) · s is the loss at w
        for a, b in zip(jax.tree_util.tree_leaves(init), jax.tree_util.tree_leaves(stored)):
            np.testing.assert_allclose(a, b, rtol=1e-5)  # init stores w / s
        assert aug.batch_size == task.batch_size and aug.name == task.name


def test_scales_per_level():
    shapes = {"a": jnp.zeros((3, 4)), "b": jnp.zeros((5,)), "c": jnp.zeros(())}
    key = jax.random.PRNGKey(0)
    lo, hi = np.log(1e-2), np.log(1e2)
    g = sample_log_scales(key, shapes, "global", (1e-2, 1e2))
    assert {float(v) for v in jax.tree_util.tree_leaves(g)} == {float(g["a"])} and g["a"].shape == ()
    t = sample_log_scales(key, shapes, "tensor", (1e-2, 1e2))
    assert all(v.shape == () for v in t.values()) and len({float(v) for v in t.values()}) == 3
    p = sample_log_scales(key, shapes, "parameter", (1e-2, 1e2))
    assert {k: v.shape for k, v in p.items()} == {"a": (3, 4), "b": (5,), "c": ()}
    for tree in (g, t, p):
        leaves = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(tree)])
        assert (leaves >= lo - 1e-6).all() and (leaves <= hi + 1e-6).all()
    # log-uniform: log s is uniform on [log lo, log hi]
    many = np.asarray(sample_log_scales(key, jnp.zeros((20000,)), "parameter", (1e-3, 1e3)))
    assert abs(many.mean()) < 0.1 and abs(many.std() - 2 * np.log(1e3) / np.sqrt(12)) < 0.1


def test_reparam_family_is_deterministic_and_vmaps():
    family = ReparamFamily(ImageFamily(("a", "b"), (4, 4, 1), 10, 6), "tensor", (1e-3, 1e3))
    t1, t2 = family.sample(jax.random.PRNGKey(3)), family.sample(jax.random.PRNGKey(3))
    assert jax.tree_util.tree_structure(t1) == jax.tree_util.tree_structure(t2)
    for a, b in zip(jax.tree_util.tree_leaves(t1), jax.tree_util.tree_leaves(t2)):
        np.testing.assert_array_equal(a, b)
    other = family.sample(jax.random.PRNGKey(4))
    assert not np.allclose(other.log_scale["dense0"]["w"], t1.log_scale["dense0"]["w"])
    population = jax.jit(jax.vmap(family.sample))(jax.random.split(jax.random.PRNGKey(0), 16))
    assert isinstance(population, ReparamTask) and population.log_scale["dense1"]["b"].shape == (16,)
    assert set(np.asarray(population.task.dataset_index).tolist()) == {0, 1}


def test_reduced_batch_size_on_tasks_wrappers_and_families():
    task = Task("t", "mlp", (8,), "relu", (4, 4, 1), 10, 64)
    assert with_batch_size(task, 8).batch_size == 8
    wrapped = reparametrize(finetune(task, task.init(jax.random.PRNGKey(0))), jax.random.PRNGKey(1))
    small = with_batch_size(wrapped, 4)
    assert small.batch_size == 4 and small.task.task.batch_size == 4 and type(small) is ReparamTask
    x, y = small.batch(IMAGES, jax.random.PRNGKey(2))
    assert x.shape == (4, 4, 4, 1) and y.shape == (4,)
    family = ReducedBatchFamily(ReparamFamily(ImageFamily(("a",), (4, 4, 1), 10, 64)), 0.25)
    assert family.sample(jax.random.PRNGKey(0)).batch_size == 16


def test_augmentation_errors():
    task = Task("t", "mlp", (8,), "relu", (4, 4, 1), 10, 64)
    with pytest.raises(ValueError, match="unknown reparametrisation level 'layer'"):
        reparametrize(task, jax.random.PRNGKey(0), "layer")
    with pytest.raises(ValueError, match="unknown reparametrisation level"):
        ReparamFamily(ImageFamily(("a",), (4, 4, 1), 10, 64), "layer")
    with pytest.raises(ValueError, match="0 < lo <= hi"):
        reparametrize(task, jax.random.PRNGKey(0), "global", (0.0, 10.0))
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        ReducedBatchFamily(ImageFamily(("a",), (4, 4, 1), 10, 64), 1.5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        with_batch_size(task, 0)
    with pytest.raises(TypeError, match="no batch_size field"):
        with_batch_size(object(), 4)
