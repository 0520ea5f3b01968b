"""params.data: prepared names, their sizes, and the defaults that reproduce the earlier behaviour."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from components.stages.params import DataParams, PipelineParams
from components.stages.prepare_data import variants

REPO = Path(__file__).resolve().parents[3]


def test_defaults_are_the_previous_behaviour():
    d = DataParams()
    assert d.datasets == ["mnist", "fashion_mnist", "digits"] and d.image_size == 8
    assert d.test_fraction == 0.2 and d.max_train_examples is None
    assert d.text_split == (0.9, 0.05, 0.05)
    assert [(v.name, v.dataset, v.image_size, v.grayscale) for v in variants(d)] == [
        ("mnist", "mnist", 8, False),
        ("fashion_mnist", "fashion_mnist", 8, False),
        ("digits", "digits", 8, False),
    ]


def test_prepared_names_of_every_kind():
    d = DataParams(
        datasets=[
            "mnist",
            "mnist_28",
            "mnist_32",
            "fashion_mnist_16",
            "cifar10_jpeg_gray",
            "cifar10_jpeg_gray_8",
            "cifar10_jpeg_32",
            "cifar10_gray_16",
            "mnist1d",
            "tiny_shakespeare",
        ],
        image_size=16,
    )
    got = {v.name: (v.dataset, v.image_size, v.grayscale) for v in variants(d)}
    assert got["mnist"] == ("mnist", 16, False) and got["mnist_32"] == ("mnist", 32, False)
    assert got["cifar10_jpeg_gray"] == ("cifar10_jpeg", 16, True)
    assert got["cifar10_jpeg_gray_8"] == ("cifar10_jpeg", 8, True)
    assert got["cifar10_gray_16"] == ("cifar10", 16, True)
    assert got["mnist1d"] == ("mnist1d", None, False) and got["tiny_shakespeare"] == ("tiny_shakespeare", None, False)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"datasets": ["svhn"]}, r"bad prepared dataset name 'svhn': no dataset 'svhn'\. Expected <dataset>\[_gray\]"),
        ({"datasets": ["mnist_gray_8"]}, r"'mnist' is already single-channel; _gray applies to RGB datasets only"),
        ({"datasets": ["mnist_30"]}, r"image_size=30 is not available for 'mnist'.*1\.\.28, or 32 \(zero-padded\)"),
        ({"datasets": ["cifar10_jpeg_64"]}, r"image_size=64 is not available for 'cifar10_jpeg'"),
        ({"datasets": ["tiny_shakespeare_8"]}, r"'tiny_shakespeare' is a text dataset; only image datasets take"),
        ({"datasets": ["digits"], "image_size": 16}, r"data\.datasets: image_size=16 is not available for 'digits'"),
        ({"datasets": ["mnist", "mnist"]}, r"datasets must be unique"),
        ({"text_split": [0.8, 0.1, 0.2]}, r"text_split fractions must sum to 1, got \[0\.8, 0\.1, 0\.2\]"),
        ({"text_split": [1.0, 0.0, 0.0]}, r"text_split\.1\s+Input should be greater than 0"),
        ({"image_size": 32}, r"image_size\s+Input should be less than or equal to 28"),
    ],
)
def test_bad_data_params_fail_loudly(data, match):
    with pytest.raises(ValidationError, match=match):
        DataParams(**data)


def test_every_params_file_still_prepares_the_same_names():
    from flows.params_io import load_params  # noqa: PLC0415

    for path in sorted((REPO / "params").glob("*.yaml")):
        params = load_params(path)
        assert isinstance(params, PipelineParams)
        assert [v.name for v in variants(params.data)] == list(params.data.datasets)
