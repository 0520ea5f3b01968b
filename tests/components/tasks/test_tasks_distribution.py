"""Relation of a task to a meta-training distribution: hand-known answers on constructed specs, the
Celo preset (UCI digits in place of SVHN), JSON-ready output and the documented failure modes."""

import dataclasses
import json

import pytest

from components.tasks import (
    CELO_DATASETS,
    OOD_AXES,
    RELATION_AXES,
    SUITES,
    ConvArch,
    MetaTrainDistribution,
    MLPArch,
    Pretrain,
    QuadraticArch,
    TaskSpec,
    celo_distribution,
    describe,
    distribution_relation,
    get_spec,
    ood_axes,
    sized_name,
)

MLP32 = MLPArch((32,))


def _dist(*datasets, arch=MLP32, batch=128, horizon=1000, finetune=False):
    pretrain = Pretrain("mnist_8", 10) if finetune else None
    specs = [TaskSpec(f"m_{d}", d, arch, batch, horizon, pretrain=pretrain) for d in datasets]
    return MetaTrainDistribution.from_specs("test", specs)


def test_same_dataset_and_architecture_is_in_distribution():
    dist = _dist("mnist_8", "fashion_mnist_8")
    assert dist.max_params == 64 * 32 + 32 + 32 * 10 + 10 and dist.image_sizes == (8,)
    rel = distribution_relation(TaskSpec("t", "fashion_mnist_8", MLP32, 64, 500), dist)
    assert rel["in_distribution"] and rel["ood_axes"] == []
    assert list(rel["axes"]) == list(RELATION_AXES) and all(rel["axes"][a]["same"] for a in OOD_AXES)
    assert rel["axes"]["batch_size"] == {
        "same": False,
        "task": 64,
        "meta_train": [128],
        "note": "reported only: batch size alone does not make a task out of distribution",
    }
    assert json.loads(json.dumps(rel)) == rel  # JSON-ready


def test_each_axis_on_its_own():
    dist = _dist("mnist_8")
    base = TaskSpec("t", "mnist_8", MLP32, 128, 1000)

    def out(**changes):
        return distribution_relation(dataclasses.replace(base, **changes), dist)["ood_axes"]

    assert out() == []
    assert out(dataset="digits_8") == ["dataset"]
    assert out(num_steps=1001) == ["horizon"]
    assert out(arch=MLPArch((32,), "tanh")) == ["architecture"]
    assert out(arch=MLPArch((32,), norm="layer_norm")) == ["architecture"]
    assert out(arch=ConvArch((4, 8))) == ["architecture"]
    assert out(arch=MLPArch((321,))) == ["architecture"]  # 75 * 321 + 10 = 24,085 params < 10 x 2,410
    assert out(arch=MLPArch((322,))) == ["architecture", "size"]  # 24,160
    assert out(pretrain=Pretrain("fashion_mnist_8", 10)) == ["finetuning"]
    assert out(batch_size=7) == []


def test_size_rule_is_ten_times_the_largest_meta_training_task():
    dist = _dist("mnist_8")  # 2,410 params: out at >= 24,100
    hidden = 300  # 64*300 + 300 + 300*10 + 10 = 22,510
    rel = distribution_relation(TaskSpec("t", "mnist_8", MLPArch((hidden,)), 128, 10), dist)
    assert rel["axes"]["size"]["task"] == 22_510 and rel["axes"]["size"]["limit"] == 24_100
    assert rel["axes"]["size"]["same"]
    rel = distribution_relation(TaskSpec("t", "mnist_8", MLPArch((330,)), 128, 10), dist)  # 24,760
    assert not rel["axes"]["size"]["same"]


def test_another_image_size_is_the_same_dataset_with_a_note_gray_and_rgb_differ():
    dist = _dist("mnist_8", "cifar10_jpeg_gray_8")
    axis = distribution_relation(TaskSpec("t", "mnist_28", MLP32, 128, 10), dist)["axes"]["dataset"]
    assert axis["same"] and "another image size (28 vs 8)" in axis["note"]
    axis = distribution_relation(TaskSpec("t", "cifar10_jpeg_32", MLP32, 128, 10), dist)["axes"]["dataset"]
    assert not axis["same"] and "cifar10_jpeg_gray_8" in axis["note"]
    synthetic = TaskSpec("q", "", QuadraticArch(10), 1, 10)
    assert distribution_relation(synthetic, dist)["axes"]["dataset"]["same"] is False
    quad = MetaTrainDistribution.from_specs("q", [synthetic])  # synthetic matches synthetic only
    assert distribution_relation(dataclasses.replace(synthetic, name="q2"), quad)["in_distribution"]
    rotated = dataclasses.replace(synthetic, arch=QuadraticArch(10, rotate=True))
    assert distribution_relation(rotated, quad)["ood_axes"] == ["architecture"]


def test_finetuning_distribution_puts_scratch_training_out():
    dist = _dist("digits_8", finetune=True)
    assert dist.finetuning
    rel = distribution_relation(TaskSpec("t", "digits_8", MLP32, 128, 10), dist)
    assert rel["ood_axes"] == ["finetuning"] and rel["axes"]["finetuning"]["meta_train"] is True


def test_celo_preset_makes_digits_and_mnist_in_distribution():
    dist = celo_distribution()
    assert dist.datasets == CELO_DATASETS and "digits_8" in dist.datasets  # UCI digits for SVHN (offline)
    assert (dist.max_params, dist.max_horizon, dist.batch_sizes) == (2410, 2000, (64,))
    inside = [r["name"] for r in describe("heldout") if r["in_distribution"]]
    assert inside == ["digits_mlp", "mnist_mlp"]  # labelled in-distribution; every other task is out
    assert all(r["ood"] for r in describe("heldout") if r["name"] not in inside)
    assert ood_axes(get_spec("digits_mlp")) == ()
    assert set(SUITES["heldout"]) >= set(inside)


def test_ood_axes_is_the_relation_against_the_celo_preset():
    for name in SUITES["heldout"]:
        spec = get_spec(name)
        assert ood_axes(spec) == tuple(distribution_relation(spec, celo_distribution())["ood_axes"])


def test_sized_names_and_bad_distributions():
    assert sized_name("mnist", image_size=8) == "mnist_8"
    assert sized_name("cifar10_jpeg_gray", image_size=16) == "cifar10_jpeg_gray_16"
    assert sized_name("mnist1d") == "mnist1d" and sized_name("") == ""
    with pytest.raises(ValueError, match="names no size"):
        sized_name("mnist")
    with pytest.raises(ValueError, match="dataset 'mnist'.*name the image size"):
        MetaTrainDistribution("d", ("mnist",), (MLP32,), 10, 10, (1,))
    with pytest.raises(ValueError, match="archs is empty"):
        MetaTrainDistribution("d", ("mnist_8",), (), 10, 10, (1,))
    with pytest.raises(ValueError, match="max_horizon must be > 0"):
        MetaTrainDistribution("d", ("mnist_8",), (MLP32,), 10, 0, (1,))
    with pytest.raises(ValueError, match="no meta-training task specs"):
        MetaTrainDistribution.from_specs("d", [])
