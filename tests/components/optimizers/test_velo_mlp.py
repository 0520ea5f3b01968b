"""velo_mlp: feature channels against a NumPy re-implementation, MLP weights and application, step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.optimizers import features as F
from components.optimizers.velo_mlp import (
    apply_ff,
    feature_groups,
    ff_layers,
    hyper_feature_groups,
    hyper_features,
    init_ff_params,
    normalize_channels,
    param_step,
)

MOM, RMS, FAC = (0.9, 0.99, 0.999), (0.999,), (0.9, 0.99, 0.999)

# ----------------------------------------------------------------------------- NumPy reference
# The reference's formulation: decay index as a trailing axis, row/column statistics tiled to the
# full tensor, features concatenated along the last axis (research/algorithms.md §1.1, §2.1).


def np_factored_dims(shape):
    if len(shape) < 2:
        return None
    by_size = sorted(range(len(shape)), key=lambda axis: shape[axis])  # stable
    return by_size[-2], by_size[-1]


def np_features(p, grads, mom=MOM, rms=RMS, fac=FAC):
    """Runs the accumulators over ``grads`` and returns the feature stack ``[*shape, C]``."""
    p = np.asarray(p, np.float64)
    shape = p.shape
    bm, br, bf = np.asarray(mom), np.asarray(rms), np.asarray(fac)
    m = np.zeros(shape + (len(bm),))
    v = np.zeros(shape + (len(br),))
    dims = np_factored_dims(shape)
    if dims is None:
        vf = np.zeros(shape + (len(bf),))
    else:
        d1, d0 = dims
        vr = np.zeros(tuple(np.delete(shape, d0)) + (len(bf),))
        vc = np.zeros(tuple(np.delete(shape, d1)) + (len(bf),))
    for g in grads:
        g = np.asarray(g, np.float64)
        ge = g[..., None]
        m = bm * m + (1 - bm) * ge
        v = br * v + (1 - br) * ge**2
        gsq = ge**2 + 1e-30
        if dims is None:
            vf = bf * vf + (1 - bf) * gsq
            fac_g = ge / np.sqrt(np.maximum(vf + 1e-9, 1e-9))
        else:
            vr = bf * vr + (1 - bf) * gsq.mean(axis=d0)
            vc = bf * vc + (1 - bf) * gsq.mean(axis=d1)
            d1r = d1 - 1 if d1 > d0 else d1
            row_f = 1 / np.sqrt(np.maximum(vr / (vr.mean(axis=d1r, keepdims=True) + 1e-9), 1e-9))
            col_f = 1 / np.sqrt(np.maximum(vc, 1e-9))
            row_f, col_f = np.expand_dims(row_f, d0), np.expand_dims(col_f, d1)
            fac_g = ge * row_f * col_f
    rs = 1 / np.sqrt(v + 1e-6)
    inps = [ge, np.clip(ge, -0.1, 0.1), p[..., None], m, v, m * rs, rs, fac_g, ge * rs]
    if dims is None:
        inv = 1 / np.sqrt(vf + 1e-8)
        inps += [vf, vf, inv, inv, m * vf**-0.5]
    else:
        row = np.broadcast_to(np.expand_dims(vr, d0), shape + (len(bf),))
        col = np.broadcast_to(np.expand_dims(vc, d1), shape + (len(bf),))
        inps += [row, col, 1 / np.sqrt(row + 1e-8), 1 / np.sqrt(col + 1e-8), m * row_f * col_f]
    return np.concatenate([np.broadcast_to(x, shape + (x.shape[-1],)) for x in inps], axis=-1)


def jax_features(p, grads, mom=MOM, rms=RMS, fac=FAC):
    p = jnp.asarray(p, jnp.float32)
    momentum = F.init_momentum(p, len(mom))
    rms_acc = F.init_rms(p, len(rms))
    factored = F.init_factored(p, len(fac))
    for g in grads:
        g = jnp.asarray(g, jnp.float32)
        momentum = F.update_momentum(momentum, g, jnp.asarray(mom))
        rms_acc = F.update_rms(rms_acc, g, jnp.asarray(rms))
        factored, fac_g = F.update_factored(factored, g, jnp.asarray(fac))
    return hyper_features(p, g, momentum, rms_acc, fac_g, factored)


SHAPES = [(), (3,), (4, 3), (2, 1, 3, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
def test_features_match_numpy(shape):
    rng = np.random.default_rng(len(shape))
    p = rng.normal(size=shape)
    grads = [rng.normal(size=shape) * 0.3 for _ in range(3)]
    expected = np_features(p, grads)
    got = jax_features(p, grads)
    assert len(got) == expected.shape[-1] == 30
    for c, channel in enumerate(got):
        np.testing.assert_allclose(
            np.broadcast_to(np.asarray(channel), shape), expected[..., c], rtol=2e-4, atol=1e-6, err_msg=f"ch {c}"
        )


def test_feature_groups_default_layout():
    groups = feature_groups(3, 1, 3)
    assert groups == (1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)
    assert sum(groups) == 30


@pytest.mark.parametrize("counts", [(3, 1, 3), (1, 2, 2), (2, 2, 1)])
@pytest.mark.parametrize("shape", [(3,), (4, 3)])
def test_feature_groups_match_traced_features(counts, shape):
    p = jnp.ones(shape)
    n_m, n_v, n_a = counts
    grouped = hyper_feature_groups(
        p,
        p,
        F.init_momentum(p, n_m),
        F.init_rms(p, n_v),
        tuple(p for _ in range(n_a)),
        F.init_factored(p, n_a),
    )
    assert tuple(len(g) for g in grouped) == feature_groups(*counts)


def test_feature_groups_errors():
    with pytest.raises(ValueError, match="numbers of decays must be equal or one of them 1"):
        feature_groups(2, 3, 1)
    with pytest.raises(ValueError, match="positive integer decay counts"):
        feature_groups(0, 1, 1)


def test_init_ff_params_layout_and_scale():
    groups = feature_groups(3, 1, 3)
    ff = init_ff_params(jax.random.key(0), groups, hidden_size=5, hidden_layers=2, num_outputs=3)
    expected = {f"w0__{i}": (w, 5) for i, w in enumerate(groups)}
    expected |= {"w1": (5, 5), "w2": (5, 3), "b0": (5,), "b1": (5,), "b2": (3,)}
    assert {k: v.shape for k, v in ff.items()} == expected
    assert all(v.dtype == jnp.float32 for v in ff.values())
    for b in ("b0", "b1", "b2"):
        np.testing.assert_array_equal(ff[b], 0.0)
    w0 = np.concatenate([ff[f"w0__{i}"] for i in range(len(groups))])
    # truncated at 2 std with std = 1/sqrt(total fan-in)
    assert np.abs(w0).max() <= 2.0 / np.sqrt(30) + 1e-6
    assert np.abs(ff["w1"]).max() <= 2.0 / np.sqrt(5) + 1e-6
    assert 0.5 / np.sqrt(30) < w0.std() < 1.2 / np.sqrt(30)
    # no hidden layers: straight to the outputs
    ff0 = init_ff_params(jax.random.key(1), (2, 1), hidden_layers=0, num_outputs=2)
    assert {k: v.shape for k, v in ff0.items()} == {"w0__0": (2, 2), "w0__1": (1, 2), "b0": (2,)}


def test_init_ff_params_errors():
    with pytest.raises(ValueError, match="groups must be a non-empty"):
        init_ff_params(jax.random.key(0), ())
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1"):
        init_ff_params(jax.random.key(0), (1,), hidden_size=0)
    with pytest.raises(ValueError, match="num_outputs must be an int >= 2"):
        init_ff_params(jax.random.key(0), (1,), num_outputs=1)


@pytest.mark.parametrize("shape", [(), (3,), (4, 3), (2, 1, 3, 2)], ids=lambda s: f"{len(s)}d")
def test_apply_ff_equals_stacked_matmul(shape):
    groups = feature_groups(3, 1, 3)
    ff = init_ff_params(jax.random.key(3), groups)
    ff = {k: v + 0.1 * (i + 1) if k.startswith("b") else v for i, (k, v) in enumerate(ff.items())}
    rng = np.random.default_rng(0)
    p = rng.normal(size=shape)
    grads = [rng.normal(size=shape) for _ in range(2)]
    inputs = normalize_channels(jax_features(p, grads))
    got = apply_ff(ff, inputs, groups)
    stack = np.stack([np.broadcast_to(np.asarray(x, np.float64), shape) for x in inputs], axis=-1)
    w0 = np.concatenate([np.asarray(ff[f"w0__{i}"]) for i in range(len(groups))])
    h = np.maximum(stack @ w0 + np.asarray(ff["b0"]), 0)
    h = np.maximum(h @ np.asarray(ff["w1"]) + np.asarray(ff["b1"]), 0)
    out = h @ np.asarray(ff["w2"]) + np.asarray(ff["b2"])
    assert len(got) == 3
    for k in range(3):
        assert got[k].shape == shape
        np.testing.assert_allclose(got[k], out[..., k], rtol=1e-4, atol=1e-5)


def test_ff_layers_concatenate_the_first_layer_in_group_order():
    groups = feature_groups(3, 1, 3)
    ff = init_ff_params(jax.random.key(2), groups, hidden_size=5, hidden_layers=2)
    layers = ff_layers(ff, groups)
    assert [(w.shape, b.shape) for w, b in layers] == [((30, 5), (5,)), ((5, 5), (5,)), ((5, 3), (3,))]
    np.testing.assert_array_equal(layers[0][0], np.concatenate([ff[f"w0__{i}"] for i in range(len(groups))]))
    assert layers[1][0] is ff["w1"] and layers[2][1] is ff["b2"]
    with pytest.raises(ValueError, match=r"mismatched w0__i: \[\(1, \(2, 5\)\)\]"):
        ff_layers(ff | {"w0__1": jnp.ones((2, 5))}, groups)


def test_apply_ff_errors():
    groups = feature_groups(3, 1, 3)
    ff = init_ff_params(jax.random.key(0), groups)
    with pytest.raises(ValueError, match="expected 30 input channels"):
        apply_ff(ff, [jnp.ones(3)] * 29, groups)
    stacked = jax.vmap(lambda k: init_ff_params(k, groups))(jax.random.split(jax.random.key(0), 2))
    with pytest.raises(ValueError, match="without a leading bank axis"):
        apply_ff(stacked, [jnp.ones(3)] * 30, groups)


def test_normalize_channels_by_hand():
    x = jnp.array([[3.0, 4.0]])  # mean(x²) = 12.5
    row = jnp.array([[2.0], [2.0]])  # un-broadcast channel: same normaliser as the tiled one
    nx, nrow = normalize_channels([x, row])
    np.testing.assert_allclose(nx, x / np.sqrt(12.5 + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(nrow, row / np.sqrt(4.0 + 1e-5), rtol=1e-6)


def test_param_step_by_hand():
    d = jnp.array([1.0, -2.0])
    s = jnp.array([0.0, 1000.0])
    p = jnp.array([3.0, 4.0])  # RMS(p) = sqrt(12.5 + 1e-9)
    step = param_step(d, s, p, exp_mult=0.001, step_mult=0.01)
    np.testing.assert_allclose(step, [0.01 * np.sqrt(12.5), -2 * np.e * 0.01 * np.sqrt(12.5)], rtol=1e-6)
    step = param_step(d, s, p, exp_mult=0.001, step_mult=0.01, param_scale_mult=False)
    np.testing.assert_allclose(step, [0.01, -2 * np.e * 0.01], rtol=1e-6)


def test_per_tensor_weights_and_jit():
    """Different weights per tensor (VeLO's hypernetwork) work under jit with traced weights."""
    groups = feature_groups(3, 1, 3)
    ff = init_ff_params(jax.random.key(0), groups)
    inputs = [jnp.linspace(-1, 1, 6).reshape(2, 3)] * 30
    f = jax.jit(lambda w, xs: apply_ff(w, xs, groups)[0])
    a = f(ff, inputs)
    b = f(jax.tree.map(lambda w: 2.0 * w, ff), inputs)
    assert np.all(np.isfinite(a)) and not np.allclose(a, b)


@pytest.mark.parametrize("shape", [(), (3,)], ids=lambda s: f"{len(s)}d")
def test_features_finite_with_zero_gradient(shape):
    """The un-factored ``m·(v^a)^−½`` channel (no epsilon, as the reference) stays finite at g = 0."""
    p = np.ones(shape)
    feats = jax_features(p, [np.zeros(shape)])
    assert all(np.all(np.isfinite(f)) for f in feats)
    assert all(np.all(np.isfinite(f)) for f in normalize_channels(feats))
