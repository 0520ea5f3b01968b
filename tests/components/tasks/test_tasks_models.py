"""Models against reference implementations; the char-LM's loss at initialisation, causality and data range."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.tasks import CharLMTask, TokenData, models, token_windows
from components.tasks.language import token_bounds


def test_conv_stride2_and_layer_norm_match_lax_conv():
    key = jax.random.PRNGKey(0)
    params = models.init_conv(key, (7, 7, 2), (3, 4), 10, layer_norm=True)
    params["conv1"]["ln_scale"] = jnp.arange(1.0, 5.0)  # non-trivial affine
    x = jax.random.normal(key, (2, 7, 7, 2))
    h = x
    for i, stride in enumerate((1, 2)):
        layer = params[f"conv{i}"]
        out = jax.lax.conv_general_dilated(
            h, layer["w"], (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        out = out + layer["b"]
        mean, var = out.mean((1, 2, 3), keepdims=True), out.var((1, 2, 3), keepdims=True)
        out = (out - mean) / jnp.sqrt(var + models.LAYER_NORM_EPS) * layer["ln_scale"] + layer["ln_offset"]
        h = jax.nn.relu(out)
    assert h.shape == (2, 4, 4, 4)  # 7 -> ceil(7 / 2)
    ref = h.mean((1, 2)) @ params["head"]["w"] + params["head"]["b"]
    np.testing.assert_allclose(models.apply_conv(params, x, downsample=True), ref, rtol=1e-4, atol=1e-5)


def test_conv1d_matches_lax_conv():
    key = jax.random.PRNGKey(1)
    params = models.init_conv1d(key, 1, (3, 5), 10, kernel_size=5)
    x = jax.random.normal(key, (2, 12))  # [B, L] signals, one channel
    h = x[..., None]
    for i, stride in enumerate((1, 2)):
        layer = params[f"conv{i}"]
        out = jax.lax.conv_general_dilated(h, layer["w"], (stride,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
        h = jnp.tanh(out + layer["b"])
    ref = h.mean(1) @ params["head"]["w"] + params["head"]["b"]
    np.testing.assert_allclose(models.apply_conv1d(params, x, "tanh", downsample=True), ref, rtol=1e-4, atol=1e-5)


def test_mlp_layer_norm_normalises_hidden_units():
    params = models.init_mlp(jax.random.PRNGKey(0), 6, (16,), 3, layer_norm=True)
    assert set(params["dense0"]) == {"w", "b", "ln_scale", "ln_offset"} and set(params["dense1"]) == {"w", "b"}
    x = 100.0 * jax.random.normal(jax.random.PRNGKey(1), (4, 6))
    # the normalised pre-activations have mean 0 and variance 1 per example, whatever the input scale
    pre = x @ params["dense0"]["w"] + params["dense0"]["b"]
    normed = models.layer_norm(pre, params["dense0"]["ln_scale"], params["dense0"]["ln_offset"], (-1,))
    np.testing.assert_allclose(normed.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(normed.var(-1), 1.0, rtol=1e-3)
    np.testing.assert_allclose(
        models.apply_mlp(params, x), jax.nn.relu(normed) @ params["dense1"]["w"] + params["dense1"]["b"], rtol=1e-5
    )


def test_char_lm_loss_at_init_is_about_ln_vocab_and_attention_is_causal():
    vocab = 65
    task = CharLMTask("lm", vocab_size=vocab, context=16, width=32, depth=2, heads=4, batch_size=8)
    data = TokenData(jnp.asarray(np.random.default_rng(0).integers(0, vocab, 500), jnp.int32))

    @jax.jit
    def run(task, data, key):
        params = task.init(key)
        inputs, targets = task.batch(data, key)
        changed = inputs.at[:, 10].set((inputs[:, 10] + 1) % vocab)  # perturb position 10
        return task.loss(params, (inputs, targets)), task.logits(params, inputs), task.logits(params, changed)

    loss, logits, logits_changed = run(task, data, jax.random.PRNGKey(0))
    assert logits.shape == (8, 16, vocab)
    assert abs(float(loss) - math.log(vocab)) < 0.05
    diff = np.abs(np.asarray(logits) - np.asarray(logits_changed)).max(axis=(0, 2))
    assert (diff[:10] == 0).all() and (diff[10:] > 0).all()  # earlier positions cannot see position 10


def test_char_lm_batches_come_from_its_token_range():
    tokens = jnp.arange(1000, dtype=jnp.int32)  # token value = position, so ranges are visible
    second_half = CharLMTask("lm", 1000, 8, 16, 1, 2, 64, token_range=(0.5, 1.0))
    inputs, targets = jax.jit(second_half.batch)(TokenData(tokens), jax.random.PRNGKey(0))
    assert inputs.shape == targets.shape == (64, 8)
    assert int(inputs.min()) >= 500 and int(targets.max()) <= 999
    np.testing.assert_array_equal(targets, inputs + 1)
    assert token_bounds(1000, (0.0, 0.5), 8) == (0, 500)
    with pytest.raises(ValueError, match="holds 5 tokens"):
        token_bounds(10, (0.0, 0.5), 8)


def test_token_windows_are_consecutive_and_capped():
    x, y = token_windows(np.arange(50), 8, max_windows=3)
    assert x.shape == y.shape == (3, 8) and x.dtype == np.int32
    np.testing.assert_array_equal(x.ravel(), np.arange(24))
    np.testing.assert_array_equal(y, x + 1)
    assert token_windows(np.arange(50), 8)[0].shape == (6, 8)
    with pytest.raises(ValueError, match="no window"):
        token_windows(np.arange(5), 8)
