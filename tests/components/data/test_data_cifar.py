"""CIFAR-10 decoders on small synthetic archives (the real JPEG copy: test_data_prepare.py)."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from components.data import (
    CIFAR10_CLASSES,
    build_variant,
    decode_cifar10_binary,
    decode_cifar10_jpeg,
    decode_dataset,
    parse_variant,
    to_grayscale,
)


def _tar(members: dict[str, bytes], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _records(images: np.ndarray, labels: np.ndarray) -> bytes:
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R plane, G plane, B plane
    return np.concatenate([labels[:, None].astype(np.uint8), planar], axis=1).tobytes()


def _binary_archive(rng, per_batch: int = 3, gz: bool = True):
    batches, xs, ys = {}, [], []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).astype(np.uint8)
        batches[f"cifar-10-batches-bin/{name}"] = _records(x, y)
        xs.append(x)
        ys.append(y)
    batches["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(CIFAR10_CLASSES).encode()
    return _tar(batches, gz), np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def test_decode_cifar10_binary_round_trips_the_record_layout():
    rng = np.random.default_rng(0)
    raw, x_train, y_train, x_test, y_test = _binary_archive(rng)
    got = decode_cifar10_binary(raw)
    for a, b in zip(got, (x_train, y_train, x_test, y_test), strict=True):
        np.testing.assert_array_equal(a, b)
    assert got[0].shape == (15, 32, 32, 3) and got[0].dtype == np.uint8 and got[1].dtype == np.uint8
    # A plain (uncompressed) tar works too.
    np.testing.assert_array_equal(
        decode_cifar10_binary(_binary_archive(np.random.default_rng(0), gz=False)[0])[0], x_train
    )


def test_decode_cifar10_binary_rejects_bad_archives():
    with pytest.raises(ValueError, match="not a readable tar archive"):
        decode_cifar10_binary(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match=r"lacks \['cifar-10-batches-bin/data_batch_1.bin'"):
        decode_cifar10_binary(_tar({"cifar-10-batches-py/data_batch_1": b"\x80"}))
    members = {f"cifar-10-batches-bin/data_batch_{i}.bin": bytes(3073) for i in range(1, 6)}
    with pytest.raises(ValueError, match=r"test_batch.bin: 3000 bytes is not a positive multiple of the 3073-byte"):
        decode_cifar10_binary(_tar({**members, "cifar-10-batches-bin/test_batch.bin": bytes(3000)}))
    bad_label = bytes([10]) + bytes(3072)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9, got up to 10"):
        decode_cifar10_binary(_tar({**members, "cifar-10-batches-bin/test_batch.bin": bad_label}))


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _jpeg_tarballs(rng, n_train: int = 3, n_test: int = 2) -> dict[str, bytes]:
    files = {}
    for c in CIFAR10_CLASSES[:3]:
        for split, n in (("train", n_train), ("test", n_test)):
            imgs = {
                f"{split}/{c}/{i:04d}.jpg": _jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in range(n)
            }
            files[f"{split}_{c}.tar.gz"] = _tar(imgs)
    return files


def test_decode_cifar10_jpeg_is_class_major_and_deterministic():
    files = _jpeg_tarballs(np.random.default_rng(1))
    x_train, y_train, x_test, y_test = decode_cifar10_jpeg(files)
    assert x_train.shape == (9, 32, 32, 3) and x_train.dtype == np.uint8
    assert y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and y_test.tolist() == [0, 0, 1, 1, 2, 2]
    # Decoding is what Pillow gives for each file, in (class, number) order, whatever the dict order.
    member = tarfile.open(fileobj=io.BytesIO(files["train_automobile.tar.gz"])).extractfile("train/automobile/0002.jpg")
    np.testing.assert_array_equal(x_train[5], np.asarray(Image.open(io.BytesIO(member.read())).convert("RGB")))
    again = decode_cifar10_jpeg(dict(reversed(list(files.items()))))
    np.testing.assert_array_equal(again[0], x_train)


def test_decode_cifar10_jpeg_reads_grayscale_jpegs_as_rgb():
    gray = np.full((32, 32), 77, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG")
    files = {"a.tar.gz": _tar({"train/cat/0000.jpg": buf.getvalue(), "test/cat/0000.jpg": buf.getvalue()})}
    x_train, y_train, _, _ = decode_cifar10_jpeg(files)
    assert x_train.shape == (1, 32, 32, 3) and y_train.tolist() == [3]
    assert np.abs(x_train.astype(int) - 77).max() <= 1


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({"train/cat/0000.png": b"x"}, r"unexpected member 'train/cat/0000.png'"),
        ({"train/kitten/0000.jpg": b"x"}, r"unexpected member 'train/kitten/0000.jpg'"),
        ({"train/cat/0001.jpg": "OK", "test/cat/0000.jpg": "OK"}, r"train/cat: file numbers are not 0\.\.0"),
        ({"train/cat/0000.jpg": b"not a jpeg", "test/cat/0000.jpg": "OK"}, r"train/cat/0000.jpg: not a decodable JPEG"),
        ({"train/cat/0000.jpg": "BIG", "test/cat/0000.jpg": "OK"}, r"expected a 32x32 image, got 33x32"),
        ({"train/cat/0000.jpg": "OK"}, r"no test/ images"),
    ],
)
def test_decode_cifar10_jpeg_rejects_bad_tarballs(members, match):
    ok = _jpeg(np.zeros((32, 32, 3), np.uint8))
    big = _jpeg(np.zeros((32, 33, 3), np.uint8))
    members = {k: {"OK": ok, "BIG": big}.get(v, v) if isinstance(v, str) else v for k, v in members.items()}
    with pytest.raises(ValueError, match=match):
        decode_cifar10_jpeg({"x.tar.gz": _tar(members)})


def test_decode_cifar10_jpeg_rejects_a_duplicate_across_tarballs():
    ok = _jpeg(np.zeros((32, 32, 3), np.uint8))
    files = {"a.tar.gz": _tar({"train/cat/0000.jpg": ok}), "b.tar.gz": _tar({"train/cat/0000.jpg": ok})}
    with pytest.raises(ValueError, match=r"train/cat/0000.jpg appears twice"):
        decode_cifar10_jpeg(files)


def test_to_grayscale_is_bt601_luma():
    x = np.zeros((3, 2, 2, 3), np.uint8)
    x[0, ..., 0], x[1, ..., 1], x[2] = 255, 255, 255
    g = to_grayscale(x)
    assert g.shape == (3, 2, 2) and g.dtype == np.float32
    np.testing.assert_allclose(g[:, 0, 0], [0.299 * 255, 0.587 * 255, 255.0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"expects RGB images \[N, H, W, 3\]"):
        to_grayscale(np.zeros((2, 4, 4)))


def test_lossless_cifar10_variants_from_a_synthetic_archive():
    raw, x_train, y_train, x_test, _ = _binary_archive(np.random.default_rng(2), per_batch=4)
    decoded = decode_dataset("cifar10", {"cifar-10-binary.tar.gz": raw})
    kw = dict(test_fraction=0.2, max_train_examples=None, text_split=(0.9, 0.05, 0.05), seed=0)
    rgb = build_variant(parse_variant("cifar10_32"), decoded, **kw)
    gray = build_variant(parse_variant("cifar10_gray_8"), decoded, **kw)
    assert rgb["x_train"].shape == (20, 32, 32, 3) and gray["x_train"].shape == (20, 8, 8, 1)
    assert rgb["x_train"].dtype == np.float32 and rgb["y_train"].dtype == np.int32
    # Canonical order kept (not class-grouped, so no shuffle); pixels scaled exactly to [0, 1].
    np.testing.assert_array_equal(rgb["y_train"], y_train)
    np.testing.assert_allclose(rgb["x_train"], x_train / np.float32(255), rtol=1e-6)
    # Luma then area average == area average of the luma (both linear).
    want = (x_test.astype(np.float64) @ [0.299, 0.587, 0.114]).reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4)) / 255
    np.testing.assert_allclose(gray["x_test"][..., 0], want, rtol=1e-5, atol=1e-6)
