"""Fine-tuning: starts from the given params, re-initialises the head, takes the pre-trained params as
a jit argument (no recompilation for new weights); pretrain lowers the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.tasks import (
    CharLMTask,
    FineTuneTask,
    Task,
    TokenData,
    finetune,
    pretrain,
    pretrain_with_losses,
    stack_datasets,
)


def _images(classes, n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4, 4, 1)).astype(np.float32)
    y = (x.reshape(n, -1).sum(1) > 8).astype(np.int32) % classes  # learnable labels
    return stack_datasets([x], [y])


SOURCE = Task("src", "mlp", (8,), "relu", (4, 4, 1), 3, 16)
TARGET = Task("tgt", "mlp", (8,), "relu", (4, 4, 1), 10, 16)


def test_finetune_starts_from_the_given_params_and_reinits_a_head_of_another_size():
    pretrained = SOURCE.init(jax.random.PRNGKey(0))
    task = finetune(TARGET, pretrained)
    assert task.reinit_head and "dense1" not in task.pretrained  # 3 vs 10 classes: the head is dropped
    params = jax.jit(lambda t, k: t.init(k))(task, jax.random.PRNGKey(5))
    np.testing.assert_array_equal(params["dense0"]["w"], pretrained["dense0"]["w"])
    np.testing.assert_array_equal(params["dense0"]["b"], pretrained["dense0"]["b"])
    fresh_head = TARGET.init(jax.random.PRNGKey(5))["dense1"]
    assert params["dense1"]["w"].shape == (8, 10)
    np.testing.assert_allclose(params["dense1"]["w"], fresh_head["w"], rtol=1e-6)


def test_head_is_kept_or_reinitialised_on_request():
    same = Task("same", "mlp", (8,), "relu", (4, 4, 1), 3, 16)
    pretrained = SOURCE.init(jax.random.PRNGKey(0))
    kept = finetune(same, pretrained)
    assert not kept.reinit_head
    np.testing.assert_array_equal(kept.init(jax.random.PRNGKey(1))["dense1"]["w"], pretrained["dense1"]["w"])
    forced = finetune(same, pretrained, reinit_head=True)
    assert forced.reinit_head
    assert not np.allclose(forced.init(jax.random.PRNGKey(1))["dense1"]["w"], pretrained["dense1"]["w"])


def test_pretrained_params_are_a_jit_argument_not_a_constant():
    traces = []

    @jax.jit
    def first_loss(task, data, key):
        traces.append(1)
        return task.loss(task.init(key), task.batch(data, key))

    data = _images(10)
    a = finetune(TARGET, SOURCE.init(jax.random.PRNGKey(0)))
    b = finetune(TARGET, SOURCE.init(jax.random.PRNGKey(1)))
    la, lb = first_loss(a, data, jax.random.PRNGKey(2)), first_loss(b, data, jax.random.PRNGKey(2))
    assert len(traces) == 1  # new weights, same program
    assert float(la) != float(lb)
    assert isinstance(jax.tree_util.tree_unflatten(*reversed(jax.tree_util.tree_flatten(a))), FineTuneTask)


def test_pretrain_lowers_the_loss_and_is_deterministic():
    data = _images(3)
    params, losses = pretrain_with_losses(SOURCE, data, jax.random.PRNGKey(0), 150, 1e-2)
    assert losses.shape == (150,)
    assert float(losses[-20:].mean()) < 0.7 * float(losses[:5].mean())
    again = pretrain(SOURCE, data, jax.random.PRNGKey(0), 150, 1e-2)
    for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(x, y)
    # fine-tuning from the pre-trained params starts where pre-training ended
    task = finetune(SOURCE, params)
    start = task.loss(task.init(jax.random.PRNGKey(9)), (data.x[0], data.y[0]))
    assert float(start) < float(SOURCE.loss(SOURCE.init(jax.random.PRNGKey(9)), (data.x[0], data.y[0])))


def test_char_lm_fine_tunes_on_another_range_and_keeps_its_head():
    tokens = TokenData(jnp.asarray(np.random.default_rng(0).integers(0, 11, 400), jnp.int32))
    source = CharLMTask("lm", 11, 8, 16, 1, 2, 4, token_range=(0.0, 0.5))
    target = CharLMTask("lm", 11, 8, 16, 1, 2, 4, token_range=(0.5, 1.0))
    pretrained = source.init(jax.random.PRNGKey(0))
    task = finetune(target, pretrained)
    assert not task.reinit_head and task.head_key == "unembed"
    params = task.init(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(params["unembed"]["w"], pretrained["unembed"]["w"])
    assert task.batch(tokens, jax.random.PRNGKey(0))[0].shape == (4, 8)


def test_finetune_errors():
    pretrained = SOURCE.init(jax.random.PRNGKey(0))
    wider = Task("wide", "mlp", (16,), "relu", (4, 4, 1), 3, 16)
    with pytest.raises(ValueError, match=r"outside its head 'dense1'.*\['dense0'\]\['w'\]"):
        finetune(wider, pretrained)
    with pytest.raises(ValueError, match="expected entries"):
        finetune(Task("deep", "mlp", (8, 8), "relu", (4, 4, 1), 3, 16), pretrained)
    with pytest.raises(ValueError, match="pass reinit_head=True or None"):
        finetune(TARGET, pretrained, reinit_head=False)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        pretrain(SOURCE, _images(3), jax.random.PRNGKey(0), 0)
