"""Tasks: smoke tests on abstract batches, batching over a family, reparametrisation, conv correctness."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.tasks import SUITES, ImageMLPFamily, build_task, models, normalize_loss, stack_datasets


@pytest.mark.parametrize("name", SUITES["legacy"])
def test_eval_task_shapes_on_abstract_batches(name):
    task = build_task(name, batch_size=16)
    params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    batch = (jax.ShapeDtypeStruct((16, 8, 8, 1), jnp.float32), jax.ShapeDtypeStruct((16,), jnp.int32))
    loss = jax.eval_shape(task.loss, params, batch)
    assert loss.shape == () and loss.dtype == jnp.float32
    grads = jax.eval_shape(jax.grad(task.loss), params, batch)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def test_family_samples_batch_under_vmap_and_use_their_dataset():
    (xa, ya), (xb, yb) = _data(64, 0), _data(40, 1)
    data = stack_datasets([xa, xb], [ya, yb])
    assert data.x.shape == (2, 64, 8, 8, 1) and list(np.asarray(data.n)) == [64, 40]
    family = ImageMLPFamily(("a", "b"), (16,), (8, 8, 1), 10, 8, param_scale_range=(0.5, 2.0))
    tasks = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(0), 32))
    assert set(np.asarray(tasks.dataset_index).tolist()) == {0, 1}
    scales = np.exp(np.asarray(tasks.log_scale))
    assert scales.min() >= 0.5 - 1e-6 and scales.max() <= 2.0 + 1e-6

    def loss(task, key):
        k1, k2 = jax.random.split(key)
        return task.loss(task.init(k1), task.batch(data, k2))

    losses = jax.vmap(loss)(tasks, jax.random.split(jax.random.PRNGKey(1), 32))
    assert losses.shape == (32,) and bool(jnp.all(jnp.isfinite(losses)))
    # a task of dataset b only ever sees rows < 40 (no padding)
    task_b = family.sample(jax.random.PRNGKey(0))
    task_b = dataclasses.replace(task_b, dataset_index=jnp.int32(1), log_scale=jnp.float32(0.0))
    xs, _ = task_b.batch(data, jax.random.PRNGKey(5))
    assert bool(jnp.all(jnp.any(xs[:, None] == jnp.asarray(xb)[None], axis=(2, 3, 4)).any(axis=1)))


def test_reparametrisation_keeps_the_network_function():
    family = ImageMLPFamily(("a",), (16,), (8, 8, 1), 10, 8)
    task = family.sample(jax.random.PRNGKey(0))
    x, y = _data(8)
    params = task.init(jax.random.PRNGKey(1))
    scaled = dataclasses.replace(task, log_scale=jnp.float32(np.log(10.0)))
    stored = jax.tree_util.tree_map(lambda w: w / 10.0, params)
    np.testing.assert_allclose(task.loss(params, (x, y)), scaled.loss(stored, (x, y)), rtol=1e-5)


def test_conv_im2col_matches_lax_conv():
    key = jax.random.PRNGKey(0)
    params = models.init_conv(key, (8, 8, 3), (4, 5), 10)
    x = jax.random.normal(key, (2, 8, 8, 3))
    h = x
    for i in range(2):
        layer = params[f"conv{i}"]
        out = jax.lax.conv_general_dilated(h, layer["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(out + layer["b"])
    ref = h.mean((1, 2)) @ params["head"]["w"] + params["head"]["b"]
    np.testing.assert_allclose(models.apply_conv(params, x), ref, rtol=1e-5, atol=1e-5)


def test_normalized_loss_clips_and_maps_nonfinite_to_max():
    hi = 1.5 * np.log(10)
    out = normalize_loss(jnp.array([-1.0, 1.0, 100.0, jnp.nan, jnp.inf]), 10)
    np.testing.assert_allclose(out, [0.0, 1.0, hi, hi, hi], rtol=1e-6)
