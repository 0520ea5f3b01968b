"""The dataset registry: pinned checksums agree with the mirror, and the library stays pure."""

import ast
import dataclasses
import gzip
import hashlib
import sys
from pathlib import Path

import pytest

import components.data
from components.data import DATASETS, DatasetSpec, MirrorPart, SourceFile, get_dataset

# `mirror` (tests/conftest.py) is the dataset mirror, ../shared/datasets seen from the repo.

ALL_FILES = [(spec, f) for spec in DATASETS.values() for f in spec.files]
# Lossless CIFAR-10 is not in the shared mirror (only its lossy JPEG copy is): see test below.
MIRRORED = [(spec, f) for spec, f in ALL_FILES if spec.name != "cifar10"]
IDS = [f"{spec.name}/{f.name}" for spec, f in MIRRORED]
# Mirror files that are documentation or a convenience copy of a registered file.
NOT_SOURCES = {"sklearn_digits/digits_8x8.npz"}


def _sha256sums(mirror: Path) -> dict[str, str]:
    lines = (mirror / "SHA256SUMS").read_text().splitlines()
    return {path: sha for sha, path in (line.split(maxsplit=1) for line in lines if line.strip())}


def test_registry_names_kinds_and_split_flags():
    assert set(DATASETS) == {
        "mnist",
        "fashion_mnist",
        "digits",
        "cifar10",
        "cifar10_jpeg",
        "mnist1d",
        "tiny_shakespeare",
    }
    for name, spec in DATASETS.items():
        assert spec.name == name
    assert {n for n, s in DATASETS.items() if s.kind == "image"} == {
        "mnist",
        "fashion_mnist",
        "digits",
        "cifar10",
        "cifar10_jpeg",
    }
    assert DATASETS["mnist1d"].kind == "sequence" and DATASETS["tiny_shakespeare"].kind == "text"
    assert DATASETS["tiny_shakespeare"].num_classes == 65  # its vocabulary
    assert all(s.num_classes == 10 for n, s in DATASETS.items() if n != "tiny_shakespeare")
    assert DATASETS["mnist"].has_test_split and DATASETS["fashion_mnist"].has_test_split
    assert not DATASETS["digits"].has_test_split and DATASETS["digits"].test_images is None
    assert (DATASETS["mnist"].pixel_max, DATASETS["digits"].pixel_max) == (255, 16)
    assert (DATASETS["mnist"].image_size, DATASETS["digits"].image_size, DATASETS["cifar10"].image_size) == (28, 8, 32)
    assert DATASETS["cifar10_jpeg"].channels == 3 and DATASETS["cifar10_jpeg"].grouped_by_class
    # Only the JPEG copy is not the canonical data, and it says so.
    assert [n for n, s in DATASETS.items() if not s.exact_copy] == ["cifar10_jpeg"]
    assert "LOSSY" in DATASETS["cifar10_jpeg"].notes and "class-major" in DATASETS["cifar10_jpeg"].notes
    # Sizes: area downsampling up to native, and 32 only by zero-padding MNIST-like digits.
    assert DATASETS["mnist"].image_sizes == (*range(1, 29), 32)
    assert DATASETS["digits"].image_sizes == tuple(range(1, 9))
    assert DATASETS["cifar10_jpeg"].image_sizes == tuple(range(1, 33))
    assert DATASETS["mnist1d"].image_sizes == ()
    with pytest.raises(KeyError, match="has no file 'nope'"):
        DATASETS["mnist"].file("nope")
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'; expected one of"):
        get_dataset("svhn")


def test_canonical_urls_point_upstream():
    prefixes = {
        "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "digits": "https://raw.githubusercontent.com/scikit-learn/scikit-learn/",
        "cifar10": "https://www.cs.toronto.edu/~kriz/",
        "mnist1d": "https://raw.githubusercontent.com/greydanus/mnist1d/7878d96082abd200c546a07a4101fa90b30fdf7e/",
        "tiny_shakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/",
    }
    for spec, f in ALL_FILES:
        if spec.name == "cifar10_jpeg":  # mirror-only: no canonical download exists for the re-packed tarballs
            assert f.mirror_only and f.urls == () and f.url_sha256 is None
            continue
        assert not f.mirror_only
        url = f.urls[0]
        assert url.endswith("/" + f.name) and url.startswith(prefixes[spec.name])
    # The pinned upstream hashes that are public knowledge (see the dataset READMEs).
    assert DATASETS["cifar10"].files[0].url_sha256 == "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
    assert DATASETS["mnist1d"].files[0].url_sha256 == "e95257676e9fb04568e46dda007da22cc8664ccba1451456afde55d7f6dd6aa5"


@pytest.mark.parametrize(("spec", "f"), MIRRORED, ids=IDS)
def test_pinned_checksums_match_the_mirror(spec: DatasetSpec, f: SourceFile, mirror: Path):
    sums = _sha256sums(mirror)
    chunks = []
    for part in f.mirror_parts:
        assert sums[part.path] == part.sha256, f"pin for {part.path} differs from SHA256SUMS"
        data = (mirror / part.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == part.sha256
        chunks.append(data)
    whole = b"".join(chunks)
    assert hashlib.sha256(whole).hexdigest() == f.sha256
    if f.content_sha256 is not None:
        # The payload hash is the one the dataset READMEs list for the reassembled files.
        payload = gzip.decompress(whole) if whole[:2] == b"\x1f\x8b" else whole
        assert hashlib.sha256(payload).hexdigest() == f.content_sha256
    if f.url_sha256 is not None and f.content_sha256 is not None and whole[:2] != b"\x1f\x8b":
        assert f.url_sha256 == f.sha256  # an uncompressed verbatim copy (tiny-shakespeare)


def test_lossless_cifar10_is_not_in_the_shared_mirror(mirror: Path):
    spec = DATASETS["cifar10"]
    assert not (mirror / "cifar10").exists()
    assert spec.files[0].sha256 == spec.files[0].url_sha256  # a mirror would hold the upstream file verbatim
    assert "cifar10_jpeg" in spec.missing_hint and "L2O_DATA_MIRROR=none" in spec.missing_hint


def test_every_mirror_data_file_is_registered(mirror):
    registered = {m.path for _, f in ALL_FILES for m in f.mirror_parts}
    docs = (".md", ".rst", "LICENSE", "LICENSE.scikit-learn", "LICENSE.debian-copyright", "SHA256SUMS")
    for path in _sha256sums(mirror):
        if path.endswith(docs) or path in NOT_SOURCES:
            continue
        assert path in registered, f"{path} is in the mirror but not in the registry"


def test_spec_validation():
    sha = "0" * 64
    with pytest.raises(ValueError, match="64-character lowercase hex sha256"):
        MirrorPart("a/b", "xyz")
    with pytest.raises(ValueError, match="relative inside the mirror"):
        MirrorPart("../etc/passwd", sha)
    good = SourceFile("f.gz", ("https://x/f.gz",), sha, (MirrorPart("d/f.gz", sha),), sha, sha)
    with pytest.raises(ValueError, match=r"at least one download URL and its url_sha256, or neither"):
        dataclasses.replace(good, urls=())
    with pytest.raises(ValueError, match=r"at least one download URL and its url_sha256, or neither"):
        dataclasses.replace(good, url_sha256=None)
    assert dataclasses.replace(good, urls=(), url_sha256=None).mirror_only
    with pytest.raises(ValueError, match="at least one mirror part"):
        dataclasses.replace(good, mirror_parts=())
    with pytest.raises(ValueError, match=r"has_test_split=True but test_images=None"):
        dataclasses.replace(DATASETS["digits"], has_test_split=True)
    with pytest.raises(ValueError, match="is not one of its files"):
        dataclasses.replace(DATASETS["mnist"], test_labels="missing.gz")
    with pytest.raises(ValueError, match="image_size must be set exactly for image datasets"):
        dataclasses.replace(DATASETS["mnist1d"], image_size=40)
    with pytest.raises(ValueError, match=r"padded_size=28 must exceed image_size=28"):
        dataclasses.replace(DATASETS["mnist"], padded_size=28)
    with pytest.raises(ValueError, match="format 'png' is not one of"):
        dataclasses.replace(DATASETS["mnist"], format="png")


def test_library_imports_only_numpy_jax_and_stdlib():
    # DESIGN.md: library packages import jax / optax / numpy. Pillow is the one exception, imported
    # lazily by the CIFAR-10 JPEG decoder only.
    allowed = set(sys.stdlib_module_names) | {"numpy", "jax", "components"}
    package = Path(components.data.__file__).parent
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top == "PIL":
                    assert path.name == "cifar.py", f"{path.name} imports {module}"
                    assert node not in tree.body, "Pillow must be imported lazily (inside the decoder)"
                    continue
                assert top in allowed, f"{path.name} imports {module}"
                if top == "components":
                    assert module.startswith("components.data"), f"{path.name} imports {module}"
