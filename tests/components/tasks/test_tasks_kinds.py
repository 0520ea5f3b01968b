"""Every task kind through one conformance table: init / batch / loss / grad / accuracy under jit and
vmap over seeds (the task itself a jit argument), documented shapes, the normaliser, num_params.

Shapes are tiny and data synthetic: no test reads the dataset mirror.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.tasks import (
    CharLMTask,
    Task,
    TokenData,
    finetune,
    linear_model,
    noisy_quadratic,
    num_params,
    reparametrize,
    stack_datasets,
    with_batch_size,
)

SEEDS = 3
F32, I32 = jnp.float32, jnp.int32


def _images(shape, n=40, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return stack_datasets([rng.random((n, *shape)).astype(np.float32)], [rng.integers(0, classes, n).astype(np.int32)])


def _tokens(n=200, vocab=11, seed=0):
    return TokenData(jnp.asarray(np.random.default_rng(seed).integers(0, vocab, n), jnp.int32))


def _finetune_task():
    src = Task("src", "mlp", (8,), "relu", (4, 4, 1), 7, 5)
    pretrained = src.init(jax.random.PRNGKey(9))
    return finetune(Task("tgt", "mlp", (8,), "relu", (4, 4, 1), 10, 5), pretrained)


@dataclasses.dataclass(frozen=True)
class Case:
    """A task, its data, and the batch it documents: a tuple of (shape, dtype) per leaf."""

    make: Callable[[], Any]
    data: Callable[[], Any]
    batch: tuple[tuple[tuple[int, ...], Any], ...]
    max_normalized: float


LOG10 = 1.5 * math.log(10)
TASKS_UNDER_TEST = {
    # images [B, H, W, C] float32, labels [B] int32
    "mlp_relu": Case(
        lambda: Task("t", "mlp", (8,), "relu", (4, 4, 1), 10, 5),
        lambda: _images((4, 4, 1)),
        (((5, 4, 4, 1), F32), ((5,), I32)),
        LOG10,
    ),
    "mlp_gelu_layer_norm_rgb": Case(
        lambda: Task("t", "mlp", (8, 6), "gelu", (4, 4, 3), 10, 5, norm="layer_norm"),
        lambda: _images((4, 4, 3)),
        (((5, 4, 4, 3), F32), ((5,), I32)),
        LOG10,
    ),
    "conv_layer_norm_downsample": Case(
        lambda: Task("t", "conv", (4, 6), "tanh", (6, 6, 2), 10, 5, norm="layer_norm", downsample=True),
        lambda: _images((6, 6, 2)),
        (((5, 6, 6, 2), F32), ((5,), I32)),
        LOG10,
    ),
    # MNIST-1D-like signals [B, L] float32
    "mnist1d_conv1d": Case(
        lambda: Task("t", "conv1d", (4, 4), "relu", (12,), 10, 5, kernel_size=5, norm="layer_norm", downsample=True),
        lambda: _images((12,)),
        (((5, 12), F32), ((5,), I32)),
        LOG10,
    ),
    # (inputs, targets) [B, T] int32
    "char_lm": Case(
        lambda: CharLMTask("lm", vocab_size=11, context=8, width=16, depth=1, heads=2, batch_size=4),
        _tokens,
        (((4, 8), I32), ((4, 8), I32)),
        1.5 * math.log(11),
    ),
    # ξ [B, d] float32
    "noisy_quadratic": Case(lambda: noisy_quadratic(6, batch_size=2), lambda: None, (((2, 6), F32),), 1.5),
    "noisy_quadratic_rotated": Case(
        lambda: noisy_quadratic(6, batch_size=2, rotate_key=jax.random.PRNGKey(1)), lambda: None, (((2, 6), F32),), 1.5
    ),
    # (x [B, d] float32, y [B] float32)
    "least_squares_finite": Case(
        lambda: linear_model(jax.random.PRNGKey(0), "least_squares", 5, batch_size=6, num_examples=20),
        lambda: None,
        (((6, 5), F32), ((6,), F32)),
        1.5,
    ),
    "logistic_streaming": Case(
        lambda: linear_model(jax.random.PRNGKey(0), "logistic", 5, batch_size=6, l2=1e-3),
        lambda: None,
        (((6, 5), F32), ((6,), F32)),
        1.5 * math.log(2),
    ),
    # wrappers keep the wrapped task's shapes
    "finetune_mlp": Case(_finetune_task, lambda: _images((4, 4, 1)), (((5, 4, 4, 1), F32), ((5,), I32)), LOG10),
    "reparam_parameter_mlp_1d": Case(
        lambda: reparametrize(Task("t", "mlp", (8,), "relu", (12,), 10, 5), jax.random.PRNGKey(2), "parameter"),
        lambda: _images((12,)),
        (((5, 12), F32), ((5,), I32)),
        LOG10,
    ),
    "reduced_batch_reparam_quadratic": Case(
        lambda: with_batch_size(reparametrize(noisy_quadratic(6, batch_size=4), jax.random.PRNGKey(3)), 1),
        lambda: None,
        (((1, 6), F32),),
        1.5,
    ),
}


SPECIAL_LOSSES = (np.nan, np.inf, -1.0, 1e9)


def _step(task, key, data):
    k_init, k_batch = jax.random.split(key)
    params = task.init(k_init)
    batch = task.batch(data, k_batch)
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    special = task.normalized_loss(jnp.asarray(SPECIAL_LOSSES, jnp.float32))
    return params, batch, loss, grads, task.accuracy(params, batch), task.normalized_loss(loss), special


@pytest.mark.parametrize("case_id", sorted(TASKS_UNDER_TEST))
def test_task_protocol_under_jit_and_vmap_over_seeds(case_id):
    case = TASKS_UNDER_TEST[case_id]
    task, data = case.make(), case.data()
    keys = jax.random.split(jax.random.PRNGKey(0), SEEDS)
    # the task and the data are arguments of the compiled program, seeds a vmapped axis
    out = jax.jit(jax.vmap(_step, in_axes=(None, 0, None)))(task, keys, data)
    params, batch, loss, grads, acc, norm, special = jax.tree_util.tree_map(np.asarray, out)

    got = tuple((leaf.shape, leaf.dtype) for leaf in jax.tree_util.tree_leaves(batch))
    assert got == tuple(((SEEDS, *shape), dtype) for shape, dtype in case.batch)
    assert loss.shape == (SEEDS,) and loss.dtype == F32 and np.isfinite(loss).all()
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    for g, p in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(params)):
        assert g.shape == p.shape and p.dtype == F32 and np.isfinite(g).all()
    assert sum(np.abs(g).sum() for g in jax.tree_util.tree_leaves(grads)) > 0
    # different seeds give different initialisations and batches
    assert not np.allclose(loss[0], loss[1:])
    assert acc.shape == (SEEDS,)
    if task.has_accuracy:
        assert ((acc >= 0) & (acc <= 1)).all()
    else:
        assert np.isnan(acc).all()
    hi = case.max_normalized
    assert ((norm >= 0) & (norm <= hi + 1e-6)).all()
    # the normaliser maps non-finite losses to its maximum and clips to [0, max]
    np.testing.assert_allclose(special[0], [hi, hi, 0.0, hi], rtol=1e-6)
    # num_params (eval_shape, no data) matches the arrays init returns
    assert num_params(task) == sum(p[0].size for p in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("case_id", ["noisy_quadratic", "finetune_mlp"])
def test_tasks_are_pytrees_that_vmap_as_populations(case_id):
    case = TASKS_UNDER_TEST[case_id]
    task = case.make()
    pop = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), task)  # a batch of 2 identical tasks
    assert type(pop) is type(task)
    loss = jax.vmap(lambda t, k: t.loss(t.init(k), t.batch(case.data(), k)))(
        pop, jax.random.split(jax.random.PRNGKey(0))
    )
    assert loss.shape == (2,)


def test_invalid_task_configurations_raise():
    with pytest.raises(ValueError, match="unknown model 'rnn'"):
        Task("t", "rnn", (8,), "relu", (4, 4, 1), 10, 5)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Task("t", "mlp", (8,), "swish", (4, 4, 1), 10, 5)
    with pytest.raises(ValueError, match="unknown norm 'batch_norm'"):
        Task("t", "mlp", (8,), "relu", (4, 4, 1), 10, 5, norm="batch_norm")
    with pytest.raises(ValueError, match=r"'conv' needs image_shape \(H, W, C\)"):
        Task("t", "conv", (8,), "relu", (40,), 10, 5)
    with pytest.raises(ValueError, match="multiple of heads"):
        CharLMTask("lm", 11, 8, 10, 1, 3, 4)
    with pytest.raises(ValueError, match="token_range"):
        CharLMTask("lm", 11, 8, 16, 1, 2, 4, token_range=(0.5, 0.5))
    with pytest.raises(ValueError, match="unknown linear model kind"):
        linear_model(jax.random.PRNGKey(0), "hinge", 5)
    with pytest.raises(ValueError, match="unknown spectrum kind"):
        noisy_quadratic(4, spectrum_kind="cubic")
