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

# The mirror the project documents: ../shared/datasets seen from the project root.

ALL_FILES = [(spec, f) for spec in DATASETS.values() for f in spec.files]
IDS = [f"{spec.name}/{f.name}" for spec, f in ALL_FILES]


def _sha256sums(mirror: Path) -> dict[str, str]:
    lines = (mirror / "SHA256SUMS").read_text().splitlines()
    return {path: sha for sha, path in (line.split(maxsplit=1) for line in lines if line.strip())}


def test_registry_names_roles_and_split_flags():
    assert set(DATASETS) == {"mnist", "fashion_mnist", "digits"}
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert spec.num_classes == 10
        assert spec.file(spec.train_images).name == spec.train_images
    assert DATASETS["mnist"].has_test_split and DATASETS["fashion_mnist"].has_test_split
    assert not DATASETS["digits"].has_test_split and DATASETS["digits"].test_images is None
    assert (DATASETS["mnist"].pixel_max, DATASETS["digits"].pixel_max) == (255, 16)
    assert (DATASETS["mnist"].image_size, DATASETS["digits"].image_size) == (28, 8)
    with pytest.raises(KeyError, match="has no file 'nope'"):
        DATASETS["mnist"].file("nope")
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'; expected one of"):
        get_dataset("svhn")


def test_canonical_urls_point_upstream():
    for spec, f in ALL_FILES:
        url = f.urls[0]
        assert url.endswith("/" + f.name)
        prefix = {
            "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "digits": "https://raw.githubusercontent.com/scikit-learn/scikit-learn/",
        }[spec.name]
        assert url.startswith(prefix)


@pytest.mark.parametrize(("spec", "f"), ALL_FILES, ids=IDS)
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
    # The payload hash is the one the dataset READMEs list for the reassembled files.
    assert hashlib.sha256(gzip.decompress(whole)).hexdigest() == f.content_sha256


def test_every_mirror_file_of_these_datasets_is_registered(mirror):
    folders = {p.split("/")[0] for _, f in ALL_FILES for p in (m.path for m in f.mirror_parts)}
    registered = {m.path for _, f in ALL_FILES for m in f.mirror_parts}
    for path in _sha256sums(mirror):
        if path.split("/")[0] in folders and ".gz" in path:
            assert path in registered, f"{path} is in the mirror but not in the registry"


def test_spec_validation():
    sha = "0" * 64
    with pytest.raises(ValueError, match="64-character lowercase hex sha256"):
        MirrorPart("a/b", "xyz")
    with pytest.raises(ValueError, match="relative inside the mirror"):
        MirrorPart("../etc/passwd", sha)
    good = SourceFile("f.gz", ("https://x/f.gz",), sha, (MirrorPart("d/f.gz", sha),), sha, sha)
    with pytest.raises(ValueError, match="at least one download URL"):
        dataclasses.replace(good, urls=())
    with pytest.raises(ValueError, match=r"has_test_split=True but test_images=None"):
        dataclasses.replace(DATASETS["digits"], has_test_split=True)
    with pytest.raises(ValueError, match="is not one of its files"):
        dataclasses.replace(DATASETS["mnist"], test_labels="missing.gz")


def test_library_imports_only_numpy_and_stdlib():
    allowed = set(sys.stdlib_module_names) | {"numpy", "components"}
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
                assert top in allowed, f"{path.name} imports {module}"
                if top == "components":
                    assert module.startswith("components.data"), f"{path.name} imports {module}"
