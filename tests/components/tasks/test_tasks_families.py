"""Families: sampling twice with the same key gives the same task; populations vmap; Celo's preset."""

import jax
import numpy as np
import pytest

from components.tasks import (
    CELO_DATASETS,
    ImageFamily,
    LinearModelFamily,
    NoisyQuadraticFamily,
    ReparamTask,
    Task,
    celo_families,
    celo_family,
)


def _same(a, b) -> bool:
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


FAMILIES = {
    "image_conv": ImageFamily(("a", "b", "c"), (6, 6, 1), 10, 8, model="conv", hidden=(4,), norm="layer_norm"),
    "celo": celo_family(),
    "noisy_quadratic": NoisyQuadraticFamily(6, rotate=True),
    "least_squares": LinearModelFamily("least_squares", 5, num_examples=10),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_sampling_twice_with_the_same_key_gives_the_same_task(name):
    family = FAMILIES[name]
    key = jax.random.PRNGKey(11)
    assert _same(family.sample(key), family.sample(key))
    assert not _same(family.sample(key), family.sample(jax.random.PRNGKey(12)))
    population = jax.vmap(family.sample)(jax.random.split(key, 4))  # one batch of tasks
    first = jax.tree_util.tree_map(lambda a: a[0], population)
    assert _same(first, family.sample(jax.random.split(key, 4)[0]))


def test_image_family_mixes_datasets_and_keeps_the_architecture():
    family = FAMILIES["image_conv"]
    tasks = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(0), 64))
    assert set(np.asarray(tasks.dataset_index).tolist()) == {0, 1, 2}
    assert tasks.model == "conv" and tasks.hidden == (4,) and tasks.norm == "layer_norm"


def test_celo_preset_reproduces_the_four_task_recipe():
    assert CELO_DATASETS == ("mnist_8", "fashion_mnist_8", "cifar10_jpeg_gray_8", "digits_8")
    families = celo_families()
    assert list(families) == list(CELO_DATASETS)
    for name, family in families.items():
        assert family.level == "global" and family.param_scale_range == (1e-3, 1e3)
        assert family.family.datasets == (name,)
        task = family.sample(jax.random.PRNGKey(0))
        assert isinstance(task, ReparamTask) and isinstance(task.task, Task)
        inner = task.task
        assert (inner.model, inner.hidden, inner.activation, inner.norm) == ("mlp", (32,), "relu", "none")
        assert inner.image_shape == (8, 8, 1) and inner.num_classes == 10 and inner.batch_size == 64
        # global level: one scale for every tensor, inside [1e-3, 1e3]
        scales = {float(s) for s in jax.tree_util.tree_leaves(task.log_scale)}
        assert len(scales) == 1 and abs(scales.pop()) <= np.log(1e3) + 1e-6
    single = celo_family()
    assert single.family.datasets == CELO_DATASETS
    tasks = jax.vmap(single.sample)(jax.random.split(jax.random.PRNGKey(0), 64))
    assert set(np.asarray(tasks.task.dataset_index).tolist()) == {0, 1, 2, 3}


def test_family_errors():
    with pytest.raises(ValueError, match="at least one dataset"):
        ImageFamily((), (8, 8, 1), 10, 64)
    with pytest.raises(ValueError, match="unknown activation"):
        ImageFamily(("a",), (8, 8, 1), 10, 64, activation="elu")
    with pytest.raises(ValueError, match="at least one dataset"):
        celo_family(())
