"""The meta-training distribution of a params file (three task_family cases, no data on disk) and
the relation of every evaluation task to it."""

import json
from pathlib import Path

from components.stages.distribution import evaluated_spec, meta_train_distribution, task_relations
from components.stages.params import PipelineParams
from components.tasks import MLPArch, celo_distribution
from flows.params_io import load_params

REPO = Path(__file__).resolve().parents[3]


def test_image_mlp_family_at_data_image_size():
    # the default family: small_fc_lopt on mnist / fashion_mnist at image_size 8, MLP-32, batch 128, unrolls <= 1000
    params = PipelineParams(
        evaluate={"tasks": ["digits_mlp", "mnist_mlp", "mnist_mlp_deep", "mnist_mlp_long", "cifar10_gray16_conv_ln"]},
        data={"datasets": ["mnist", "fashion_mnist", "digits", "cifar10_jpeg_gray_16"]},
    )
    dist = meta_train_distribution(params)
    assert dist.datasets == ("mnist_8", "fashion_mnist_8") and dist.archs == (MLPArch((32,)),)
    assert (dist.max_params, dist.max_horizon, dist.batch_sizes, dist.finetuning) == (2410, 1000, (128,), False)
    rel = task_relations(params)
    assert list(rel) == params.evaluate.tasks
    assert rel["digits_mlp"]["ood_axes"] == ["dataset"]  # same MLP, another dataset
    assert rel["mnist_mlp"]["in_distribution"]
    assert rel["mnist_mlp_deep"]["ood_axes"][0] == "architecture" and "dataset" not in rel["mnist_mlp_deep"]["ood_axes"]
    assert rel["mnist_mlp_long"]["ood_axes"] == ["horizon"]
    assert rel["cifar10_gray16_conv_ln"]["ood_axes"] == ["dataset", "architecture", "horizon"]  # 2000 steps
    assert json.loads(json.dumps(rel)) == rel


def test_default_params_file():
    params = load_params(REPO / "params" / "default.yaml")
    rel = task_relations(params)
    assert rel["digits_mlp"]["ood_axes"] == ["dataset"]  # MNIST / Fashion-MNIST only: digits is held out
    assert "architecture" in rel["mnist_mlp_deep"]["ood_axes"] and "dataset" not in rel["mnist_mlp_deep"]["ood_axes"]
    assert not any(r["in_distribution"] for r in rel.values())


def test_celo_preset_puts_digits_in_distribution():
    params = load_params(REPO / "params" / "celo_gpu.yaml")  # preset celo, max_unroll 2000, suite heldout
    assert meta_train_distribution(params) == celo_distribution()
    rel = task_relations(params)
    assert [n for n, r in rel.items() if r["in_distribution"]] == ["digits_mlp", "mnist_mlp"]
    assert rel["mnist_mlp_long"]["ood_axes"] == ["horizon"]
    # the same preset with shorter unrolls: the 1000-step tasks are out by horizon
    short = PipelineParams(
        data={"datasets": ["mnist_8", "fashion_mnist_8", "cifar10_jpeg_gray_8", "digits_8"]},
        meta_train={"task_family": {"preset": "celo"}, "max_unroll": 300},
        evaluate={"tasks": ["digits_mlp"], "num_steps": 300},
    )
    assert meta_train_distribution(short).max_horizon == 300
    assert task_relations(short)["digits_mlp"]["in_distribution"]  # evaluated for 300 steps


def test_single_task_family_and_evaluated_horizon():
    params = PipelineParams(
        data={"datasets": ["mnist_8", "digits_8"]},
        meta_train={"task_family": {"task": "ft_mnist_to_digits_mlp"}, "min_unroll": 300, "max_unroll": 300},
        evaluate={"tasks": ["ft_mnist_to_digits_mlp", "digits_mlp"], "eval_every": 20},
    )
    dist = meta_train_distribution(params)
    assert dist.name == "task ft_mnist_to_digits_mlp" and dist.finetuning and dist.datasets == ("digits_8",)
    assert (dist.max_params, dist.max_horizon, dist.batch_sizes) == (9610, 300, (64,))
    rel = task_relations(params)
    assert rel["ft_mnist_to_digits_mlp"]["in_distribution"]
    assert rel["digits_mlp"]["ood_axes"] == ["architecture", "horizon", "finetuning"]
    # evaluate.num_steps / batch_size override the tasks' own, and the relation sees them
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"num_steps": 400})})
    assert evaluated_spec(params, "ft_mnist_to_digits_mlp").num_steps == 400
    assert task_relations(params)["ft_mnist_to_digits_mlp"]["ood_axes"] == ["horizon"]
