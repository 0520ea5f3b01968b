"""µP MLP tasks (components.tasks.mup): layout, init statistics per width, forward vs NumPy, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.optimizers import create
from components.tasks import ImageData, MuPMLPFamily, MuPMLPTask, build_task, mup_mlp_task
from components.tasks.spec import MuPMLPArch, TaskSpec, make_task
from components.tasks.suite import SUITES, get_spec

SHAPE = (8, 8, 1)


def inputs(n=256, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, *SHAPE)), jnp.float32)


def np_forward(params, x, input_mult, output_mult, act=lambda z: np.maximum(z, 0.0)):
    """The reference's MuMLP forward in NumPy; also returns every hidden layer's pre-activation."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    names = ["mup_input"] + sorted(k for k in p if k.startswith("mup_hidden")) + ["mup_output"]
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    pre = [input_mult * (h @ p["mup_input"]["w"] + p["mup_input"]["b"])]
    for name in names[1:-1]:
        pre.append(act(pre[-1]) @ p[name]["w"] + p[name]["b"])
    width = p["mup_output"]["w"].shape[0]
    logits = (act(pre[-1]) @ p["mup_output"]["w"] + p["mup_output"]["b"]) * output_mult / width
    return logits, pre


def test_layout_and_init_distributions():
    task = mup_mlp_task("t", SHAPE, 10, 32, width=512, depth=3)
    params = task.init(jax.random.PRNGKey(0))
    assert {k: {n: v.shape for n, v in layer.items()} for k, layer in params.items()} == {
        "mup_input": {"w": (64, 512), "b": (512,)},
        "mup_hidden1": {"w": (512, 512), "b": (512,)},
        "mup_hidden2": {"w": (512, 512), "b": (512,)},
        "mup_output": {"w": (512, 10), "b": (10,)},
    }
    assert task.head_key == "mup_output" and task.width == 512
    np.testing.assert_array_equal(params["mup_output"]["w"], 0.0)  # zero-initialised output layer
    # MupVarianceScaling: TruncNormal(-2, 2) * sqrt(1/fan_in), not rescaled for the truncation (std 0.8796)
    for name, fan_in in (("mup_input", 64), ("mup_hidden1", 512), ("mup_hidden2", 512)):
        w = np.asarray(params[name]["w"])
        assert np.std(w) * np.sqrt(fan_in) == pytest.approx(0.8796, rel=0.03), name
        assert np.abs(w).max() <= 2.0 / np.sqrt(fan_in) + 1e-6
    biases = np.concatenate([np.asarray(params[n]["b"]) for n in ("mup_input", "mup_hidden1", "mup_hidden2")])
    assert abs(biases.mean()) < 0.1 and np.std(biases) == pytest.approx(1.0, rel=0.06)  # N(0, 1)


def test_preactivation_scale_is_width_independent_at_init():
    x = inputs()
    rms = {}
    for width in (32, 256, 1024):
        task = mup_mlp_task("t", SHAPE, 10, 32, width=width, depth=3)
        params = task.init(jax.random.PRNGKey(1))
        _, pre = np_forward(params, x, 1.0, 1.0)
        rms[width] = [float(np.sqrt(np.mean(h**2))) for h in pre]
    for layer in range(3):
        values = [rms[w][layer] for w in rms]
        assert max(values) / min(values) < 1.25, (layer, rms)


def test_logits_at_init_are_the_output_bias_times_the_output_multiplier():
    x = inputs(16)
    for width in (16, 128):
        task = mup_mlp_task("t", SHAPE, 10, 32, width=width, output_mult=3.0)
        params = task.init(jax.random.PRNGKey(2))
        expected = np.broadcast_to(np.asarray(params["mup_output"]["b"]) * 3.0 / width, (16, 10))
        np.testing.assert_allclose(task.logits(params, x), expected, rtol=1e-6)


def test_forward_matches_numpy_with_multipliers_and_reparametrisation():
    task = mup_mlp_task("t", SHAPE, 10, 32, width=24, depth=2, input_mult=2.0, output_mult=5.0)
    params = task.init(jax.random.PRNGKey(3))
    params["mup_output"]["w"] = jax.random.normal(jax.random.PRNGKey(4), (24, 10))  # make the head non-trivial
    x = inputs(8)
    expected, _ = np_forward(params, x, 2.0, 5.0)
    np.testing.assert_allclose(task.logits(params, x), expected, rtol=1e-5, atol=1e-6)
    # the global reparametrisation stores w/s and uses w*s: same function
    scaled = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(task), [task.dataset_index, jnp.float32(1.5)])
    stored = jax.tree.map(lambda p: p / np.exp(1.5), params)
    np.testing.assert_allclose(scaled.logits(stored, x), expected, rtol=1e-5, atol=1e-6)
    assert isinstance(scaled, MuPMLPTask) and scaled.input_mult == 2.0 and scaled.output_mult == 5.0


def test_specs_suite_and_family():
    assert SUITES["mup"] == ("mup_mlp_w32_d3", "mup_mlp_w128_d3", "mup_mlp_w512_d3", "mup_mlp_w1024_d3")
    narrow, wide = get_spec("mup_mlp_w32_d3"), get_spec("mup_mlp_w1024_d3")
    assert narrow.num_steps < wide.num_steps and narrow.num_params() < wide.num_params()
    task = build_task("mup_mlp_w128_d3")
    assert isinstance(task, MuPMLPTask) and task.hidden == (128, 128, 128)
    # 64*128+128 + 2*(128*128+128) + 128*10+10
    assert get_spec("mup_mlp_w128_d3").num_params() == 64 * 128 + 128 + 2 * (128 * 128 + 128) + 128 * 10 + 10
    family = MuPMLPFamily(("a", "b", "c"), SHAPE, 10, 16, width=8)
    tasks = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(0), 64))
    assert isinstance(tasks, MuPMLPTask) and set(np.asarray(tasks.dataset_index).tolist()) == {0, 1, 2}
    assert family.sample(jax.random.PRNGKey(5)) == family.sample(jax.random.PRNGKey(5))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mup_mlp_task("t", SHAPE, 10, 8, width=0), "width must be an int >= 1"),
        (lambda: mup_mlp_task("t", SHAPE, 10, 8, width=8, depth=0), "depth must be an int >= 1"),
        (lambda: mup_mlp_task("t", SHAPE, 10, 8, width=8, output_mult=0.0), "output_mult must be a finite float > 0"),
        (lambda: MuPMLPArch(8, activation="swish"), "unknown activation"),
        (lambda: MuPMLPTask("t", "mlp", (8, 16), "relu", SHAPE, 10, 8), "equal hidden widths"),
        (lambda: MuPMLPFamily((), SHAPE, 10, 8, width=8), "at least one dataset"),
        (lambda: make_task(TaskSpec("t", "", MuPMLPArch(8), 8, 10)), "needs an image or sequence dataset"),
    ],
)
def test_bad_settings_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- training


def _data(seed=0, n=512):
    """A learnable 10-class problem on 8x8 inputs: labels from a fixed random linear map."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(n, *SHAPE)).astype(np.float32)
    y = np.argmax(x.reshape(n, -1) @ rng.normal(size=(64, 10)), axis=1).astype(np.int32)
    return ImageData(jnp.asarray(x[None]), jnp.asarray(y[None]), jnp.asarray([n], jnp.int32))


def _train(task, opt, data, steps=30, seed=0):
    def step(carry, key):
        params, state = carry
        loss, grads = jax.value_and_grad(task.loss)(params, task.batch(data, key))
        updates, state = opt.update(grads, state, params, loss=loss)
        return (optax.apply_updates(params, updates), state), loss

    params = task.init(jax.random.PRNGKey(seed))
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), steps)
    (params, _), losses = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), keys))(params)
    return params, np.asarray(losses)


def test_trains_a_few_steps_with_adam_and_mulo():
    task, data = mup_mlp_task("t", SHAPE, 10, 64, width=32), _data()
    _, losses = _train(task, optax.adam(3e-2), data)
    assert losses[-5:].mean() < 0.8 * losses[:5].mean()
    opt = create("mup_small_fc_lopt", num_steps=30, key=jax.random.key(0))
    params, losses = _train(task, opt, data)
    assert np.all(np.isfinite(losses)) and all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))


def _rename(params, old, new):
    return {k.replace(old, new): v for k, v in params.items()}


def test_mulo_step_moves_preactivations_by_a_width_independent_amount():
    """µP's point: one learned step changes the last hidden pre-activation by O(1) at every width
    with µLO's 1/fan_in factor, but by O(width) without it (small_fc_lopt's numerics, same θ: the
    layers renamed out of the µP convention, so ``require_roles=False`` leaves them unscaled)."""
    x = inputs(64, seed=3)
    y = jnp.asarray(np.random.default_rng(4).integers(0, 10, 64), jnp.int32)
    change = {}
    for mup in (True, False):
        for width in (64, 512):
            task = mup_mlp_task("t", SHAPE, 10, 64, width=width)
            params = task.init(jax.random.PRNGKey(7))
            params["mup_output"]["w"] = 0.1 * jax.random.normal(jax.random.PRNGKey(8), (width, 10))  # a gradient path
            grads = jax.grad(task.loss)(params, (x, y))
            opt = create("mup_small_fc_lopt", num_steps=10, key=jax.random.key(0), require_roles=mup)
            if not mup:
                params, grads = _rename(params, "mup_", "plain_"), _rename(grads, "mup_", "plain_")
            updates, _ = opt.update(grads, opt.init(params), params, loss=jnp.float32(1.0))
            new = optax.apply_updates(params, updates)
            if not mup:
                params, new = _rename(params, "plain_", "mup_"), _rename(new, "plain_", "mup_")
            _, before = np_forward(params, x, 1.0, 1.0)
            _, after = np_forward(new, x, 1.0, 1.0)
            change[(mup, width)] = float(np.sqrt(np.mean((after[-1] - before[-1]) ** 2)))
    mu_ratio = change[(True, 512)] / change[(True, 64)]
    plain_ratio = change[(False, 512)] / change[(False, 64)]
    assert 0.5 < mu_ratio < 2.0, change
    assert plain_ratio > 4.0, change


def test_mulo_meta_trains_on_two_narrow_widths():
    """µLO's multi-width recipe: one µP family per width, one PES estimator each, gradients averaged."""
    from components.meta import MetaTrainConfig, meta_train  # noqa: PLC0415
    from components.optimizers import create_learned  # noqa: PLC0415

    rng = np.random.default_rng(0)
    x = rng.random((256, 4, 4, 1)).astype(np.float32)
    y = np.argmax(x.reshape(256, -1) @ rng.normal(size=(16, 10)), -1).astype(np.int32)
    data = ImageData(jnp.asarray(x[None]), jnp.asarray(y[None]), jnp.asarray([256], jnp.int32))
    families = [MuPMLPFamily(("synthetic",), (4, 4, 1), 10, 16, width=w, depth=2) for w in (8, 16)]
    cfg = MetaTrainConfig(
        num_outer_steps=2, num_tasks=2, trunc_length=4, min_unroll=8, max_unroll=16, sigma=0.05, outer_lr=1e-2,
        log_every=1, checkpoint_every=None,
    )  # fmt: skip
    lopt = create_learned("mup_small_fc_lopt", hidden_size=4)
    theta0 = lopt.init_meta_params(jax.random.key(0))
    result = meta_train(
        lopt, families, [data, data], cfg, key=jax.random.PRNGKey(0), log=lambda m: None, init_meta_params=theta0
    )
    losses = [v for _, v in result.curves["meta_loss"]]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(result.meta_params), jax.tree.leaves(theta0))]
    assert max(moved) > 0.0 and all(np.isfinite(moved))
