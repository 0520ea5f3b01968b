"""The out-of-distribution suite (components.tasks.ood): the declaration agrees with the computed relation,
every task builds and learns on tiny synthetic data, the ResNet's blocks are residual (checked against
XLA's own convolution), the autoencoder's target is its input, and params files can name the suite."""

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from components.evaluation.runner import train_curves
from components.stages.distribution import meta_train_distribution
from components.stages.params import PipelineParams
from components.tasks import SUITE_TASKS, SUITES, ImageData, TokenData, celo_distribution, describe, eval_sets, suite
from components.tasks.autoencoder import AutoencoderTask
from components.tasks.distribution import META_TRAIN_MAX_HORIZON, distribution_relation
from components.tasks.ood import OOD_HORIZON_FACTOR, OOD_TASKS, AutoencoderArch, OODTaskSpec, ResNetArch
from components.tasks.residual import ResNetTask, apply_block, apply_resnet, block_names, conv2d
from components.tasks.spec import MLPArch, TaskSpec, make_task, task_data
from components.tasks.suite import _specs, build_task, get_spec
from flows.params_io import load_params

REPO = Path(__file__).resolve().parents[3]
PARAMS_FILES = sorted((REPO / "params").glob("*.yaml"))
RNG = np.random.default_rng(0)


# -- the suite and its declaration ---------------------------------------------------------------------
def test_the_suite_lists_four_declared_ood_tasks_of_new_kinds():
    specs = suite("ood")
    assert len(specs) >= 4 and SUITES["ood"] == tuple(s.name for s in OOD_TASKS)
    assert all(isinstance(s, OODTaskSpec) and s.declared_axes and s.ood_reason for s in specs)
    assert {s.kind for s in specs} == {"mlp", "resnet", "char_lm", "mlp_autoencoder"}
    assert all(SUITE_TASKS[s.name] is s for s in specs)
    rows = describe("ood")
    assert [r["name"] for r in rows] == list(SUITES["ood"])
    for r, s in zip(rows, specs):
        assert r["declared_ood"] == {"axes": list(s.declared_axes), "reason": s.ood_reason}
        assert not r["in_distribution"]
    assert all(r["declared_ood"] is None for r in describe("heldout"))  # only this suite declares


def test_the_wide_mlp_and_the_char_lm_are_out_by_width_and_horizon_as_asked():
    wide = get_spec("mnist_mlp_wide_256x2")
    assert len(wide.arch.hidden) == 2 and all(w >= 4 * 32 for w in wide.arch.hidden)
    assert wide.num_params() == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    lm = get_spec("shakespeare_char_lm_4x_horizon")
    assert lm.num_steps == OOD_HORIZON_FACTOR * META_TRAIN_MAX_HORIZON == 4 * 2000
    assert lm.arch == get_spec("shakespeare_char_lm_tiny").arch  # an existing language task kind


def _zoo_distributions():
    """Celo's preset and every shipped params file that meta-trains on an image-MLP family."""
    dists = {"celo preset": celo_distribution()}
    for path in PARAMS_FILES:
        params = load_params(path)
        if params.meta_train.task_family.task is None:
            dists[path.name] = meta_train_distribution(params)
    assert {"default.yaml", "celo_cpu.yaml"} <= set(dists)
    return dists


def test_the_computed_relation_contains_the_declared_axes_against_the_zoo():
    for where, dist in _zoo_distributions().items():
        for spec in OOD_TASKS:
            computed = distribution_relation(spec, dist)["ood_axes"]
            assert set(spec.declared_axes) <= set(computed), (where, spec.name, computed)


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_every_task_is_out_of_every_shipped_distribution_by_architecture(path):
    dist = meta_train_distribution(load_params(path))
    for spec in OOD_TASKS:
        assert "architecture" in distribution_relation(spec, dist)["ood_axes"], (path.name, spec.name)


def test_bad_declarations_and_duplicate_names_fail_loudly():
    base = ("t", "mnist_8", MLPArch((64,)), 32, 100, "")
    with pytest.raises(ValueError, match="must name at least one axis"):
        OODTaskSpec(*base, ood_reason="wider")
    with pytest.raises(ValueError, match="must name at least one axis, each one of"):
        OODTaskSpec(*base, declared_axes=("width",), ood_reason="wider")
    with pytest.raises(ValueError, match="say in ood_reason"):
        OODTaskSpec(*base, declared_axes=("architecture",), ood_reason=" ")
    with pytest.raises(ValueError, match=r"task names registered twice: \['mnist_mlp'\]"):
        _specs(get_spec("mnist_mlp"), get_spec("digits_mlp"), dataclasses.replace(get_spec("mnist_mlp")))
    for arch in (ResNetArch((8,)), AutoencoderArch((16,))):
        with pytest.raises(ValueError, match="needs an image dataset"):
            make_task(TaskSpec("x", "tiny_shakespeare", arch, 8, 10))
        with pytest.raises(ValueError, match="needs an image dataset"):
            make_task(TaskSpec("x", "mnist1d", arch, 8, 10))


# -- every task builds and learns --------------------------------------------------------------------
def _synthetic_data(spec):
    if spec.kind == "char_lm":
        period = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7], np.int32)  # a learnable sequence
        return TokenData(jnp.asarray(np.tile(period, 200)))
    x = RNG.random((48, 8, 8, 1)).astype(np.float32)
    y = RNG.integers(0, 10, 48).astype(np.int32)
    return task_data(spec.dataset, {"x_train": x, "y_train": y})


def _adam_losses(task, batch, steps=25, lr=3e-3):
    opt = optax.adam(lr)

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        return jax.lax.scan(step, (params, opt.init(params)), None, steps)[1]

    return run(task.init(jax.random.PRNGKey(0)))


@pytest.mark.parametrize("name", SUITES["ood"])
def test_each_task_builds_has_a_finite_initial_loss_and_learns_with_adam(name):
    spec = get_spec(name)
    task = build_task(spec, batch_size=16)
    data = _synthetic_data(spec)
    batch = task.batch(data, jax.random.PRNGKey(1))
    assert jax.tree_util.tree_leaves(batch)[0].shape[0] == 16
    params = task.init(jax.random.PRNGKey(0))
    assert sum(p.size for p in jax.tree_util.tree_leaves(params)) == spec.num_params()
    losses = np.asarray(_adam_losses(task, batch))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses  # a fixed batch: Adam fits it
    assert float(task.normalized_loss(losses[0])) == pytest.approx(float(losses[0]))  # in the normaliser's range


# -- the ResNet: residual blocks, checked against an independent implementation ---------------------------
@functools.partial(jax.jit, static_argnums=2)
def _xla_conv(h, layer, stride):
    dn = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(h, layer["w"], (stride, stride), "SAME", dimension_numbers=dn) + layer["b"]


def _ref_ln(h, scale, offset):
    mu = h.mean((1, 2, 3), keepdims=True)
    return (h - mu) / jnp.sqrt(((h - mu) ** 2).mean((1, 2, 3), keepdims=True) + 1e-5) * scale + offset


@jax.jit
def _ref_branch(block, x):
    stride = 2 if "proj" in block else 1
    h = _xla_conv(jax.nn.relu(_ref_ln(x, block["ln0_scale"], block["ln0_offset"])), block["conv0"], stride)
    return _xla_conv(jax.nn.relu(_ref_ln(h, block["ln1_scale"], block["ln1_offset"])), block["conv1"], 1)


_block, _resnet = jax.jit(apply_block), jax.jit(apply_resnet)  # one compile each, not one per primitive


@pytest.mark.parametrize(("size", "k", "stride"), [(8, 3, 1), (8, 3, 2), (7, 3, 2), (8, 1, 2), (5, 5, 1)])
def test_conv2d_matches_xla_same_convolution(size, k, stride):
    kx, kw, kb = jax.random.split(jax.random.PRNGKey(size * 10 + k + stride), 3)
    x = jax.random.normal(kx, (2, size, size, 3))
    layer = {"w": jax.random.normal(kw, (k, k, 3, 4)), "b": jax.random.normal(kb, (4,))}
    ours = jax.jit(conv2d, static_argnums=2)(x, layer, stride)
    np.testing.assert_allclose(ours, _xla_conv(x, layer, stride), rtol=1e-5, atol=1e-5)


def test_resnet_blocks_are_residual_and_the_branches_start_at_zero():
    task = build_task("fashion_mnist_resnet_16x32", batch_size=4)
    assert isinstance(task, ResNetTask) and task.channels == (16, 32) and task.norm == "layer_norm"
    params = task.init(jax.random.PRNGKey(0))
    names = block_names(len(task.channels), task.blocks_per_stage)
    assert names == ["block0_0", "block1_0"] and "proj" not in params["block0_0"] and "proj" in params["block1_0"]
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 16))
    # at initialisation the branch ends are zero: an identity block is the identity, a projection block its skip
    ident, proj = params["block0_0"], params["block1_0"]
    np.testing.assert_array_equal(_block(ident, x), x)
    np.testing.assert_allclose(_block(proj, x), _xla_conv(x, proj["proj"], 2), rtol=1e-5, atol=1e-6)
    # with a non-zero branch, output - skip(x) is the branch f(x), computed here with XLA's convolution
    kz = jax.random.split(jax.random.PRNGKey(2), 2)
    for block, key in zip((ident, proj), kz):
        w = block["conv1"]["w"]
        block = {**block, "conv1": {"w": 0.1 * jax.random.normal(key, w.shape), "b": jnp.full(w.shape[-1], 0.05)}}
        skip = _xla_conv(x, block["proj"], 2) if "proj" in block else x
        out = _block(block, x)
        assert out.shape == skip.shape and float(jnp.abs(out - skip).max()) > 1e-2
        np.testing.assert_allclose(out - skip, _ref_branch(block, x), rtol=1e-4, atol=1e-5)
    # and the whole network: stem, the blocks in order, final norm + ReLU, mean pool, head
    images = jax.random.uniform(jax.random.PRNGKey(3), (4, 8, 8, 1))
    h = _xla_conv(images, params["stem"], 1)
    for n in names:
        h = (_xla_conv(h, params[n]["proj"], 2) if "proj" in params[n] else h) + _ref_branch(params[n], h)
    h = jax.nn.relu(_ref_ln(h, params["final"]["ln_scale"], params["final"]["ln_offset"])).mean((1, 2))
    ref = h @ params["head"]["w"] + params["head"]["b"]
    np.testing.assert_allclose(_resnet(params, images), ref, rtol=1e-4, atol=1e-5)


def test_resnet_without_zero_init_or_norm_and_bad_shapes():
    from components.tasks.residual import init_resnet

    params = init_resnet(jax.random.PRNGKey(0), (8, 8, 1), (4, 8), 2, 10, layer_norm=False, zero_init_branch=False)
    assert [n for n in params if n.startswith("block")] == block_names(2, 2)
    assert all(float(jnp.abs(params[n]["conv1"]["w"]).max()) > 0 for n in block_names(2, 2))
    assert "final" not in params and not any("ln0_scale" in params[n] for n in block_names(2, 2))
    assert _resnet(params, jnp.ones((3, 8, 8, 1))).shape == (3, 10)
    with pytest.raises(ValueError, match="at least one stage"):
        init_resnet(jax.random.PRNGKey(0), (8, 8, 1), (), 1, 10)
    with pytest.raises(ValueError, match="needs images"):
        ResNetTask("r", (8,), 1, "relu", "none", (40,), 10, 8)
    with pytest.raises(ValueError, match="unknown norm 'batch_norm'"):
        ResNetTask("r", (8,), 1, "relu", "batch_norm", (8, 8, 1), 10, 8)


# -- the autoencoder -----------------------------------------------------------------------------------
def test_the_autoencoders_target_is_its_input():
    task = build_task("mnist_mlp_autoencoder", batch_size=8)
    assert isinstance(task, AutoencoderTask) and task.hidden == (128, 16, 128) and not task.has_accuracy
    params = task.init(jax.random.PRNGKey(0))
    assert params[task.head_key]["w"].shape == (128, 64)  # the decoder outputs every pixel
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1))
    y = jnp.arange(8, dtype=jnp.int32)
    recon = task.reconstruct(params, x)
    assert recon.shape == x.shape and float(recon.min()) > 0 and float(recon.max()) < 1  # sigmoid outputs
    loss = task.loss(params, (x, y))
    np.testing.assert_allclose(loss, jnp.mean((recon - x) ** 2), rtol=1e-6)
    assert float(task.loss(params, (x, jnp.full_like(y, 3)))) == float(loss)  # labels play no part
    x2 = x[::-1] * 0.5
    np.testing.assert_allclose(task.loss(params, (x2, y)), jnp.mean((task.reconstruct(params, x2) - x2) ** 2))
    assert float(task.loss(params, (x2, y))) != pytest.approx(float(jnp.mean((task.reconstruct(params, x2) - x) ** 2)))
    assert np.isnan(float(task.accuracy(params, (x, y))))
    norm = task.normalized_loss(jnp.array([0.3, 2.0, -1.0, jnp.nan, jnp.inf]))
    np.testing.assert_allclose(norm, [0.3, 1.0, 0.0, 1.0, 1.0], rtol=1e-6)


# -- the evaluation can run the suite --------------------------------------------------------------------
def test_the_evaluation_runner_trains_the_autoencoder_on_prepared_style_arrays():
    images = {
        "x_train": RNG.random((40, 8, 8, 1)).astype(np.float32),
        "y_train": RNG.integers(0, 10, 40).astype(np.int32),
        "x_test": RNG.random((10, 8, 8, 1)).astype(np.float32),
        "y_test": RNG.integers(0, 10, 10).astype(np.int32),
    }
    # the autoencoder: the one new task without accuracy (the ResNet goes through the runner like any classifier)
    for name in ("mnist_mlp_autoencoder",):
        spec = get_spec(name)
        task = build_task(spec, batch_size=8)
        data = task_data(spec.dataset, images)
        assert isinstance(data, ImageData)
        sets = jax.tree_util.tree_map(jnp.asarray, eval_sets(spec, images, max_examples=10))
        out = train_curves(
            task, optax.adam, jnp.array([1e-3]), data, sets, keys=jax.random.split(jax.random.PRNGKey(0), 2),
            num_steps=4, eval_every=2,
        )  # fmt: skip
        assert out["batch_loss"].shape == (1, 2, 4) and out["test_loss"].shape == (1, 2, 3)
        assert bool(jnp.all(jnp.isfinite(out["test_loss"])))
        assert bool(jnp.all(jnp.isnan(out["test_acc"]))) == (not task.has_accuracy)


def test_params_can_name_the_suite_and_need_its_data():
    data = {"datasets": ["mnist", "fashion_mnist", "digits", "tiny_shakespeare"], "image_size": 8}
    params = PipelineParams.model_validate({"data": data, "evaluate": {"suite": "ood"}})
    assert params.evaluate.tasks == list(SUITES["ood"])
    assert [params.evaluate.steps_of(t) for t in params.evaluate.tasks] == [1000, 1000, 8000, 1000]
    picked = PipelineParams.model_validate({"evaluate": {"tasks": ["mnist_mlp_autoencoder", "digits_mlp"]}})
    assert picked.evaluate.tasks == ["mnist_mlp_autoencoder", "digits_mlp"]
    with pytest.raises(ValueError, match="needs prepared dataset 'tiny_shakespeare'.*add 'tiny_shakespeare'"):
        PipelineParams.model_validate({"evaluate": {"suite": "ood"}})


def test_the_default_learned_optimizer_steps_on_the_new_parameter_trees():
    """small_fc_lopt (the default experiment's) on the ResNet's nested blocks and 4-D kernels and the autoencoder."""
    from components.optimizers.registry import create_learned

    lopt = create_learned("small_fc_lopt")
    opt = lopt.make(lopt.init_meta_params(jax.random.PRNGKey(0)), num_steps=3)
    for name in ("fashion_mnist_resnet_16x32", "mnist_mlp_autoencoder"):
        spec = get_spec(name)
        task = build_task(spec, batch_size=8)
        batch = task.batch(_synthetic_data(spec), jax.random.PRNGKey(1))

        @jax.jit
        def run(params, task=task, batch=batch):
            def step(carry, _):
                params, state = carry
                loss, grads = jax.value_and_grad(task.loss)(params, batch)
                updates, state = opt.update(grads, state, params, loss=loss)
                return (optax.apply_updates(params, updates), state), loss

            return jax.lax.scan(step, (params, opt.init(params)), None, 3)

        params = task.init(jax.random.PRNGKey(0))
        (final, _), losses = run(params)
        assert bool(jnp.all(jnp.isfinite(losses)))
        assert jax.tree_util.tree_structure(final) == jax.tree_util.tree_structure(params)
        assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(final))
        assert any(
            bool(jnp.any(a != b)) for a, b in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(params))
        )
