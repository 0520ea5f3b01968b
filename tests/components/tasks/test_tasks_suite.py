"""The named task registry and suites: sizes, out-of-distribution coverage, parameter counts without
data, the legacy names, building tasks and their data from (synthetic) prepared arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from components.tasks import (
    OOD_AXES,
    SUITE_TASKS,
    SUITES,
    CharLMTask,
    FineTuneTask,
    ImageData,
    TokenData,
    build_task,
    dataset_info,
    describe,
    eval_sets,
    get_spec,
    num_params,
    ood_axes,
    source_task,
    suite,
    task_data,
)


def test_heldout_suite_size_finetuning_and_scale():
    specs = suite("heldout")
    assert len(specs) >= 16
    assert sum(s.is_finetune for s in specs) >= 4
    counts = {s.name: s.num_params() for s in specs}  # eval_shape: no data, no FLOPs
    assert max(counts.values()) >= 1_000_000
    assert all(n > 0 for n in counts.values())
    covered = {axis for s in specs for axis in ood_axes(s)}
    assert covered == set(OOD_AXES)  # dataset, architecture, size, horizon, finetuning
    kinds = {s.kind for s in specs}
    assert {"mlp", "conv", "conv1d", "char_lm"} <= kinds


def test_every_spec_names_a_preparable_dataset_and_counts_its_parameters():
    for name in SUITES:
        assert all(n in SUITE_TASKS for n in SUITES[name]), name
    for spec in SUITE_TASKS.values():
        info = dataset_info(spec.dataset)  # raises for names the data layer cannot prepare
        if spec.pretrain is not None:
            dataset_info(spec.pretrain.dataset)
            assert num_params(source_task(spec)) > 0
        assert spec.num_params() > 0 and spec.batch_size > 0 and spec.num_steps > 0
        assert (info.kind == "synthetic") == (spec.dataset == "")


def test_known_parameter_counts():
    assert get_spec("mnist_mlp").num_params() == 64 * 32 + 32 + 32 * 10 + 10
    assert get_spec("cifar10_mlp_1024x512").num_params() == 3072 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 10 + 10
    d, v, t, depth = 128, 65, 128, 6
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    assert get_spec("shakespeare_char_lm_1m").num_params() == v * d + t * d + depth * block + 2 * d + d * v + v


def test_ood_axes_against_the_celo_preset():
    assert ood_axes(get_spec("mnist_mlp")) == ()  # in-distribution reference
    assert ood_axes(get_spec("mnist_mlp_long")) == ("horizon",)
    assert "dataset" in ood_axes(get_spec("mnist1d_conv")) and "dataset" in ood_axes(get_spec("cifar10_mlp_1024x512"))
    assert "dataset" not in ood_axes(get_spec("cifar10_gray32_mlp_tanh"))  # CIFAR-10 gray is a Celo dataset
    assert "finetuning" in ood_axes(get_spec("ft_shakespeare_char_lm"))


def test_legacy_suite_keeps_the_first_pipelines_tasks():
    assert SUITES["legacy"] == ("digits_mlp", "mnist_mlp", "mnist_mlp_deep", "fashion_mnist_conv")
    task = build_task("mnist_mlp_deep", batch_size=16)
    assert (task.model, task.hidden, task.activation, task.image_shape) == ("mlp", (128, 128), "tanh", (8, 8, 1))
    assert build_task("fashion_mnist_conv").model == "conv" and get_spec("digits_mlp").dataset == "digits_8"


def test_building_finetuning_tasks_needs_the_source_params():
    spec = get_spec("ft_mnist_to_digits_mlp")
    with pytest.raises(ValueError, match="pass pretrained=pretrain"):
        build_task(spec)
    with pytest.raises(ValueError, match="not a fine-tuning task"):
        build_task("mnist_mlp", pretrained={})
    with pytest.raises(ValueError, match="no source task"):
        source_task("mnist_mlp")
    src = source_task(spec)
    assert src.image_shape == (8, 8, 1) and src.batch_size == spec.pretrain.batch_size
    shapes = jax.eval_shape(src.init, jax.random.PRNGKey(0))
    pretrained = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes)
    task = build_task(spec, pretrained=pretrained)
    assert isinstance(task, FineTuneTask) and task.reinit_head and task.batch_size == spec.batch_size
    lm = source_task("ft_shakespeare_char_lm")
    assert isinstance(lm, CharLMTask) and lm.token_range == (0.0, 0.5)


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="unknown task 'nope'; choose one of"):
        get_spec("nope")
    with pytest.raises(ValueError, match="unknown suite 'nope'"):
        suite("nope")
    with pytest.raises(ValueError, match="bad prepared dataset name"):
        dataset_info("svhn_8")


def test_task_data_and_eval_sets_from_prepared_arrays():
    rng = np.random.default_rng(0)
    images = {
        "x_train": rng.random((30, 8, 8, 1)).astype(np.float32),
        "y_train": rng.integers(0, 10, 30).astype(np.int32),
        "x_test": rng.random((12, 8, 8, 1)).astype(np.float32),
        "y_test": rng.integers(0, 10, 12).astype(np.int32),
    }
    data = task_data("digits_8", images)
    assert isinstance(data, ImageData) and data.x.shape == (1, 30, 8, 8, 1)
    sets = eval_sets(get_spec("digits_mlp"), images, max_examples=10)
    assert sets["train"][0].shape == (10, 8, 8, 1) and sets["test"][1].shape == (10,)
    text = {"train_tokens": np.arange(1000, dtype=np.int32) % 65, "test_tokens": np.arange(300, dtype=np.int32) % 65}
    spec = get_spec("ft_shakespeare_char_lm")  # context 64, trains on the second half
    assert isinstance(task_data(spec.dataset, text), TokenData)
    sets = eval_sets(spec, text, max_examples=3)
    assert sets["train"][0].shape == (3, 64) and int(sets["train"][0][0, 0]) == 500 % 65
    assert sets["test"][0].shape == (3, 64)
    assert task_data("", {}) is None and eval_sets(get_spec("logistic_d50"), {}) == {}
    task = build_task("logistic_d50")
    assert task.batch(None, jax.random.PRNGKey(0))[0].shape == (64, 50)
    assert jnp.isfinite(task.loss(task.init(jax.random.PRNGKey(0)), task.batch(None, jax.random.PRNGKey(1))))


def test_describe_lists_the_suite_with_parameter_counts():
    rows = describe("heldout")
    assert [r["name"] for r in rows] == list(SUITES["heldout"])
    row = next(r for r in rows if r["name"] == "ft_mnist_to_fashion_mnist_mlp")
    assert row["kind"] == "finetune:mlp" and row["pretrain_dataset"] == "mnist_28" and row["num_params"] == 235_146
