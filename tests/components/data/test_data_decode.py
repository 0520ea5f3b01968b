"""IDX / digits decoding, downsampling, padding, splitting and building image arrays, on the mirrored data."""

import gzip
import hashlib
import os
import platform
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.data import (
    DATASETS,
    area_weights,
    build_arrays,
    decode_digits_csv,
    decode_idx,
    pad_images,
    resize_images,
    split_train_test,
    subsample,
)

# `mirror` (tests/conftest.py) is the dataset mirror, ../shared/datasets seen from the repo.


def _read(mirror: Path, rel: str) -> bytes:
    return (mirror / rel).read_bytes()


def _idx(values: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape)
    return header + values.astype(values.dtype.newbyteorder(">")).tobytes()


# ------------------------------------------------------------------------------------ IDX
def test_decode_idx_real_mnist_test_set(mirror):
    labels = decode_idx(_read(mirror, "mnist/t10k-labels-idx1-ubyte.gz"))
    images = decode_idx(_read(mirror, "mnist/t10k-images-idx3-ubyte.gz"))
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert images.min() == 0 and images.max() == 255
    # Official per-class test counts (mnist/README.md).
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert images.flags.writeable


def test_decode_idx_real_mnist_train_labels_class_counts(mirror):
    labels = decode_idx(_read(mirror, "mnist/train-labels-idx1-ubyte.gz"))
    assert np.bincount(labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]


def test_decode_idx_plain_gzip_and_wider_types():
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(decode_idx(_idx(x)), x)
    np.testing.assert_array_equal(decode_idx(gzip.compress(_idx(x))), x)
    f = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    out = decode_idx(_idx(f, code=0x0D))
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, f)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x00\x00", "shorter than the 4-byte magic"),
        (b"\x12\x34\x08\x01" + b"\x00" * 8, "not an IDX file: magic 12340801"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "header declares 3 dimensions"),
        (
            b"\x00\x00\x08\x01\x00\x00\x00\x05" + b"\x01\x02",
            r"size mismatch: header says shape \[5\]",
        ),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01" + b"\x01\x02", "truncated or corrupt"),
        (b"\x1f\x8b\x08\x00garbage", "does not decompress"),
    ],
)
def test_decode_idx_rejects_bad_input(raw, match):
    with pytest.raises(ValueError, match=match):
        decode_idx(raw)


# ------------------------------------------------------------------------------ digits CSV
def test_decode_digits_csv_real_file_matches_mirror_npz(mirror):
    images, labels = decode_digits_csv(_read(mirror, "sklearn_digits/digits.csv.gz"))
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.reshape(len(images), -1).shape == (1797, 64)  # sklearn's 64 features
    assert labels.shape == (1797,)
    assert images.min() == 0 and images.max() == 16
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    with np.load(mirror / "sklearn_digits" / "digits_8x8.npz") as ref:
        np.testing.assert_array_equal(images, ref["images"])
        np.testing.assert_array_equal(labels, ref["labels"])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1,2,3\n", r"65 columns\), got an array of shape \(1, 3\)"),
        (",".join(["17"] * 64 + ["1"]) + "\n", r"pixel values must lie in 0\.\.16"),
        (",".join(["0"] * 64 + ["10"]) + "\n", r"labels must lie in 0\.\.9"),
        ("a,b\n", "does not parse"),
    ],
)
def test_decode_digits_csv_rejects_bad_input(text, match):
    with pytest.raises(ValueError, match=match):
        decode_digits_csv(gzip.compress(text.encode()))


# ---------------------------------------------------------------------------------- resize
def test_area_weights_rows_and_columns():
    for n_in, n_out in [(28, 8), (28, 14), (28, 5), (7, 3), (8, 8), (5, 1)]:
        r = area_weights(n_in, n_out)
        assert r.shape == (n_out, n_in)
        np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        np.testing.assert_allclose(r.sum(axis=0), n_out / n_in, rtol=0, atol=1e-12)
        assert (r >= 0).all()
    np.testing.assert_allclose(area_weights(3, 2) * 3, [[2, 1, 0], [0, 1, 2]])


def test_resize_constant_image_stays_constant():
    for size in (1, 5, 7, 8, 14, 28):
        x = np.full((3, 28, 28), 0.37, dtype=np.float32)
        np.testing.assert_allclose(resize_images(x, size), 0.37, rtol=1e-6)
    x4 = np.full((2, 28, 28, 3), 5.0)
    out = resize_images(x4, 8)
    assert out.shape == (2, 8, 8, 3) and out.dtype == np.float64
    np.testing.assert_allclose(out, 5.0, rtol=1e-12)


def test_resize_4x4_to_2x2_by_hand():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    # Each output pixel is the mean of a 2x2 block: (0+1+4+5)/4 = 2.5, (2+3+6+7)/4 = 4.5, ...
    np.testing.assert_array_equal(resize_images(x, 2)[0], [[2.5, 4.5], [10.5, 12.5]])


def test_resize_3x3_to_2x2_non_integer_ratio_by_hand():
    # Output footprints are 1.5 px wide: the centre pixel is shared by all four, with weight
    # (1/3)(1/3) each, so a 9 in the centre becomes 1 everywhere.
    x = np.zeros((1, 3, 3))
    x[0, 1, 1] = 9.0
    np.testing.assert_allclose(resize_images(x, 2)[0], [[1.0, 1.0], [1.0, 1.0]], rtol=1e-12)
    y = np.zeros((1, 3, 3))
    y[0, 0, 0] = 9.0  # the corner lies only in the top-left footprint, with weight (2/3)^2
    np.testing.assert_allclose(resize_images(y, 2)[0], [[4.0, 0.0], [0.0, 0.0]], rtol=1e-12)


def test_resize_28_to_8_preserves_mean_on_real_images(mirror):
    images = decode_idx(_read(mirror, "mnist/t10k-images-idx3-ubyte.gz"))[:500]
    small = resize_images(images, 8)
    assert small.shape == (500, 8, 8) and small.dtype == np.float32
    np.testing.assert_allclose(small.mean(axis=(1, 2)), images.mean(axis=(1, 2), dtype=np.float64), rtol=1e-5)
    assert small.min() >= 0 and small.max() <= 255 * (1 + 1e-6)  # a convex combination


def test_resize_channels_are_independent():
    x = np.random.default_rng(0).random((4, 12, 9, 3))
    out = resize_images(x, 4)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], resize_images(x[..., c], 4), rtol=1e-12)


def test_resize_same_size_is_identity():
    x = np.random.default_rng(1).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    out = resize_images(x, 8)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x)


def test_resize_of_integer_images_is_the_correctly_rounded_exact_mean():
    # Reference with exact rationals: y[i, k] = sum_jl O_h[i, j] x[j, l] O_w[k, l] / (H W), where O = n_in * R
    # are integer overlaps; float32(float64(exact)) is what resize_images promises for integer input.
    from fractions import Fraction

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    o = [[Fraction(v).limit_denominator(1000) * 28 for v in row] for row in area_weights(28, 8)]
    out = resize_images(x, 8)
    for n in range(3):
        for i in range(8):
            for k in range(8):
                exact = sum(
                    o[i][j] * int(x[n, j, c]) * o[k][c] for j in range(28) for c in range(28) if o[i][j] and o[k][c]
                ) / (28 * 28)
                assert out[n, i, k] == np.float32(float(exact)), (n, i, k)


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"), reason="the OpenBLAS kernels it forces exist on x86-64 only"
)
def test_resize_gives_the_same_bytes_under_every_blas_kernel(tmp_path):
    # The prepared data's DVC hash must not depend on the CPU. A float32 BLAS matmul did: OpenBLAS picks
    # its sgemm kernel by CPU, and the Haswell and Sandybridge kernels sum in different orders. Force each
    # kernel in a fresh process (OPENBLAS_CORETYPE is read at load) and compare the bytes.
    rng = np.random.default_rng(4)
    np.save(tmp_path / "u8.npy", rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8))
    np.save(tmp_path / "f32.npy", (rng.random((64, 32, 32)) * 255).astype(np.float32))
    script = (
        "import hashlib, sys, numpy as np; from components.data import resize_images; "
        "print(' '.join(hashlib.sha256(resize_images(np.load(f), 8).tobytes()).hexdigest() for f in sys.argv[1:]))"
    )
    root = Path(__file__).resolve().parents[3]
    digests = {}
    for kernel in ("Haswell", "Sandybridge"):
        env = {**os.environ, "OPENBLAS_CORETYPE": kernel, "PYTHONPATH": str(root)}
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "u8.npy"), str(tmp_path / "f32.npy")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        digests[kernel] = done.stdout.split()
    here = [
        hashlib.sha256(resize_images(np.load(tmp_path / f), 8).tobytes()).hexdigest() for f in ("u8.npy", "f32.npy")
    ]
    assert digests["Haswell"] == digests["Sandybridge"] == here


@pytest.mark.parametrize(
    ("shape", "size", "match"),
    [
        ((2, 8, 8), 9, r"size must be in 1\.\.8"),
        ((2, 8, 8), 0, "size must be in"),
        ((8, 8), 4, r"expects images \[N, H, W\]"),
    ],
)
def test_resize_rejects_bad_arguments(shape, size, match):
    with pytest.raises(ValueError, match=match):
        resize_images(np.zeros(shape), size)


# --------------------------------------------------------------------- split / subsample
def test_split_train_test_is_seeded_disjoint_and_complete():
    x = np.arange(100)
    y = x % 10
    a = split_train_test(x, y, test_fraction=0.2, seed=3)
    b = split_train_test(x, y, test_fraction=0.2, seed=3)
    c = split_train_test(x, y, test_fraction=0.2, seed=4)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[2], c[2])
    x_tr, y_tr, x_te, _ = a
    assert len(x_te) == 20 and len(x_tr) == 80
    assert sorted(np.concatenate([x_tr, x_te]).tolist()) == list(range(100))
    np.testing.assert_array_equal(y_tr, x_tr % 10)


def test_split_train_test_rejects_empty_sides():
    with pytest.raises(ValueError, match="both must be non-empty"):
        split_train_test(np.arange(3), np.arange(3), test_fraction=0.1, seed=0)
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        split_train_test(np.arange(3), np.arange(3), test_fraction=1.0, seed=0)


def test_subsample():
    x = np.arange(50)
    xs, ys = subsample(x, x * 2, max_examples=10, seed=0)
    assert len(xs) == 10 and np.all(np.diff(xs) > 0)  # distinct, original order
    np.testing.assert_array_equal(ys, xs * 2)
    np.testing.assert_array_equal(subsample(x, x, max_examples=10, seed=0)[0], xs)
    assert subsample(x, x, max_examples=None, seed=0)[0] is x
    assert subsample(x, x, max_examples=500, seed=0)[0] is x
    with pytest.raises(ValueError, match="same length"):
        subsample(x, x[:3], max_examples=2, seed=0)


# -------------------------------------------------------------------------- build_arrays
def test_build_arrays_digits(mirror):
    files = {"digits.csv.gz": _read(mirror, "sklearn_digits/digits.csv.gz")}
    out = build_arrays("digits", files, image_size=8, test_fraction=0.2, max_train_examples=None, seed=0)
    assert sorted(out) == ["x_test", "x_train", "y_test", "y_train"]
    assert out["x_train"].shape == (1438, 8, 8, 1) and out["x_test"].shape == (359, 8, 8, 1)
    assert out["x_train"].dtype == np.float32 and out["y_train"].dtype == np.int32
    assert out["x_train"].min() == 0.0 and out["x_train"].max() == 1.0
    again = build_arrays("digits", files, image_size=4, test_fraction=0.2, max_train_examples=100, seed=0)
    assert again["x_train"].shape == (100, 4, 4, 1)
    # Same seed -> same split, whatever the image size and train cap.
    np.testing.assert_array_equal(again["y_test"], out["y_test"])


def test_build_arrays_rejects_image_size_above_native_for_digits(mirror):
    files = {"digits.csv.gz": _read(mirror, "sklearn_digits/digits.csv.gz")}
    with pytest.raises(ValueError, match=r"image_size=16 is not available for 'digits'.*8x8"):
        build_arrays("digits", files, image_size=16, test_fraction=0.2, max_train_examples=None, seed=0)


def test_build_arrays_rejects_unknown_dataset_and_missing_files():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'.*'digits', 'fashion_mnist'"):
        build_arrays("cifar", {}, image_size=8, test_fraction=0.2, max_train_examples=None, seed=0)
    with pytest.raises(ValueError, match="missing source files"):
        build_arrays("mnist", {}, image_size=8, test_fraction=0.2, max_train_examples=None, seed=0)
    with pytest.raises(ValueError, match=r"build_arrays builds image datasets; 'mnist1d' is a sequence dataset"):
        build_arrays("mnist1d", {}, image_size=8, test_fraction=0.2, max_train_examples=None, seed=0)
    with pytest.raises(ValueError, match=r"'digits' is already single-channel; _gray applies to RGB datasets only"):
        build_arrays("digits", {}, image_size=8, test_fraction=0.2, max_train_examples=None, seed=0, grayscale=True)
    assert "digits" in DATASETS


def test_build_arrays_mnist_sizes_share_examples_and_32_is_zero_padded(mirror):
    spec = DATASETS["mnist"]
    files = {f.name: b"".join((mirror / p.path).read_bytes() for p in f.mirror_parts) for f in spec.files}
    kw = dict(test_fraction=0.2, max_train_examples=300, seed=5)
    a28, a32, a8 = (build_arrays("mnist", files, image_size=s, **kw) for s in (28, 32, 8))
    assert a32["x_train"].shape == (300, 32, 32, 1) and a32["x_test"].shape == (10000, 32, 32, 1)
    np.testing.assert_array_equal(a32["x_train"][:, 2:30, 2:30], a28["x_train"])
    assert a32["x_train"][:, :2].max() == 0 and a32["x_train"][:, :, 30:].max() == 0
    for a in (a32, a8):
        np.testing.assert_array_equal(a["y_train"], a28["y_train"])
    np.testing.assert_allclose(a8["x_train"][..., 0], resize_images(a28["x_train"][..., 0], 8), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"image_size=30 is not available for 'mnist'.*1\.\.28, or 32 \(zero-padded\)"):
        build_arrays("mnist", files, image_size=30, **kw)


# ---------------------------------------------------------------------------------- padding
def test_pad_images_centres_and_keeps_dtype():
    x = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) + 1
    out = pad_images(x, 7)
    assert out.shape == (2, 7, 7) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 2:5, 2:5], x)
    assert out.sum() == x.sum()
    x4 = np.ones((1, 28, 28, 3), np.float32)
    assert pad_images(x4, 32).shape == (1, 32, 32, 3)
    assert pad_images(x4, 28) is x4


@pytest.mark.parametrize(
    ("shape", "size", "match"),
    [((1, 28, 28), 31, "even margins"), ((1, 28, 28), 26, "even margins"), ((28, 28), 32, r"\[N, H, W\]")],
)
def test_pad_images_rejects_bad_arguments(shape, size, match):
    with pytest.raises(ValueError, match=match):
        pad_images(np.zeros(shape), size)
