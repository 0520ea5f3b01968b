"""small_fc_lopt: sizes, features and update against a NumPy re-implementation, vmap, checkpoints."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import SmallFcLOpt, TrainedOptimizer, create_learned, load, save
from components.optimizers import features as F
from components.optimizers.small_fc_lopt import small_fc_features

TIMESCALES = np.array([1, 3, 10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5])

# ----------------------------------------------------------------------------- NumPy reference
# A straightforward re-implementation of the formulas (research/algorithms.md §0.2, §2.3) with the
# decay index as a trailing axis and the MLP as a stacked matmul, as in learned_optimization.


def np_factored_dims(shape):
    if len(shape) < 2:
        return None
    by_size = sorted(range(len(shape)), key=lambda axis: shape[axis])  # stable
    return by_size[-2], by_size[-1]


def np_decays(initial, offset):
    # 1 - exp(10 (log(1 - b0)/10 + offset)) == 1 - (1 - b0) exp(10 offset)
    return 1.0 - (1.0 - np.asarray(initial, np.float64)) * np.exp(10.0 * np.asarray(offset))


class NumpyAccumulators:
    def __init__(self, shape, mom_decays, rms_decays, fac_decays):
        self.shape = shape
        self.bm, self.br = np.asarray(mom_decays), np.clip(rms_decays, 0, 1)
        self.bf = np.clip(fac_decays, 0, 1)
        self.m = np.zeros(shape + (len(mom_decays),))
        self.v = np.zeros(shape + (len(rms_decays),))
        self.dims = np_factored_dims(shape)
        nf = len(fac_decays)
        if self.dims is None:
            self.v_full = np.zeros(shape + (nf,))
        else:
            d1, d0 = self.dims
            self.v_row = np.zeros(tuple(np.delete(shape, d0)) + (nf,))
            self.v_col = np.zeros(tuple(np.delete(shape, d1)) + (nf,))

    def factors(self):
        d1, d0 = self.dims
        d1_in_row = d1 - 1 if d1 > d0 else d1
        row_mean = self.v_row.mean(axis=d1_in_row, keepdims=True)
        row = 1.0 / np.sqrt(np.maximum(self.v_row / (row_mean + 1e-9), 1e-9))
        col = 1.0 / np.sqrt(np.maximum(self.v_col, 1e-9))
        return np.expand_dims(row, d0), np.expand_dims(col, d1)

    def update(self, g):
        g = np.asarray(g, np.float64)[..., None]
        self.m = self.bm * self.m + (1 - self.bm) * g
        self.v = self.br * self.v + (1 - self.br) * g**2
        g_sq = g**2 + 1e-30
        if self.dims is None:
            self.v_full = self.bf * self.v_full + (1 - self.bf) * g_sq
            self.fac_g = g / np.sqrt(np.maximum(self.v_full + 1e-9, 1e-9))
        else:
            d1, d0 = self.dims
            self.v_row = self.bf * self.v_row + (1 - self.bf) * g_sq.mean(axis=d0)
            self.v_col = self.bf * self.v_col + (1 - self.bf) * g_sq.mean(axis=d1)
            row, col = self.factors()
            self.fac_g = g * row * col

    def features(self, p, g):
        """Normalised features, stacked on a trailing axis (28 channels by default)."""
        p = np.asarray(p, np.float64)[..., None]
        g = np.asarray(g, np.float64)[..., None]
        full = self.shape + (self.m.shape[-1],)
        rs = 1.0 / np.sqrt(self.v + 1e-6)
        feats = [g, p, self.m, self.v, self.m * rs, rs, self.fac_g]
        if self.dims is None:
            v = self.v_full
            feats += [
                v,
                v,
                1 / np.sqrt(v + 1e-8),
                1 / np.sqrt(v + 1e-8),
                self.m / np.sqrt(v + 1e-6),
            ]
        else:
            d1, d0 = self.dims
            row = np.broadcast_to(np.expand_dims(self.v_row, d0), full)
            col = np.broadcast_to(np.expand_dims(self.v_col, d1), full)
            row_f, col_f = self.factors()
            feats += [row, col, 1 / np.sqrt(row + 1e-8), 1 / np.sqrt(col + 1e-8)]
            feats += [self.m * row_f * col_f]
        x = np.concatenate(feats, axis=-1)
        axes = tuple(range(len(self.shape)))
        return x / np.sqrt(1e-5 + np.mean(x**2, axis=axes, keepdims=True))


def np_update(nn, features, step, exp_mult=1e-3, step_mult=1e-3):
    t_feats = np.tanh(step / TIMESCALES - 1.0)
    x = np.concatenate([features, np.broadcast_to(t_feats, features.shape[:-1] + (11,))], -1)
    n_layers = len(nn) // 2
    for layer in range(n_layers):
        x = x @ np.asarray(nn[f"w{layer}"], np.float64) + np.asarray(nn[f"b{layer}"], np.float64)
        if layer < n_layers - 1:
            x = np.maximum(x, 0.0)
    return -x[..., 0] * np.exp(exp_mult * x[..., 1]) * step_mult


# ----------------------------------------------------------------------------- fixtures

LOPT = SmallFcLOpt()
SHAPES = [(), (7,), (5, 3), (3, 5), (2, 6, 3, 5)]


def random_meta_params(key, scale=0.3):
    base = LOPT.init_meta_params(jax.random.key(0))
    leaves, treedef = jax.tree.flatten(base)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)],
    )


def random_tree(seed, shapes):
    rng = np.random.default_rng(seed)
    return {f"leaf{i}": jnp.asarray(rng.normal(size=s), jnp.float32) for i, s in enumerate(shapes)}


# ----------------------------------------------------------------------------- sizes


def test_default_sizes_and_197_meta_params():
    meta_params = LOPT.init_meta_params(jax.random.key(0))
    assert LOPT.num_features == 28
    assert LOPT.num_inputs == 28 + len(F.TANH_TIMESCALES) == 39
    assert LOPT.layer_sizes == (39, 4, 4, 2)
    assert sum(x.size for x in jax.tree.leaves(meta_params)) == 197
    assert {k: v.shape for k, v in meta_params["nn"].items()} == {
        "w0": (39, 4),
        "b0": (4,),
        "w1": (4, 4),
        "b1": (4,),
        "w2": (4, 2),
        "b2": (2,),
    }


@pytest.mark.parametrize("shape", SHAPES)
def test_feature_count_is_the_same_for_every_rank(shape):
    param = jax.ShapeDtypeStruct(shape, jnp.float32)
    assert len(jax.eval_shape(LOPT.fresh_channels, param)) == LOPT.num_features


def test_feature_count_follows_the_decays():
    lopt = SmallFcLOpt(initial_momentum_decays=(0.5, 0.9), initial_adafactor_decays=(0.9, 0.99))
    # g, p, m(2), v(1), m*rsqrt(2), rsqrt(1), fac_g(2), row/col/rsqrt row/rsqrt col(4*2), fac_mom(2)
    assert lopt.num_features == 2 + 2 + 1 + 2 + 1 + 2 + 8 + 2
    assert lopt.layer_sizes[0] == lopt.num_features + 11


def test_init_follows_the_reference_scheme():
    meta_params = LOPT.init_meta_params(jax.random.key(3))
    for layer, fan_in in enumerate(LOPT.layer_sizes[:-1]):
        w = np.asarray(meta_params["nn"][f"w{layer}"])
        assert np.all(np.abs(w) <= 2.0 / np.sqrt(fan_in) + 1e-7)  # truncated at 2 std
        assert np.std(w) > 0.3 / np.sqrt(fan_in)
        assert not np.any(meta_params["nn"][f"b{layer}"])
    for name in ("momentum_decays", "rms_decays", "adafactor_decays"):
        assert not np.any(meta_params[name])


def test_config_round_trip():
    lopt = SmallFcLOpt(hidden_size=8, hidden_layers=1, exp_mult=0.01)
    config = json.loads(json.dumps(lopt.config()))
    assert create_learned("small_fc_lopt", **config) == lopt
    assert type(create_learned(lopt.name)) is SmallFcLOpt and type(create_learned("adafac_mlp_lopt")) is SmallFcLOpt


def test_invalid_hyperparameters_raise():
    with pytest.raises(ValueError, match="numbers of decays must be equal or one of them 1"):
        SmallFcLOpt(initial_momentum_decays=(0.9, 0.99), initial_rms_decays=(0.9, 0.99, 0.999))
    with pytest.raises(ValueError, match=r"decays in \[0, 1\)"):
        SmallFcLOpt(initial_rms_decays=(1.5,))
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        SmallFcLOpt(hidden_size=0)
    with pytest.raises(TypeError, match="must be an int"):
        SmallFcLOpt(hidden_layers=2.5)


def test_make_rejects_bad_arguments():
    meta_params = LOPT.init_meta_params(jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        LOPT.make(meta_params, num_steps=0)
    with pytest.raises(ValueError, match=r"lacks \['rms_decays'\]"):
        LOPT.make({k: v for k, v in meta_params.items() if k != "rms_decays"}, num_steps=10)
    opt = LOPT.make(meta_params, num_steps=10)
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="uses the parameters as a feature"):
        opt.update(params, opt.init(params), None)


# ----------------------------------------------------------------------------- features


def test_decay_reparametrisation_round_trip():
    decays = jnp.asarray([0.0, 0.5, 0.9, 0.99, 0.999])
    np.testing.assert_allclose(F.param_to_decay(F.decay_to_param(decays)), decays, atol=1e-6)
    np.testing.assert_allclose(F.decay_to_param(0.9), np.log(0.1) / 10, rtol=1e-6)


def test_tanh_step_embedding():
    np.testing.assert_allclose(F.tanh_step_embedding(jnp.int32(7)), np.tanh(7 / TIMESCALES - 1), rtol=1e-6)


def test_factored_dims_uses_the_two_largest_axes():
    assert F.factored_dims(()) is None
    assert F.factored_dims((7,)) is None
    assert F.factored_dims((5, 3)) == (1, 0)
    assert F.factored_dims((2, 6, 3, 5)) == (3, 1)
    assert F.factored_dims((4, 4)) == (0, 1)
    acc = F.init_factored(jnp.zeros((2, 6, 3, 5)), 3)
    assert acc.v_row[0].shape == (2, 3, 5)  # mean over the largest axis (6)
    assert acc.v_col[0].shape == (2, 6, 3)  # mean over the second largest (5)
    assert acc.v_full == ()


@pytest.mark.parametrize("shape", SHAPES)
def test_features_match_numpy(shape):
    rng = np.random.default_rng(0)
    mom, rms, fac = (0.5, 0.9, 0.99), (0.8,), (0.6, 0.9, 0.99)
    p = rng.normal(size=shape).astype(np.float32)
    grads = rng.normal(size=(4, *shape)).astype(np.float32)

    @jax.jit
    def jax_features(p, grads):
        m = F.init_momentum(p, 3)
        v = F.init_rms(p, 1)
        acc = F.init_factored(p, 3)
        for g in grads:
            m = F.update_momentum(m, g, jnp.asarray(mom))
            v = F.update_rms(v, g, jnp.asarray(rms))
            acc, fac_g = F.update_factored(acc, g, jnp.asarray(fac))
        feats = small_fc_features(p, grads[-1], m, v, fac_g, acc)
        normed = [jnp.broadcast_to(f * F.inverse_rms(f), p.shape) for f in feats]
        return jnp.stack(normed, axis=-1), acc

    ref = NumpyAccumulators(shape, mom, rms, fac)
    for g in grads:
        ref.update(g)
    got, acc = jax_features(p, grads)
    np.testing.assert_allclose(got, ref.features(p, grads[-1]), rtol=2e-4, atol=2e-5)
    if ref.dims is None:
        np.testing.assert_allclose(np.stack(acc.v_full, -1), ref.v_full, rtol=1e-5)
    else:
        np.testing.assert_allclose(np.stack(acc.v_row, -1), ref.v_row, rtol=1e-5)
        np.testing.assert_allclose(np.stack(acc.v_col, -1), ref.v_col, rtol=1e-5)


def test_second_moment_normalizer():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32)
    want = x / np.sqrt(1e-5 + np.mean(np.square(x)))
    np.testing.assert_allclose(F.second_moment_normalizer(x), want, rtol=1e-6)
    np.testing.assert_allclose(x * F.inverse_rms(x), want, rtol=1e-6)


# ----------------------------------------------------------------------------- update


def test_update_matches_numpy_reference():
    meta_params = random_meta_params(jax.random.key(7))
    shapes = [(), (7,), (5, 3), (2, 6, 3, 5)]
    params = random_tree(1, shapes)
    grads_seq = [random_tree(10 + i, shapes) for i in range(3)]

    opt_step = jax.jit(
        lambda meta_params, grads, state, params: LOPT.make(meta_params, num_steps=10).update(
            grads, state, params, loss=jnp.float32(0.0)
        )
    )
    state = LOPT.make(meta_params, num_steps=10).init(params)
    updates = []
    for grads in grads_seq:
        u, state = opt_step(meta_params, grads, state, params)
        updates.append(u)
    assert int(state.iteration) == 3

    nn = {k: np.asarray(v) for k, v in meta_params["nn"].items()}
    decays = {
        name: np_decays(init, np.asarray(meta_params[name]))
        for name, init in [
            ("momentum_decays", LOPT.initial_momentum_decays),
            ("rms_decays", LOPT.initial_rms_decays),
            ("adafactor_decays", LOPT.initial_adafactor_decays),
        ]
    }
    for name, p in params.items():
        ref = NumpyAccumulators(p.shape, *decays.values())
        for step, grads in enumerate(grads_seq):
            ref.update(grads[name])
            want = np_update(nn, ref.features(p, grads[name]), step)
            got = updates[step][name]
            assert got.shape == p.shape and got.dtype == p.dtype
            atol = 1e-4 * np.max(np.abs(want))  # float32 sums of 39 terms vs float64
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol, err_msg=f"{name} {step}")


def test_update_under_jit_and_vmap_over_perturbed_meta_params():
    base = LOPT.init_meta_params(jax.random.key(0))
    eps = jax.tree.map(lambda x: 0.1 * jax.random.normal(jax.random.key(x.size), x.shape), base)  # one direction
    batch = jax.tree.map(lambda b, e: jnp.stack([b + e, b - e, b + 2 * e, b]), base, eps)
    params = random_tree(2, [(5, 3)])
    grads = random_tree(3, [(5, 3)])

    def one_update(meta_params, params, grads):
        opt = LOPT.make(meta_params, num_steps=10)
        state = opt.init(params)
        updates, state = opt.update(grads, state, params, loss=jnp.float32(1.0))
        return updates

    batched = jax.jit(jax.vmap(one_update, in_axes=(0, None, None)))(batch, params, grads)
    single = jax.jit(one_update)
    for i in range(4):
        one = single(jax.tree.map(lambda x, i=i: x[i], batch), params, grads)
        for name in params:
            np.testing.assert_allclose(batched[name][i], one[name], rtol=1e-5, atol=1e-10)
    # the perturbations matter: θ + ε and θ − ε give different updates
    assert not np.allclose(batched["leaf0"][0], batched["leaf0"][1])


def test_low_precision_params_keep_their_dtype():
    meta_params = LOPT.init_meta_params(jax.random.key(0))
    opt = LOPT.make(meta_params, num_steps=10)
    params = {"w": jnp.ones((6, 2), jnp.bfloat16)}
    state = opt.init(params)
    momenta = [a.momentum for a in state.accumulators.values()]
    assert {x.dtype for x in jax.tree.leaves(momenta)} == {jnp.dtype(jnp.float32)}
    step = jax.jit(lambda g, s, p: opt.update(g, s, p, loss=jnp.float32(0.0)))
    updates, state1 = step(params, state, params)
    updates, state2 = step(params, state1, params)
    assert updates["w"].dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(updates["w"], np.float32)))
    same = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype), state, state2)
    assert all(jax.tree.leaves(same))


# ----------------------------------------------------------------------------- checkpoints


@jax.jit
def _updates_for(meta_params, params, grads):
    opt = LOPT.make(meta_params, num_steps=10)
    return opt.update(grads, opt.init(params), params, loss=jnp.float32(1.0))[0]


def test_save_load_round_trip(tmp_path):
    meta_params = random_meta_params(jax.random.key(5))
    metadata = {"component_version": "1", "git_commit": "abc", "data_hashes": {"mnist": "00"}}
    path = save(tmp_path / "ckpt", LOPT, meta_params, metadata)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers

    trained = load(path)
    assert isinstance(trained, TrainedOptimizer)
    lopt, loaded, config = trained
    assert lopt == LOPT
    assert config["architecture"] == "small_fc_lopt"
    assert config["hyperparameters"] == LOPT.config()
    assert config["git_commit"] == "abc" and config["data_hashes"] == {"mnist": "00"}
    assert jax.tree.structure(loaded) == jax.tree.structure(meta_params)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(meta_params), strict=True):
        np.testing.assert_array_equal(a, b)

    params, grads = random_tree(0, [(5, 3)]), random_tree(1, [(5, 3)])
    want = _updates_for(meta_params, params, grads)
    np.testing.assert_array_equal(_updates_for(loaded, params, grads)["leaf0"], want["leaf0"])

    opt = trained.make(num_steps=10)
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    got = jax.jit(lambda p, g: opt.update(g, opt.init(p), p, loss=jnp.float32(1.0))[0])(params, grads)
    np.testing.assert_allclose(got["leaf0"], want["leaf0"], rtol=1e-6, atol=1e-12)


def test_save_replaces_an_existing_checkpoint(tmp_path):
    save(tmp_path / "ckpt", LOPT, LOPT.init_meta_params(jax.random.key(0)), {"run": 1})
    save(tmp_path / "ckpt", LOPT, LOPT.init_meta_params(jax.random.key(1)), {"run": 2})
    assert load(tmp_path / "ckpt").config["run"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_save_writes_nothing_when_it_fails(tmp_path):
    meta_params = LOPT.init_meta_params(jax.random.key(0))
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save(tmp_path / "ckpt", LOPT, meta_params, {"bad": object()})
    with pytest.raises(ValueError, match="reserved keys"):
        save(tmp_path / "ckpt", LOPT, meta_params, {"architecture": "x"})
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def checkpoint(tmp_path):
    return save(tmp_path / "ckpt", LOPT, LOPT.init_meta_params(jax.random.key(0)), {})


def test_missing_checkpoint_raises(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="nowhere.* is not a learned-optimizer checkpoint directory"):
        load(tmp_path / "nowhere")
    (checkpoint / "weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights.safetensors"):
        load(checkpoint)
    (checkpoint / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load(checkpoint)


def test_corrupted_weights_raise(checkpoint):
    (checkpoint / "weights.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(ValueError, match=r"ckpt: cannot read weights.safetensors"):
        load(checkpoint)


def test_corrupted_config_raises(checkpoint):
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load(checkpoint)


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if key in config:
            config[key] = value
        else:
            config["hyperparameters"][key] = value
    (path / "config.json").write_text(json.dumps(config))


def test_mismatched_shapes_raise(checkpoint):
    _edit_config(checkpoint, hidden_size=8)
    with pytest.raises(ValueError, match=r"ckpt: weight 'nn/b0' has shape \(4,\), expected \(8,\)"):
        load(checkpoint)


def test_mismatched_keys_raise(checkpoint):
    _edit_config(checkpoint, hidden_layers=3)
    with pytest.raises(ValueError, match=r"missing keys \['nn/b3', 'nn/w3'\]"):
        load(checkpoint)


def test_unknown_architecture_raises(checkpoint):
    _edit_config(checkpoint, architecture="no_such_lopt")
    with pytest.raises(ValueError, match=r"Unknown learned optimizer architecture 'no_such_lopt'.*small_fc"):
        load(checkpoint)
    _edit_config(checkpoint, architecture="small_fc_lopt", hidden_sizes=3)
    with pytest.raises(ValueError, match="Invalid hyperparameters"):
        load(checkpoint)


def test_load_takes_a_file_uri_and_refuses_registered_names(checkpoint):
    trained = load(checkpoint.as_uri())
    assert trained.lopt == LOPT and trained.config["architecture"] == "small_fc_lopt"
    with pytest.raises(FileNotFoundError, match=r"reads local directories .*resolve_checkpoint"):
        load("models:/small_fc_lopt/1")
