"""mup_small_fc_lopt (µLO): µP roles, update factors and three steps against a NumPy reference."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.optimizers import create, create_learned, load, save
from components.optimizers.mup import MuSmallFcLOpt, mup_roles, mup_update_scales
from components.optimizers.small_fc_lopt import SmallFcLOpt
from tests.components.optimizers.test_small_fc_lopt import NumpyAccumulators, np_decays, np_update

# a µP MLP in the naming convention: input 6 -> 8, two hidden 8 -> 8 (fan_in 8), output 8 -> 3
SHAPES = {
    "mup_input": {"w": (6, 8), "b": (8,)},
    "mup_hidden1": {"w": (8, 8), "b": (8,)},
    "mup_hidden2": {"w": (8, 5), "b": (5,)},
    "mup_output": {"w": (5, 3), "b": (3,)},
}


def tree_of(seed, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )


def np_mu(path: str, shape) -> float:
    """µLO's factor, written out from the reference (MuMLP.get_adam_mup_lr_mul)."""
    layer, leaf = path.split("/")
    if leaf == "w" and layer.startswith("mup_hidden"):
        return 1.0 / shape[0]  # hidden_lr_mult / output_sizes[index - 1]
    return 1.0


def random_meta_params(lopt, key, scale=0.3):
    base = lopt.init_meta_params(jax.random.key(0))
    leaves, treedef = jax.tree.flatten(base)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


# ----------------------------------------------------------------------------- roles and factors


def test_roles_from_the_naming_convention():
    roles = mup_roles(tree_of(0))
    assert roles["mup_input"] == {"w": "input", "b": "bias"}
    assert roles["mup_hidden1"] == {"w": "hidden", "b": "bias"}
    assert roles["mup_hidden2"]["w"] == "hidden"
    assert roles["mup_output"] == {"w": "output", "b": "bias"}


def test_update_factors_match_numpy():
    params = tree_of(0)
    scales = mup_update_scales(params)
    for layer, leaves in SHAPES.items():
        for leaf, shape in leaves.items():
            assert scales[layer][leaf] == pytest.approx(np_mu(f"{layer}/{leaf}", shape), rel=1e-12)
    # the hidden numerator, and a kernel's fan_in is the product of all but the last axis
    assert mup_update_scales(params, hidden_lr_mult=2.0)["mup_hidden1"]["w"] == pytest.approx(2.0 / 8)
    conv = {"conv": jnp.zeros((3, 3, 2, 4)), "b": jnp.zeros(4)}
    assert mup_update_scales(conv, {"conv": "hidden", "b": "bias"}) == {"conv": 1.0 / 18, "b": 1.0}


def test_explicit_roles_override_the_convention():
    params = tree_of(0)
    scales = mup_update_scales(params, {"mup_hidden1/w": "input", "mup_output/w": "hidden"})
    assert scales["mup_hidden1"]["w"] == 1.0
    assert scales["mup_output"]["w"] == pytest.approx(1.0 / 5)
    # sequence indices are path parts too
    assert mup_roles([jnp.zeros((2, 3))], {"0": "hidden"}) == ["hidden"]


# ----------------------------------------------------------------------------- update vs NumPy


@pytest.mark.parametrize(("impl", "hidden_size"), [("auto", 32), ("fused", 4)])
def test_three_steps_match_numpy_reference(impl, hidden_size):
    lopt = MuSmallFcLOpt(impl=impl, hidden_size=hidden_size)
    theta = random_meta_params(lopt, jax.random.key(3))
    opt = lopt.make(theta, num_steps=50)
    params = tree_of(1)
    state = opt.init(params)
    step_fn = jax.jit(lambda g, s, p: opt.update(g, s, p, loss=jnp.float32(1.0)))

    nn = jax.tree.map(np.asarray, theta["nn"])
    decays = [
        np_decays(init, np.asarray(theta[key]))
        for init, key in (
            (lopt.initial_momentum_decays, "momentum_decays"),
            (lopt.initial_rms_decays, "rms_decays"),
            (lopt.initial_adafactor_decays, "adafactor_decays"),
        )
    ]
    paths = [f"{layer}/{leaf}" for layer in SHAPES for leaf in SHAPES[layer]]
    np_acc = {path: NumpyAccumulators(SHAPES[path.split("/")[0]][path.split("/")[1]], *decays) for path in paths}
    np_params = {path: np.asarray(params[path.split("/")[0]][path.split("/")[1]], np.float64) for path in paths}

    for t in range(3):
        grads = tree_of(10 + t)
        if t == 1:  # a non-finite gradient entry is replaced by 0 (and inf by the largest float)
            grads["mup_hidden1"]["w"] = grads["mup_hidden1"]["w"].at[0, 0].set(jnp.nan)
        updates, state = step_fn(grads, state, params)
        for path in paths:
            layer, leaf = path.split("/")
            g = np.nan_to_num(np.asarray(grads[layer][leaf], np.float64))
            np_acc[path].update(g)
            feats = np_acc[path].features(np_params[path], g)
            expected = np_update(nn, feats, t, exp_mult=1e-3, step_mult=1e-2) * np_mu(path, g.shape)
            got = np.asarray(updates[layer][leaf])
            np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-8, err_msg=f"{path} step {t}")
            np_params[path] = np_params[path] + expected
        params = jax.tree.map(lambda p, u: p + u, params, updates)


def test_is_small_fc_lopt_times_the_factor():
    mu, plain = MuSmallFcLOpt(), SmallFcLOpt(hidden_size=32, step_mult=0.01, impl="reference")
    theta = random_meta_params(mu, jax.random.key(5))
    params, grads = tree_of(2), tree_of(3)
    u_mu, _ = mu.make(theta, num_steps=10).update(grads, mu.make(theta, num_steps=10).init(params), params)
    opt = plain.make(theta, num_steps=10)
    u_plain, _ = opt.update(grads, opt.init(params), params)
    scales = mup_update_scales(params)
    jax.tree.map(lambda a, b, s: np.testing.assert_allclose(a, b * s, rtol=1e-6, atol=0), u_mu, u_plain, scales)
    # hidden updates are 1/fan_in of small_fc_lopt's, the others identical
    assert float(jnp.abs(u_mu["mup_hidden1"]["w"]).mean()) < float(jnp.abs(u_plain["mup_hidden1"]["w"]).mean()) / 4


def test_unlabelled_tensors_unscaled_when_not_required():
    lopt = MuSmallFcLOpt(require_roles=False)
    theta = lopt.init_meta_params(jax.random.key(0))
    params = {"x": jnp.ones((4, 3)), "mup_hidden1": {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    opt = lopt.make(theta, num_steps=10)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["mup_hidden1"]["w"], updates["x"] / 4, rtol=1e-6)


# ----------------------------------------------------------------------------- hyperparameters


def test_defaults_are_the_reference_mulo_runs():
    lopt = create_learned("mup_small_fc_lopt")
    assert (lopt.hidden_size, lopt.step_mult, lopt.exp_mult, lopt.hidden_lr_mult) == (32, 0.01, 0.001, 1.0)
    assert lopt.layer_sizes == (39, 32, 32, 2)
    # "auto" is the stacked matmul at width 32, the elementwise form at small_fc_lopt's width
    assert lopt.resolved_impl == "reference"
    assert MuSmallFcLOpt(hidden_size=4).resolved_impl == SmallFcLOpt().resolved_impl
    assert MuSmallFcLOpt(impl="fused").resolved_impl == "fused"


def test_config_round_trips_and_checkpoints(tmp_path):
    lopt = MuSmallFcLOpt(roles={"x/0": "hidden", "y": "bias"}, hidden_size=4)
    config = json.loads(json.dumps(lopt.config()))
    assert config["roles"] == {"x/0": "hidden", "y": "bias"}
    assert MuSmallFcLOpt(**config) == lopt
    theta = lopt.init_meta_params(jax.random.key(1))
    trained = load(save(tmp_path / "mulo", lopt, theta, {}))
    assert trained.lopt == lopt
    params = {"x": [jnp.ones((3, 2))], "y": jnp.ones(2)}
    opt = trained.make(num_steps=10)
    updates, _ = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params, loss=1.0)
    direct = create("mup_small_fc_lopt", num_steps=10, meta_params=theta, **config)
    expected, _ = direct.update(jax.tree.map(jnp.ones_like, params), direct.init(params), params, loss=1.0)
    jax.tree.map(np.testing.assert_array_equal, updates, expected)


def test_missing_roles_is_a_clear_error():
    opt = create("mup_small_fc_lopt", num_steps=10)
    with pytest.raises(ValueError, match=r"needs the µP role of every parameter tensor; unlabelled: \['dense0/w'"):
        opt.init({"dense0": {"w": jnp.ones((3, 2))}})
    with pytest.raises(ValueError, match="unlabelled"):
        mup_roles({"mup_hidden1": {"scale": jnp.ones(3)}})  # only w and b follow the convention


@pytest.mark.parametrize(
    ("kwargs", "params", "match"),
    [
        ({"roles": {"x": "middle"}}, None, r"unknown role\(s\) \['middle'\]"),
        ({"roles": {"z": "hidden"}}, {"x": jnp.ones((2, 2))}, r"roles names \['z'\]"),
        ({"roles": {"x": "hidden"}}, {"x": jnp.ones(3)}, "labelled 'hidden' but has shape"),
        ({"hidden_lr_mult": 0.0}, None, "hidden_lr_mult must be > 0"),
    ],
)
def test_bad_settings_raise(kwargs, params, match):
    with pytest.raises(ValueError, match=match):
        opt = create("mup_small_fc_lopt", num_steps=10, **kwargs)
        opt.init(params)


def test_roles_must_be_a_mapping():
    with pytest.raises(TypeError, match="must be a mapping"):
        MuSmallFcLOpt(roles=3)


def test_update_needs_params():
    opt = create("mup_small_fc_lopt", num_steps=10)
    params = tree_of(0)
    with pytest.raises(ValueError, match="uses the parameters as a feature"):
        opt.update(params, opt.init(params))
