"""Fetching from the mirror and from URLs (file:// URLs stand in for the network)."""

import dataclasses
import re
import shutil

import pytest

from components.data import DATASETS
from components.stages.fetch import (
    MIRROR_ENV,
    DataIntegrityError,
    fetch_file,
    fetch_file_with_origin,
    resolve_mirror,
)

# The mirror the project documents: ../shared/datasets seen from the project root.

DIGITS_FILE = DATASETS["digits"].files[0]
MNIST_IMAGES = DATASETS["mnist"].file("train-images-idx3-ubyte.gz")


def _quiet(msg: str) -> None:
    pass


def test_fetch_from_mirror_reassembles_parts(tmp_path, mirror):
    got = fetch_file_with_origin(MNIST_IMAGES, mirror=mirror, cache_dir=tmp_path, log=_quiet)
    assert got.origin == "mirror" and got.sha256 == MNIST_IMAGES.sha256
    parts = [(mirror / p.path).read_bytes() for p in MNIST_IMAGES.mirror_parts]
    assert got.data == b"".join(parts)
    assert not any(tmp_path.iterdir())  # the download cache is not touched


def test_fetch_from_mirror_rejects_a_corrupt_part(tmp_path, mirror):
    bad = tmp_path / "mirror"
    shutil.copytree(mirror / "mnist", bad / "mnist")
    part = bad / "mnist" / "train-images-idx3-ubyte.gz.part01"
    part.chmod(0o644)
    data = bytearray(part.read_bytes())
    data[1000] ^= 0xFF
    part.write_bytes(bytes(data))
    expected = MNIST_IMAGES.mirror_parts[1].sha256
    with pytest.raises(DataIntegrityError, match=re.escape(f"sha256 mismatch for {part}")) as e:
        fetch_file(MNIST_IMAGES, mirror=bad, cache_dir=tmp_path / "cache", log=_quiet)
    assert f"expected {expected}" in str(e.value) and MIRROR_ENV in str(e.value)
    assert isinstance(e.value, ValueError)


def test_fetch_from_mirror_rejects_a_wrong_whole_file(tmp_path, mirror):
    wrong = dataclasses.replace(DIGITS_FILE, sha256="f" * 64)
    with pytest.raises(DataIntegrityError, match=r"digits\.csv\.gz assembled from .*expected f{64}"):
        fetch_file(wrong, mirror=mirror, cache_dir=tmp_path, log=_quiet)


def test_fetch_from_mirror_missing_file(tmp_path):
    (tmp_path / "mnist").mkdir()
    with pytest.raises(FileNotFoundError, match=r"mirror file .*digits\.csv\.gz is missing"):
        fetch_file(DIGITS_FILE, mirror=tmp_path, cache_dir=tmp_path / "cache", log=_quiet)


def test_download_verifies_caches_and_reuses(tmp_path, mirror):
    upstream = tmp_path / "upstream" / "digits.csv.gz"
    upstream.parent.mkdir()
    shutil.copyfile(mirror / "sklearn_digits" / "digits.csv.gz", upstream)
    spec = dataclasses.replace(DIGITS_FILE, urls=(upstream.as_uri(),))
    cache = tmp_path / "cache"
    lines: list[str] = []
    got = fetch_file_with_origin(spec, mirror=None, cache_dir=cache, log=lines.append)
    assert got.origin == upstream.as_uri() and got.sha256 == spec.url_sha256
    assert got.data == upstream.read_bytes()
    cached = list(cache.iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("digits.csv.gz")  # no temp files left
    assert any("downloading" in line for line in lines)
    # Reused from the cache: the upstream copy is no longer needed.
    upstream.unlink()
    assert fetch_file(spec, mirror=None, cache_dir=cache, log=_quiet) == got.data
    # A corrupt cache entry is replaced by a fresh download; with no upstream that fails clearly.
    cached[0].write_bytes(b"junk")
    with pytest.raises(ConnectionError, match=f"could not download digits.csv.gz.*{MIRROR_ENV}"):
        fetch_file(spec, mirror=None, cache_dir=cache, log=_quiet)


def test_download_with_wrong_checksum_raises_and_keeps_nothing(tmp_path):
    bad = tmp_path / "digits.csv.gz"
    bad.write_bytes(b"not the digits file")
    spec = dataclasses.replace(DIGITS_FILE, urls=(bad.as_uri(),))
    cache = tmp_path / "cache"
    with pytest.raises(
        DataIntegrityError,
        match=re.escape(f"sha256 mismatch for digits.csv.gz downloaded from {bad.as_uri()}"),
    ) as e:
        fetch_file(spec, mirror=None, cache_dir=cache, log=_quiet)
    assert f"expected {spec.url_sha256}" in str(e.value) and "re-download" in str(e.value)
    assert list(cache.iterdir()) == []


def test_resolve_mirror(tmp_path, monkeypatch, mirror):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    root = tmp_path / "project"
    root.mkdir()
    assert resolve_mirror(root) is None
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    assert resolve_mirror(root) == (tmp_path / "shared" / "datasets").resolve()
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    assert resolve_mirror(root) == mirror.resolve()
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"{MIRROR_ENV}=.*nowhere.* is not an existing"):
        resolve_mirror(root)


def test_mirror_none_means_download(tmp_path, monkeypatch):
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    root = tmp_path / "project"
    root.mkdir()
    for value in ("none", "NONE", " none "):
        monkeypatch.setenv(MIRROR_ENV, value)
        assert resolve_mirror(root) is None


def test_mirror_only_file_cannot_be_downloaded(tmp_path):
    spec = DATASETS["cifar10_jpeg"].file("test_cat.tar.gz")
    assert spec.mirror_only
    with pytest.raises(FileNotFoundError, match=r"test_cat\.tar\.gz is mirror-only .*cifar10_jpeg/test_cat\.tar\.gz"):
        fetch_file(spec, mirror=None, cache_dir=tmp_path / "cache", log=_quiet)
    assert not (tmp_path / "cache").exists()


def test_missing_mirror_file_says_how_to_download_or_that_it_cannot(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{MIRROR_ENV}=none to download it from https://"):
        fetch_file(DIGITS_FILE, mirror=tmp_path, cache_dir=tmp_path / "cache", log=_quiet)
    jpeg = DATASETS["cifar10_jpeg"].file("test_cat.tar.gz")
    with pytest.raises(FileNotFoundError, match=r"this file is mirror-only: it has no canonical download"):
        fetch_file(jpeg, mirror=tmp_path, cache_dir=tmp_path / "cache", log=_quiet)
