"""The shared feature module against hand-computed values on 0-D, 1-D, 2-D and 4-D tensors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.optimizers import features as F
from components.optimizers import lstm

SHAPES = {"0d": (), "1d": (5,), "2d": (4, 3), "4d": (3, 3, 2, 4)}


def _rand(shape, seed):
    return np.asarray(np.random.default_rng(seed).normal(size=shape), np.float32)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_momentum_and_rms_accumulators(shape):
    g1, g2 = _rand(shape, 1), _rand(shape, 2)
    decays = jnp.asarray([0.5, 0.9])
    m = F.update_momentum(F.init_momentum(jnp.zeros(shape), 2), g1, decays)
    m = F.update_momentum(m, g2, decays)
    v = F.update_rms(F.init_rms(jnp.zeros(shape), 2), g1, decays)
    v = F.update_rms(v, g2, decays)
    for k, b in enumerate([0.5, 0.9]):
        np.testing.assert_allclose(m[k], b * (1 - b) * g1 + (1 - b) * g2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(v[k], b * (1 - b) * g1**2 + (1 - b) * g2**2, rtol=1e-5, atol=1e-7)
        assert m[k].shape == shape and m[k].dtype == jnp.float32


def test_rms_decay_is_clipped_to_unit_interval():
    v = F.update_rms(F.init_rms(jnp.zeros(2), 1), jnp.asarray([2.0, 3.0]), jnp.asarray([1.5]))
    np.testing.assert_allclose(v[0], [0.0, 0.0])  # β̄ = 1: the accumulator keeps its (zero) value


def test_mismatched_decays_raise():
    with pytest.raises(ValueError, match="expected a vector of 2 decays"):
        F.update_momentum(F.init_momentum(jnp.zeros(3), 2), jnp.ones(3), jnp.asarray([0.9]))


@pytest.mark.parametrize(
    ("shape", "dims"), [((), None), ((5,), None), ((4, 3), (1, 0)), ((3, 3, 2, 4), (1, 3))], ids=SHAPES.keys()
)
def test_factored_dims_are_the_two_largest_axes(shape, dims):
    assert F.factored_dims(shape) == dims


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_factored_accumulator_matches_a_direct_computation(shape):
    g = _rand(shape, 3)
    beta = 0.9
    acc, fac_g = F.update_factored(F.init_factored(jnp.zeros(shape), 1), g, jnp.asarray([beta]))
    g2 = g.astype(np.float64) ** 2 + 1e-30
    dims = F.factored_dims(shape)
    if dims is None:
        v = (1 - beta) * g2
        np.testing.assert_allclose(acc.v_full[0], v, rtol=1e-6)
        np.testing.assert_allclose(fac_g[0], g / np.sqrt(np.maximum(v + 1e-9, 1e-9)), rtol=1e-5)
        return
    d1, d0 = dims
    row = (1 - beta) * g2.mean(axis=d0)  # reduces the largest axis
    col = (1 - beta) * g2.mean(axis=d1)  # reduces the second largest axis
    np.testing.assert_allclose(acc.v_row[0], row, rtol=1e-5)
    np.testing.assert_allclose(acc.v_col[0], col, rtol=1e-5)
    d1_in_row = d1 - 1 if d1 > d0 else d1
    row_factor = 1 / np.sqrt(np.maximum(row / (row.mean(axis=d1_in_row, keepdims=True) + 1e-9), 1e-9))
    col_factor = 1 / np.sqrt(np.maximum(col, 1e-9))
    expected = g * np.expand_dims(row_factor, d0) * np.expand_dims(col_factor, d1)
    np.testing.assert_allclose(fac_g[0], expected, rtol=1e-4)
    # the factored second moment reconstructs g² exactly for a rank-one g²
    u, w = np.abs(_rand(shape[d1], 4)) + 0.1, np.abs(_rand(shape[d0], 5)) + 0.1
    if len(shape) == 2:
        rank1 = np.sqrt(np.outer(u, w) if d1 == 0 else np.outer(w, u)).astype(np.float32)
        _, fac = F.update_factored(F.init_factored(jnp.zeros(shape), 1), rank1, jnp.asarray([0.0]))
        np.testing.assert_allclose(fac[0], np.sign(rank1), rtol=1e-3)  # g / sqrt(V̂) = ±1


def test_second_moment_normalizer_and_inverse_rms():
    x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
    expected = np.asarray(x) / np.sqrt(1e-5 + (9 + 16) / 4)
    np.testing.assert_allclose(F.second_moment_normalizer(x), expected, rtol=1e-6)
    np.testing.assert_allclose(x * F.inverse_rms(x), expected, rtol=1e-6)
    np.testing.assert_allclose(F.second_moment_normalizer(jnp.asarray(2.0)), 2.0 / np.sqrt(4 + 1e-5), rtol=1e-6)
    per_row = F.second_moment_normalizer(x, axis=1)
    np.testing.assert_allclose(per_row[0], np.asarray([3.0, 4.0]) / np.sqrt(1e-5 + 12.5), rtol=1e-6)


def test_step_embeddings():
    np.testing.assert_allclose(F.tanh_step_embedding(3)[:3], np.tanh([3 / 1 - 1, 3 / 3 - 1, 3 / 10 - 1]), rtol=1e-6)
    assert F.tanh_step_embedding(0).shape == (len(F.TANH_TIMESCALES),) == (11,)
    emb = F.fractional_tanh_embedding(50, 100)
    np.testing.assert_allclose(emb, np.tanh(10 * (0.5 - np.asarray(F.FRACTION_SHIFTS))), rtol=1e-6)
    assert emb.shape == (9,)
    traced = jax.jit(F.fractional_tanh_embedding)(jnp.int32(50), jnp.int32(100))
    np.testing.assert_allclose(traced, emb, rtol=1e-6)


def _reference_loss_buffer(losses, num_steps):
    """A direct NumPy transcription of §0.2's loss-buffer rules (float32, like the optimizer state).

    The features divide differences of nearly equal EMAs, so they are only reproducible at the
    precision the state is kept in.
    """
    f32 = np.float32
    half = np.logspace(1, np.log10(num_steps), 10).astype(f32)
    decays = np.exp(f32(-1.0) / half).astype(f32)
    means, rmin, it = np.zeros(10, f32), np.full(10, 999999999999.0, f32), 0
    for loss in map(f32, losses):
        cor = means / (1 - decays ** (it + 1))
        approx_max = loss if it == 0 else cor.max()
        loss = min(2 * abs(approx_max), loss)
        means = decays * means + (1 - decays) * loss
        rmin = np.minimum(rmin, means / (1 - decays ** (it + 1)))
        it += 1
    cor = means / (1 - decays ** f32(it))
    feats = np.clip((cor[:-1] - rmin[:-1]) / np.maximum(f32(1e-8), cor[1:] - rmin[:-1]) - 1, -1, 1)
    return feats * (it > 2), means, rmin


def test_loss_buffer_matches_the_rules():
    # 50.0 is clipped to 2·max; the loss rises again at the end so the features leave the clip
    losses = [2.3, 2.0, 50.0, 1.5, 1.4, 1.6, 1.1, 0.9, 1.0, 0.7, 1.2, 1.5, 1.9, 2.2, 2.4]
    state = F.init_loss_buffer(1000)
    feats = []
    for loss in losses:
        state = F.update_loss_buffer(state, loss)
        feats.append(F.loss_buffer_features(state))
    expected, means, rmin = _reference_loss_buffer(losses, 1000)
    np.testing.assert_allclose(state.means, means, rtol=1e-4)
    np.testing.assert_allclose(state.running_min, rmin, rtol=1e-4)
    np.testing.assert_allclose(feats[-1], expected, atol=1e-3)
    assert np.any(np.abs(expected) < 0.99)  # not every feature is at the clip
    assert np.all(np.asarray(feats[1]) == 0)  # forced to 0 for the first 2 steps
    assert int(state.iteration) == len(losses)
    # the clip: after 2.3 and 2.0 the third loss enters as at most 2·max(bias-corrected means)
    s = F.update_loss_buffer(F.update_loss_buffer(F.init_loss_buffer(1000), 2.3), 2.0)
    s3 = F.update_loss_buffer(s, 50.0)
    cor = np.asarray(s.means) / (1 - np.asarray(s.decays) ** 3)
    np.testing.assert_allclose(
        s3.means, np.asarray(s.decays) * s.means + (1 - np.asarray(s.decays)) * 2 * cor.max(), rtol=1e-5
    )


def test_loss_buffer_with_traced_num_steps():
    @jax.jit
    def run(num_steps):
        s = F.init_loss_buffer(num_steps)
        s = jax.lax.fori_loop(0, 8, lambda i, s: F.update_loss_buffer(s, 1.0 + jnp.sin(i + 0.0)), s)
        return F.loss_buffer_features(s)

    expected, _, _ = _reference_loss_buffer([1.0 + np.sin(i) for i in range(8)], 200)
    np.testing.assert_allclose(run(jnp.int32(200)), expected, atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_clip_gradient_and_param_scale(shape):
    x = 2000.0 * _rand(shape, 7)
    np.testing.assert_array_equal(F.clip_gradient(x), np.clip(x, -1000.0, 1000.0))
    np.testing.assert_allclose(F.param_scale(x), np.sqrt(np.mean(x.astype(np.float64) ** 2) + 1e-9), rtol=1e-5)


def test_decay_reparametrisation_round_trips():
    b = jnp.asarray([0.1, 0.9, 0.999])
    np.testing.assert_allclose(F.decay_to_param(b), np.log(1 - np.asarray(b)) / 10, rtol=1e-6)
    np.testing.assert_allclose(F.param_to_decay(F.decay_to_param(b)), b, rtol=1e-5)


def test_lstm_step_is_haikus_lstm():
    key = jax.random.key(0)
    w = lstm.init_lstm(key, 3, 2)
    w = {"w": w["w"], "b": jnp.arange(8.0) * 0.1}
    x = jnp.asarray([[0.5, -1.0, 2.0]])
    state = lstm.LSTMState(jnp.asarray([[0.1, -0.2]]), jnp.asarray([[0.3, 0.4]]))
    h, new = lstm.lstm_step(w, x, state)
    z = np.concatenate([np.asarray(x), np.asarray(state.hidden)], -1) @ np.asarray(w["w"]) + np.asarray(w["b"])
    i, g, f, o = np.split(z, 4, -1)
    sig = lambda a: 1 / (1 + np.exp(-a))
    c = sig(f + 1) * np.asarray(state.cell) + sig(i) * np.tanh(g)
    np.testing.assert_allclose(new.cell, c, rtol=1e-5)
    np.testing.assert_allclose(h, sig(o) * np.tanh(c), rtol=1e-5)
    assert w["w"].shape == (5, 8)


def test_mix_tensors_pools_over_rows():
    weights = lstm.init_mix(jax.random.key(1), 3, 4)
    x = jax.random.normal(jax.random.key(2), (5, 3))
    out = lstm.mix_tensors(weights, x)
    mix = np.maximum(np.asarray(x) @ np.asarray(weights["mix"]["w"]) + np.asarray(weights["mix"]["b"]), 0)
    expected = np.asarray(x) @ np.asarray(weights["input"]["w"]) + mix.max(0, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
