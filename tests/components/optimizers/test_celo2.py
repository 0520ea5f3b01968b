"""Celo2: the update checked against an independent NumPy implementation of the reference's maths,
Newton–Schulz against the SVD polar factor, routing, errors, jit / vmap, and PES meta-training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.meta import MetaTrainConfig, meta_train
from components.optimizers import registry
from components.optimizers.celo2 import NS_COEFFS, Celo2, adam_leaf_mask, newton_schulz
from components.tasks import ImageMLPFamily, stack_datasets

# ----------------------------------------------------------------------------- NumPy reference
# Written from the reference's maths (celo2_optax.py / celo2.py of amoudgl/celo) in its own layout:
# accumulators with a trailing decay axis, scalars expanded to one element, features stacked per group,
# float64 throughout. It shares no code with components.optimizers.


def np_newton_schulz(x, coeffs=NS_COEFFS, steps=5, eps=1e-8):
    a, b, c = coeffs
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = np.swapaxes(x, -2, -1)
    x = x / (np.sqrt(np.sum(x * x, axis=(-2, -1), keepdims=True)) + eps)
    for _ in range(steps):
        gram = x @ np.swapaxes(x, -2, -1)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return np.swapaxes(x, -2, -1) if transposed else x


def np_normalize(x, axes):
    return x / np.sqrt(1e-9 + np.mean(x * x, axis=axes, keepdims=True))


def np_rsqrt(x):
    return 1.0 / np.sqrt(x)


def np_safe_rsqrt(x):
    return 1.0 / np.sqrt(np.maximum(x, 1e-9))


def np_fac_dims(shape):
    if len(shape) < 2:
        return None
    order = np.argsort(shape, kind="stable")
    return int(order[-2]), int(order[-1])


class NpCelo2:
    """The reference's update, one leaf at a time (``is_adam`` from the routing rule under test)."""

    MOM = np.array([0.9, 0.99, 0.999])
    RMS = np.array([0.95])
    FAC = np.array([0.9, 0.99, 0.999])

    def __init__(self, ff, *, lr, wd, orthogonalize, mult_1d=20.0, b1=0.9, b2=0.95, eps=1e-8):
        self.ff = {k: np.asarray(v, np.float64) for k, v in ff.items()}
        self.lr, self.wd, self.orth = lr, wd, orthogonalize
        self.mult_1d, self.b1, self.b2, self.eps = mult_1d, b1, b2, eps

    def init(self, p, is_adam):
        p = np.atleast_1d(p)  # the reference expands scalars to one element
        if is_adam:
            return {"mu": np.zeros(p.shape), "nu": np.zeros(p.shape)}
        st = {"m": np.zeros(p.shape + (3,)), "v": np.zeros(p.shape + (1,))}
        dims = np_fac_dims(p.shape)
        if dims is None:
            st["vf"] = np.zeros(p.shape + (3,))
        else:
            d1, d0 = dims
            st["vr"] = np.zeros(tuple(np.delete(p.shape, d0)) + (3,))
            st["vc"] = np.zeros(tuple(np.delete(p.shape, d1)) + (3,))
        return st

    def step(self, p, g, st, is_adam):
        scalar = np.ndim(p) == 0
        p, g = np.atleast_1d(np.asarray(p, np.float64)), np.atleast_1d(np.asarray(g, np.float64))
        if is_adam:
            mu = self.b1 * st["mu"] + (1 - self.b1) * g
            nu = self.b2 * st["nu"] + (1 - self.b2) * g * g
            direction = mu / np.sqrt(nu + self.eps)
            update = -self.lr * self.mult_1d * (direction + self.wd * p)
            st = {"mu": mu, "nu": nu}
        else:
            direction, st = self._learned(p, g, st)
            update = -self.lr * (direction + self.wd * p)
        return (update.reshape(()) if scalar else update), st

    def _learned(self, p, g, st):
        g = np.clip(g, -1000, 1000)
        ge = g[..., None]
        m = self.MOM * st["m"] + (1 - self.MOM) * ge
        v = self.RMS * st["v"] + (1 - self.RMS) * ge**2
        new = {"m": m, "v": v}
        gsq = g * g + 1e-30
        dims = np_fac_dims(p.shape)
        if dims is None:
            vf = self.FAC * st["vf"] + (1 - self.FAC) * gsq[..., None]
            fac_g = ge * np_safe_rsqrt(vf + 1e-9)
            new["vf"] = vf
        else:
            d1, d0 = dims
            vr = self.FAC * st["vr"] + (1 - self.FAC) * np.mean(gsq, axis=d0)[..., None]
            vc = self.FAC * st["vc"] + (1 - self.FAC) * np.mean(gsq, axis=d1)[..., None]
            red = d1 - 1 if d1 > d0 else d1
            row_f = np_safe_rsqrt(vr / (np.mean(vr, axis=red, keepdims=True) + 1e-9))
            col_f = np_safe_rsqrt(vc)
            fac_g = ge * np.expand_dims(row_f, d0) * np.expand_dims(col_f, d1)
            new["vr"], new["vc"] = vr, vc
        rsq = np_rsqrt(v + 1e-8)
        inps = [ge, np.clip(ge, -0.1, 0.1), p[..., None], m, v, m * rsq, rsq, fac_g, ge * rsq]
        if dims is not None:
            row = np.broadcast_to(np.expand_dims(vr, d0), p.shape + (3,))
            col = np.broadcast_to(np.expand_dims(vc, d1), p.shape + (3,))
            inps += [row, col, np_rsqrt(row + 1e-8), np_rsqrt(col + 1e-8)]
            inps.append(m * np.expand_dims(row_f, d0) * np.expand_dims(col_f, d1))
        axes = tuple(range(p.ndim))[-2:]
        inps = [np_normalize(np.broadcast_to(x, p.shape + x.shape[-1:]), axes) for x in inps]
        ff = self.ff
        h = sum(x @ ff[f"w0__{i}"] for i, x in enumerate(inps)) + ff["b0"]
        h = np.maximum(h, 0) @ ff["w1"] + ff["b1"]
        out = np.maximum(h, 0) @ ff["w2"] + ff["b2"]
        step = out[..., 0] * np.exp(0.0 * out[..., 1])
        if self.orth and p.ndim >= 2:
            step = np_newton_schulz(step)
        return np_normalize(step, axes), new


def _params(rng):
    shapes = {"scalar": (), "bias": (5,), "wide": (3, 5), "tall": (6, 4), "conv": (2, 3, 4, 5)}
    return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


NOTHING = "(?!)"  # a regex that matches no path: every leaf takes the learned branch


@pytest.mark.parametrize("orthogonalize", [True, False], ids=["newton-schulz", "no-newton-schulz"])
@pytest.mark.parametrize("routing", [None, NOTHING], ids=["default-routing", "all-learned"])
def test_updates_match_the_numpy_reference(orthogonalize, routing):
    rng = np.random.default_rng(0)
    params = _params(rng)
    lopt = Celo2(learning_rate=3e-3, weight_decay=0.1, orthogonalize=orthogonalize, adam_regex=routing)
    theta = lopt.init_meta_params(jax.random.key(1))
    opt = lopt.make(theta, num_steps=10)
    mask = dict(zip(sorted(params), adam_leaf_mask(params, routing), strict=True))
    if routing is None:
        assert mask == {"bias": True, "conv": False, "scalar": True, "tall": False, "wide": False}
    else:
        assert not any(mask.values())
    ref = NpCelo2(theta["ff_mod_stack"], lr=3e-3, wd=0.1, orthogonalize=orthogonalize)
    ref_states = {k: ref.init(np.asarray(p), mask[k]) for k, p in params.items()}
    ref_params = {k: np.asarray(p, np.float64) for k, p in params.items()}
    state = opt.init(params)
    update = jax.jit(opt.update)
    for step in range(3):
        grads = {k: jnp.asarray(rng.normal(size=p.shape) * 10.0 ** (step - 1), jnp.float32) for k, p in params.items()}
        updates, state = update(grads, state, params, loss=jnp.float32(1.0))
        for k in params:
            want, ref_states[k] = ref.step(ref_params[k], np.asarray(grads[k], np.float64), ref_states[k], mask[k])
            np.testing.assert_allclose(np.asarray(updates[k]), want, rtol=2e-4, atol=1e-7, err_msg=f"{k} step {step}")
            assert updates[k].shape == params[k].shape and updates[k].dtype == params[k].dtype
        params = optax.apply_updates(params, updates)
        ref_params = {k: np.asarray(p, np.float64) for k, p in params.items()}
    if routing is NOTHING:  # the learned step has unit RMS over the last two axes: |u| = lr·RMS(Δ + λp)
        wide = np.asarray(updates["wide"])
        assert 0.5 * 3e-3 < np.sqrt(np.mean(wide**2)) < 2 * 3e-3


# ----------------------------------------------------------------------------- Newton–Schulz


def _q5(s, coeffs=NS_COEFFS):
    a, b, c = coeffs
    for _ in range(5):
        s = a * s + b * s**3 + c * s**5
    return s


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5), (2, 3, 7)], ids=str)
def test_newton_schulz_is_the_polar_factor_with_singular_values_in_a_band(shape):
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape).astype(np.float32)
    y = np.asarray(newton_schulz(jnp.asarray(x)))
    assert y.shape == x.shape
    # exact agreement with the NumPy iteration (float32 both)
    np.testing.assert_allclose(y, np_newton_schulz(x), rtol=1e-5, atol=1e-6)
    for xm, ym in zip(x.reshape((-1,) + shape[-2:]), y.reshape((-1,) + shape[-2:]), strict=True):
        u, s, vt = np.linalg.svd(xm.astype(np.float64), full_matrices=False)
        # same singular vectors as the polar factor U Vᵀ: Uᵀ Y V is diagonal ...
        core = u.T @ ym @ vt.T
        np.testing.assert_allclose(core - np.diag(np.diag(core)), 0.0, atol=1e-5)
        # ... with the quintic map applied five times to the normalised singular values
        sigma = s / (np.linalg.norm(xm) + 1e-8)
        np.testing.assert_allclose(np.diag(core), _q5(sigma), rtol=1e-4, atol=1e-5)
        # which is a band around 1, not 1: approximately (not exactly) orthogonal
        assert np.all((np.diag(core) > 0.68) & (np.diag(core) < 1.21)), np.diag(core)
        polar = u @ vt
        assert np.linalg.norm(ym - polar, 2) < 0.33
        assert not np.allclose(ym @ ym.T if ym.shape[0] <= ym.shape[1] else ym.T @ ym, np.eye(min(ym.shape)), atol=1e-3)


def test_newton_schulz_refuses_vectors_and_bad_coefficients():
    with pytest.raises(ValueError, match=">= 2 axes"):
        newton_schulz(jnp.ones(3))
    with pytest.raises(ValueError, match="3 coefficients"):
        newton_schulz(jnp.ones((2, 2)), coeffs=(1.0, 2.0))


# ----------------------------------------------------------------------------- routing and contract


def test_routing_rule_default_and_override():
    lm = {
        "embed": jnp.zeros((11, 4)),
        "pos": jnp.zeros((8, 4)),
        "blocks": [{"attn": {"wq": jnp.zeros((4, 4))}, "ln": {"scale": jnp.ones(4)}}],
        "head": {"w": jnp.zeros((4, 11)), "b": jnp.zeros(11)},
        "conv0": {"w": jnp.zeros((3, 3, 1, 4))},
    }
    paths = ["blocks/0/attn/wq", "blocks/0/ln/scale", "conv0/w", "embed", "head/b", "head/w", "pos"]
    got = dict(zip(paths, adam_leaf_mask(lm), strict=True))
    assert got == {
        "blocks/0/attn/wq": False,  # hidden matrix: learned + Newton-Schulz
        "blocks/0/ln/scale": True,  # 1-D
        "conv0/w": False,
        "embed": True,
        "head/b": True,
        "head/w": False,  # output layers are not singled out (as the reference)
        "pos": True,  # our positional-embedding table
    }
    # the reference's meta-training rule: only biases (path ending in /b) take AdamW
    assert adam_leaf_mask(lm, "/b$") == [False, False, False, False, True, False, False]
    assert Celo2(adam_regex="/b$").adam_leaf_mask(lm) == adam_leaf_mask(lm, "/b$")


def test_bad_hyperparameters_and_inputs_fail_clearly():
    with pytest.raises(ValueError, match="not a valid Python regex"):
        Celo2(adam_regex="(")
    with pytest.raises(TypeError, match="regex string"):
        Celo2(adam_regex=3)
    with pytest.raises(ValueError, match="ns_coeffs must be 3 floats"):
        Celo2(ns_coeffs=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"adam_b2 must be in \[0, 1\)"):
        Celo2(adam_b2=1.0)
    with pytest.raises(ValueError, match="learning_rate must be a finite float >= 0"):
        Celo2(learning_rate=-1.0)
    with pytest.raises(ValueError, match="no hyperparameter"):
        registry.create_learned("celo2", hidden=3)
    lopt = Celo2()
    theta = lopt.init_meta_params(jax.random.key(0))
    with pytest.raises(ValueError, match="needs num_steps"):
        lopt.make(theta, num_steps=None)
    with pytest.raises(ValueError, match="has shapes"):
        Celo2(ff_hidden_size=4).make(theta, num_steps=10)
    with pytest.raises(ValueError, match="ff_mod_stack"):
        lopt.make({"nn": theta["ff_mod_stack"]}, num_steps=10)
    opt = lopt.make(theta, num_steps=10)
    params = {"w": jnp.ones((3, 2))}
    with pytest.raises(ValueError, match="uses the parameters as a feature"):
        opt.update(params, opt.init(params))


def test_contract_init_is_deterministic_config_round_trips_and_nothing_is_frozen():
    lopt = registry.create_learned("celo2", weight_decay=0.1, adam_regex="/b$")
    a, b = lopt.init_meta_params(jax.random.key(5)), lopt.init_meta_params(jax.random.key(5))
    c = lopt.init_meta_params(jax.random.key(6))
    for k in a["ff_mod_stack"]:
        np.testing.assert_array_equal(a["ff_mod_stack"][k], b["ff_mod_stack"][k])
    assert any(not np.array_equal(a["ff_mod_stack"][k], c["ff_mod_stack"][k]) for k in a["ff_mod_stack"] if "w" in k)
    assert sorted(a["ff_mod_stack"]) == sorted([f"w0__{i}" for i in range(14)] + ["w1", "w2", "b0", "b1", "b2"])
    assert a["ff_mod_stack"]["w0__0"].shape == (1, 8) and a["ff_mod_stack"]["w2"].shape == (8, 3)
    assert sum(lopt.feature_groups) == 30
    assert lopt.frozen_keys() == ()
    config = lopt.config()
    assert config["ns_coeffs"] == list(NS_COEFFS) and config["mult_1d"] == 20.0 and config["adam_b2"] == 0.95
    assert Celo2(**config) == lopt


def test_a_learning_rate_schedule_scales_the_steps_and_cannot_be_saved():
    schedule = optax.linear_schedule(1e-3, 0.0, 4)
    theta = Celo2().init_meta_params(jax.random.key(0))
    fixed = Celo2(learning_rate=1e-3).make(theta, num_steps=4)
    sched = Celo2(learning_rate=schedule).make(theta, num_steps=4)
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda x: 0.3 * x + 0.1, params)
    s_fixed, s_sched = fixed.init(params), sched.init(params)
    for t in range(3):
        u_fixed, s_fixed = fixed.update(grads, s_fixed, params)
        u_sched, s_sched = sched.update(grads, s_sched, params)
        for k in params:  # η_t = 1e-3·(1 − t/4), evaluated before the count moves
            np.testing.assert_allclose(u_sched[k], u_fixed[k] * (1 - t / 4), rtol=1e-5, atol=1e-9)
    with pytest.raises(TypeError, match="learning_rate is a schedule"):
        Celo2(learning_rate=schedule).config()


# ----------------------------------------------------------------------------- jit / vmap


def test_jit_and_vmap_over_meta_params_and_problems_match_separate_runs():
    lopt = Celo2(weight_decay=0.01)
    thetas = jax.vmap(lopt.init_meta_params)(jax.random.split(jax.random.key(0), 2))
    rng = np.random.default_rng(1)
    batch = {"w": jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=(2, 3)))}

    def run(theta, params):
        opt = lopt.make(theta, num_steps=5)

        def loss_fn(p):
            return jnp.sum((p["w"] - 0.5) ** 2) + jnp.sum(p["b"] ** 2)

        def body(carry, _):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, s = opt.update(g, s, p, loss=loss)
            return (optax.apply_updates(p, u), s), loss

        (p, _), losses = jax.lax.scan(body, (params, opt.init(params)), None, length=5)
        return p, losses

    batched = jax.jit(jax.vmap(run))(thetas, batch)
    for i in range(2):
        one = run(*(jax.tree.map(lambda x, i=i: x[i], tree) for tree in (thetas, batch)))
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(batched), strict=True):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-6)
    assert not np.allclose(batched[0]["w"][0], batch["w"][0])


# ----------------------------------------------------------------------------- meta-training


def test_a_few_pes_outer_steps_run_and_change_theta():
    rng = np.random.default_rng(0)
    x = rng.random((256, 4, 4, 1)).astype(np.float32)
    y = np.argmax(x.reshape(256, -1) @ rng.normal(size=(16, 10)), -1).astype(np.int32)
    family = ImageMLPFamily(("synthetic",), (8,), (4, 4, 1), 10, 16)
    cfg = MetaTrainConfig(
        num_outer_steps=3, num_tasks=2, trunc_length=3, min_unroll=6, max_unroll=9, sigma=0.01, outer_lr=1e-2
    )
    lopt = registry.create_learned("celo2")
    theta0 = lopt.init_meta_params(jax.random.PRNGKey(0))
    data = stack_datasets([x], [y])
    result = meta_train(lopt, family, data, cfg, key=jax.random.PRNGKey(0), log=print, init_meta_params=theta0)
    theta = result.meta_params
    assert jax.tree.structure(theta) == jax.tree.structure(theta0)
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(theta))
    changed = [
        k for k in theta0["ff_mod_stack"] if not np.allclose(theta0["ff_mod_stack"][k], theta["ff_mod_stack"][k])
    ]
    assert len(changed) >= 10, changed
    assert all(np.isfinite(v) for _, v in result.curves["meta_loss"])
