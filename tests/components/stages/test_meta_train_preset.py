"""meta_train with ``task_family.preset: celo``: Celo's four 8x8 gray datasets (UCI digits for SVHN),
MLP 32, batch 64, global re-parametrisation, from data prepared by the prepare_data stage."""

import json

import jax
import numpy as np
import pytest

from components.stages import inputs, meta_train, paths, prepare_data
from components.stages.common import StageContext
from components.stages.fetch import MIRROR_ENV
from components.stages.params import PipelineParams
from components.tasks import CELO_DATASETS, ReparamFamily


def _params() -> PipelineParams:
    return PipelineParams(
        data={
            # mnist, fashion_mnist and digits at image_size 8 are the preset's mnist_8, fashion_mnist_8, digits_8
            "datasets": ["mnist", "fashion_mnist", "digits", "cifar10_jpeg_gray_8"],
            "max_train_examples": 1000,
        },
        meta_train={
            "lopt_hyperparams": {"hidden_size": 4, "hidden_layers": 2},
            "task_family": {"preset": "celo"},
            "num_outer_steps": 4,
            "num_tasks": 4,
            "trunc_length": 5,
            "min_unroll": 10,
            "max_unroll": 20,
            "log_every": 2,
        },
    )


def test_celo_preset_family_and_meta_training(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    params = _params()
    assert params.meta_train.task_family.datasets == list(CELO_DATASETS)
    assert params.meta_train.task_family.batch_size == 64
    prepare_data.run(params, tmp_path, StageContext(log=lambda _: None))

    family, data = inputs.build_family(params, tmp_path)
    assert isinstance(family, ReparamFamily) and family.level == "global"
    assert data.x.shape[0] == 4 and data.x.shape[2:] == (8, 8, 1)  # stacked in the preset's order
    tasks = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(0), 256))
    assert tasks.task.batch_size == 64 and tasks.task.hidden == (32,)
    assert set(np.asarray(tasks.task.dataset_index).tolist()) == {0, 1, 2, 3}
    scales = np.exp(np.asarray(jax.tree_util.tree_leaves(tasks.log_scale)[0]))  # global: one scale per task
    assert scales.min() >= 1e-3 * (1 - 1e-5) and scales.max() <= 1e3 * (1 + 1e-5) and scales.max() / scales.min() > 1e4

    lines = []
    result = meta_train.run(params, tmp_path, StageContext(log=lines.append))
    assert any("(Celo preset)" in line for line in lines), lines
    assert np.isfinite(result.metrics["meta_loss_last"])
    config = json.loads((tmp_path / paths.MODEL_DIR / "config.json").read_text())
    hashes = config["data_hashes"]
    assert set(hashes) == set(CELO_DATASETS)
    manifest = json.loads((tmp_path / "data" / "prepared" / "manifest.json").read_text())
    assert hashes["mnist_8"] == manifest["datasets"]["mnist"]["sha256"]


def test_preset_needs_its_datasets_prepared():
    with pytest.raises(ValueError, match=r"needs prepared dataset 'cifar10_jpeg_gray_8'.*add 'cifar10_jpeg_gray_8'"):
        PipelineParams(meta_train={"task_family": {"preset": "celo"}})
