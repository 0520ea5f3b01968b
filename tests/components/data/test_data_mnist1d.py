"""MNIST-1D: the mirror's npz, the upstream pickle format (safely), and the prepared arrays."""

import dataclasses
import hashlib
import io
import os
import pickle

import numpy as np
import pytest

from components.data import DATASETS, build_variant, decode_dataset, decode_mnist1d, parse_variant
from components.stages.fetch import fetch_file_with_origin

NPZ = "mnist1d/mnist1d_data.npz"


@pytest.fixture(scope="module")
def npz_bytes(mirror) -> bytes:
    return (mirror / NPZ).read_bytes()


def _as_upstream_dict(raw: bytes) -> dict:
    # The structure mnist1d.make_dataset() pickles: templates nested in their own dict.
    with np.load(io.BytesIO(raw)) as z:
        d = {k: z[k] for k in ("x", "y", "t", "x_test", "y_test")}
        d["templates"] = {k: z[f"templates_{k}"] for k in ("x", "t", "y")}
    return d


def test_real_npz_shapes_dtypes_and_class_counts(npz_bytes):
    x, y, x_test, y_test = decode_mnist1d(npz_bytes)
    assert x.shape == (4000, 40) and x.dtype == np.float64 and y.shape == (4000,)
    assert x_test.shape == (1000, 40) and y_test.shape == (1000,)
    # Counts from mnist1d/README.md.
    assert np.bincount(y).tolist() == [398, 396, 411, 394, 394, 402, 401, 404, 402, 398]
    assert np.bincount(y_test).tolist() == [102, 104, 89, 106, 106, 98, 99, 96, 98, 102]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_upstream_pickle_decodes_to_the_same_arrays(npz_bytes, protocol):
    raw = pickle.dumps(_as_upstream_dict(npz_bytes), protocol=protocol)
    for got, want in zip(decode_mnist1d(raw), decode_mnist1d(npz_bytes), strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


def test_pickle_from_numpy_1_is_read(npz_bytes):
    # numpy < 2 pickles name numpy.core.multiarray; protocol 2 spells globals as text lines.
    raw = pickle.dumps(_as_upstream_dict(npz_bytes), protocol=2)
    old = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != raw
    np.testing.assert_array_equal(decode_mnist1d(old)[0], decode_mnist1d(raw)[0])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_with_anything_but_arrays_is_refused():
    with pytest.raises(ValueError, match=r"refers to (posix|nt|os)\.system, which is not a numpy array part"):
        decode_mnist1d(pickle.dumps({"x": _Evil()}, protocol=4))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "starts with nothing"),
        (b"hello", r"starts with 68656c6c: expected an npz"),
        (pickle.dumps([1, 2], protocol=4), "holds a list, expected a dict of arrays"),
        (pickle.dumps({"x": np.zeros((2, 3))}, protocol=4), r"lacks \['y', 'x_test', 'y_test'\]"),
        (
            pickle.dumps({"x": np.zeros((2, 3)), "y": np.zeros(3), "x_test": np.zeros((1, 3)), "y_test": np.zeros(1)}),
            r"train: expected x \[N, L\] and y \[N\]",
        ),
        (pickle.dumps({"x": np.zeros((2, 3))}, protocol=4)[:-5], "pickle does not load"),
        (b"PK\x03\x04broken", "npz does not load"),
    ],
)
def test_bad_input_is_rejected(raw, match):
    with pytest.raises(ValueError, match=match):
        decode_mnist1d(raw)


def test_download_path_reads_the_pickle(tmp_path, npz_bytes):
    # file:// stands in for GitHub; the pinned hash is the real upstream one, so pin this stand-in's.
    upstream = tmp_path / "mnist1d_data.pkl"
    upstream.write_bytes(pickle.dumps(_as_upstream_dict(npz_bytes), protocol=4))
    spec_file = dataclasses.replace(
        DATASETS["mnist1d"].files[0],
        urls=(upstream.as_uri(),),
        url_sha256=hashlib.sha256(upstream.read_bytes()).hexdigest(),
    )
    got = fetch_file_with_origin(spec_file, mirror=None, cache_dir=tmp_path / "cache", log=lambda _: None)
    assert got.origin == upstream.as_uri()
    from_download = decode_dataset("mnist1d", {"mnist1d_data.pkl": got.data})
    from_mirror = decode_dataset("mnist1d", {"mnist1d_data.pkl": npz_bytes})
    np.testing.assert_array_equal(from_download.x_train, from_mirror.x_train)


def test_prepared_mnist1d_arrays(npz_bytes):
    decoded = decode_dataset("mnist1d", {"mnist1d_data.pkl": npz_bytes})
    kw = dict(test_fraction=0.2, text_split=(0.9, 0.05, 0.05), seed=0)
    full = build_variant(parse_variant("mnist1d"), decoded, max_train_examples=None, **kw)
    assert {k: (v.shape, v.dtype.name) for k, v in full.items()} == {
        "x_train": ((4000, 40), "float32"),
        "y_train": ((4000,), "int32"),
        "x_test": ((1000, 40), "float32"),
        "y_test": ((1000,), "int32"),
    }
    np.testing.assert_allclose(full["x_train"], decoded.x_train, rtol=1e-6, atol=1e-6)
    capped = build_variant(parse_variant("mnist1d"), decoded, max_train_examples=100, **kw)
    assert capped["x_train"].shape == (100, 40) and capped["x_test"].shape == (1000, 40)
