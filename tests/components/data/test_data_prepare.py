"""The prepare_data stage end to end on the real mirror (no network)."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from components.data import DATASETS
from components.stages import prepare_data
from components.stages.common import StageContext, load_prepared
from components.stages.fetch import MIRROR_ENV, DataIntegrityError
from components.stages.params import DataParams, PipelineParams

# The mirror the project documents: ../shared/datasets seen from the project root.


def _params(seed: int = 0, **data) -> PipelineParams:
    # The stage reads only params.data and params.seed. model_construct skips PipelineParams'
    # cross-section checks (the default meta_train/evaluate sections need fashion_mnist);
    # DataParams itself is validated.
    return PipelineParams.model_construct(seed=seed, data=DataParams(**data))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(root: Path, params: PipelineParams) -> tuple[prepare_data.StageResult, list[str]]:
    lines: list[str] = []
    return prepare_data.run(params, root, StageContext(log=lines.append)), lines


def test_run_writes_npz_and_manifest(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    params = _params(datasets=["digits", "mnist"], max_train_examples=2000)
    result, lines = _run(tmp_path, params)

    out = tmp_path / "data" / "prepared"
    assert sorted(p.name for p in out.iterdir()) == ["digits.npz", "manifest.json", "mnist.npz"]
    with np.load(out / "mnist.npz") as z:
        assert sorted(z.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert z["x_train"].shape == (2000, 8, 8, 1) and z["x_test"].shape == (10000, 8, 8, 1)
        assert z["x_train"].dtype == np.float32 and z["y_train"].dtype == np.int32
        assert 0.0 <= z["x_train"].min() and z["x_train"].max() <= 1.0
        assert z["y_test"][:5].tolist() == [7, 2, 1, 0, 4]  # the test split is kept in order
        assert set(np.unique(z["y_train"]).tolist()) == set(range(10))
    with np.load(out / "digits.npz") as z:
        assert z["x_train"].shape == (1438, 8, 8, 1) and z["x_test"].shape == (359, 8, 8, 1)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "prepare_data" and manifest["version"] == prepare_data.VERSION
    assert sorted(manifest["datasets"]) == ["digits", "mnist"]
    mnist = manifest["datasets"]["mnist"]
    assert mnist["sha256"] == _sha256(out / "mnist.npz")
    assert mnist["file"] == "data/prepared/mnist.npz"
    assert mnist["shapes"]["x_train"] == [2000, 8, 8, 1]
    assert mnist["num_classes"] == 10 and mnist["stage_version"] == prepare_data.VERSION
    assert mnist["params"] == {
        "image_size": 8,
        "test_fraction": 0.2,
        "max_train_examples": 2000,
        "text_split": [0.9, 0.05, 0.05],
        "seed": 0,
    }
    assert (mnist["dataset"], mnist["kind"], mnist["image_size"], mnist["grayscale"]) == ("mnist", "image", 8, False)
    assert mnist["dtypes"] == {"x_train": "float32", "y_train": "int32", "x_test": "float32", "y_test": "int32"}
    assert mnist["exact_copy"] is True and "decoder" not in mnist
    assert [s["name"] for s in mnist["sources"]] == list(DATASETS["mnist"].file_names)
    assert all(s["origin"] == "mirror" for s in mnist["sources"])
    assert mnist["sources"][0]["sha256"] == DATASETS["mnist"].files[0].sha256
    assert manifest["datasets"]["digits"]["has_test_split"] is False

    assert result.stage == "prepare_data" and result.version == prepare_data.VERSION
    assert result.metrics["mnist/num_train"] == 2000 and result.metrics["mnist/num_test"] == 10000
    assert result.metrics["digits/num_train"] == 1438
    assert result.artifacts == [Path("data/prepared/manifest.json")]
    assert len(lines) == 2 and lines[1].startswith("prepare_data: mnist:") and " s " in lines[1]


def test_run_is_deterministic_and_removes_stale_outputs(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    out = tmp_path / "data" / "prepared"
    out.mkdir(parents=True)
    (out / "fashion_mnist.npz").write_bytes(b"stale")
    _run(tmp_path, _params(datasets=["digits"], image_size=4))
    first = (out / "digits.npz").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["digits.npz", "manifest.json"]
    _run(tmp_path, _params(datasets=["digits"], image_size=4))
    assert (out / "digits.npz").read_bytes() == first  # byte-identical: same sha256
    _run(tmp_path, _params(seed=1, datasets=["digits"], image_size=4))
    assert (out / "digits.npz").read_bytes() != first


def test_checksum_mismatch_raises_and_writes_nothing(tmp_path, monkeypatch, mirror):
    bad = tmp_path / "mirror"
    shutil.copytree(mirror / "sklearn_digits", bad / "sklearn_digits")
    shutil.copytree(mirror / "mnist", bad / "mnist")
    part = bad / "mnist" / "train-images-idx3-ubyte.gz.part02"
    part.chmod(0o644)
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    monkeypatch.setenv(MIRROR_ENV, str(bad))
    root = tmp_path / "project"
    root.mkdir()

    with pytest.raises(DataIntegrityError, match=re.escape(f"sha256 mismatch for {part}")):
        _run(root, _params(datasets=["digits", "mnist"], max_train_examples=2000))
    # digits verified fine, but nothing is written until every dataset has been verified.
    assert not (root / "data" / "prepared").exists()


def test_missing_mirror_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "no-such-mirror"))
    with pytest.raises(FileNotFoundError, match=f"{MIRROR_ENV}=.*no-such-mirror"):
        _run(tmp_path, _params(datasets=["digits"]))
    assert not (tmp_path / "data").exists()


def test_missing_mirror_file_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "mirror" / "mnist").mkdir(parents=True)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    with pytest.raises(FileNotFoundError, match=r"mirror file .*sklearn_digits.*is missing"):
        _run(tmp_path, _params(datasets=["digits"]))
    assert not (tmp_path / "data").exists()


def test_image_size_larger_than_digits_is_rejected(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    match = r"data\.datasets: image_size=16 is not available for 'digits'.*name the size: digits_<size>"
    with pytest.raises(ValueError, match=match):  # by the params model
        _params(datasets=["mnist", "digits"], image_size=16)
    unchecked = DataParams.model_construct(**{**DataParams().model_dump(), "image_size": 16})
    with pytest.raises(ValueError, match=match):  # and by the stage, before reading any data
        _run(tmp_path, PipelineParams.model_construct(seed=0, data=unchecked))
    assert not (tmp_path / "data").exists()


def test_run_fans_out_through_map_fn(tmp_path, monkeypatch, mirror):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    calls: list[list] = []

    def threaded_map(fn, items):
        items = list(items)
        calls.append(items)
        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(fn, items))

    result = prepare_data.run(
        _params(datasets=["digits", "mnist"], max_train_examples=100),
        tmp_path,
        StageContext(log=lambda msg: None, map_fn=threaded_map),
    )
    assert calls[0] == ["digits", "mnist"]  # fetch + verify, then build, both fanned out
    assert len(calls) == 2 and len(calls[1]) == 2
    assert result.metrics["mnist/num_train"] == 100


# ------------------------------------------------------------------ variants and new datasets
def _load(root: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(root / "data" / "prepared" / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def test_variants_of_one_dataset_share_examples_in_one_run(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    names = ["mnist", "mnist_28", "mnist_32", "digits_4"]
    result, lines = _run(tmp_path, _params(seed=3, datasets=names, max_train_examples=200))
    out = tmp_path / "data" / "prepared"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.npz" for n in names] + ["manifest.json"])
    m8, m28, m32 = (_load(tmp_path, n) for n in ("mnist", "mnist_28", "mnist_32"))
    assert m8["x_train"].shape == (200, 8, 8, 1) and m28["x_train"].shape == (200, 28, 28, 1)
    assert m32["x_test"].shape == (10000, 32, 32, 1)
    np.testing.assert_array_equal(m32["x_train"][:, 2:30, 2:30], m28["x_train"])  # zero-padded, not resampled
    for m in (m28, m32):
        np.testing.assert_array_equal(m["y_train"], m8["y_train"])  # the same examples, in the same order
    manifest = json.loads((out / "manifest.json").read_text())["datasets"]
    assert sorted(manifest) == sorted(names)
    assert {n: (e["dataset"], e["image_size"]) for n, e in manifest.items()} == {
        "mnist": ("mnist", 8),
        "mnist_28": ("mnist", 28),
        "mnist_32": ("mnist", 32),
        "digits_4": ("digits", 4),
    }
    assert manifest["mnist_32"]["sha256"] == _sha256(out / "mnist_32.npz")
    assert result.metrics["mnist_28/num_train"] == 200 and result.metrics["digits_4/num_test"] == 359
    assert [line.split(":")[1].strip() for line in lines] == names
    # Dropping a variant removes its file on the next run.
    _run(tmp_path, _params(seed=3, datasets=["mnist_28"], max_train_examples=200))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "mnist_28.npz"]
    np.testing.assert_array_equal(_load(tmp_path, "mnist_28")["x_train"], m28["x_train"])


def test_full_mnist_fashion_and_digits_counts(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    result, _ = _run(tmp_path, _params(datasets=["mnist_4", "fashion_mnist_4", "digits"]))
    mnist, fashion, digits = (_load(tmp_path, n) for n in ("mnist_4", "fashion_mnist_4", "digits"))
    for arrays in (mnist, fashion):
        assert arrays["x_train"].shape == (60000, 4, 4, 1) and arrays["x_test"].shape == (10000, 4, 4, 1)
        assert arrays["x_train"].dtype == np.float32 and arrays["y_test"].dtype == np.int32
    assert np.bincount(mnist["y_train"]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(mnist["y_test"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(fashion["y_train"]).tolist() == [6000] * 10
    assert np.bincount(fashion["y_test"]).tolist() == [1000] * 10
    assert len(digits["y_train"]) + len(digits["y_test"]) == 1797
    counts = np.bincount(np.concatenate([digits["y_train"], digits["y_test"]]))
    assert counts.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert result.metrics["fashion_mnist_4/num_train"] == 60000


def test_cifar10_jpeg_gray_and_rgb_variants(tmp_path, monkeypatch, mirror):
    # The one test that decodes all 60,000 JPEGs (~10 s).
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    result, lines = _run(tmp_path, _params(seed=0, datasets=["cifar10_jpeg_gray_8", "cifar10_jpeg_4"]))
    gray, rgb = _load(tmp_path, "cifar10_jpeg_gray_8"), _load(tmp_path, "cifar10_jpeg_4")
    assert gray["x_train"].shape == (50000, 8, 8, 1) and gray["x_test"].shape == (10000, 8, 8, 1)
    assert rgb["x_train"].shape == (50000, 4, 4, 3) and rgb["x_test"].shape == (10000, 4, 4, 3)
    assert gray["x_train"].dtype == np.float32 and gray["y_train"].dtype == np.int32
    assert np.bincount(gray["y_train"]).tolist() == [5000] * 10
    assert np.bincount(gray["y_test"]).tolist() == [1000] * 10
    # The class-major source order is shuffled (the same way for every variant of one seed).
    np.testing.assert_array_equal(gray["y_train"], rgb["y_train"])
    assert len(set(gray["y_test"][:100].tolist())) == 10 and (np.diff(gray["y_train"]) != 0).mean() > 0.8
    # Area averaging keeps means: the per-channel means of the JPEG copy (cifar10_jpeg/README.md).
    np.testing.assert_allclose(
        rgb["x_train"].reshape(-1, 3).mean(axis=0, dtype=np.float64), [0.4913, 0.4821, 0.4465], atol=1.5e-4
    )
    np.testing.assert_allclose(
        rgb["x_test"].reshape(-1, 3).mean(axis=0, dtype=np.float64), [0.4941, 0.4851, 0.4504], atol=1.5e-4
    )
    # Gray is the BT.601 luma (luma and area averaging commute): 8x8 gray averaged to 4x4 == luma of 4x4 RGB.
    gray_4 = gray["x_test"][..., 0].reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(gray_4, rgb["x_test"] @ np.float32([0.299, 0.587, 0.114]), atol=1e-5)
    entry = json.loads((tmp_path / "data" / "prepared" / "manifest.json").read_text())["datasets"]["cifar10_jpeg_4"]
    assert entry["exact_copy"] is False and entry["notes"].startswith("LOSSY")
    assert entry["decoder"].startswith("Pillow ") and len(entry["sources"]) == 30
    assert all(s["origin"] == "mirror" and s["content_sha256"] is None for s in entry["sources"])
    assert result.metrics["cifar10_jpeg_gray_8/num_train"] == 50000
    assert "at 8x8 gray" in lines[0]


def test_class_grouped_sources_are_shuffled_with_the_seed():
    from components.data import Decoded, build_variant, parse_variant  # noqa: PLC0415

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y = np.repeat(np.arange(10, dtype=np.uint8), 4)  # class-major, like the JPEG copy
    decoded = Decoded(DATASETS["cifar10_jpeg"], x, y, x[:20], y[:20])

    def build(seed):
        return build_variant(
            parse_variant("cifar10_jpeg_2"),
            decoded,
            test_fraction=0.2,
            max_train_examples=30,
            text_split=(0.9, 0.05, 0.05),
            seed=seed,
        )

    a, b, c = build(0), build(0), build(1)
    np.testing.assert_array_equal(a["y_train"], b["y_train"])
    np.testing.assert_array_equal(a["x_test"], b["x_test"])
    assert not np.array_equal(a["y_train"], c["y_train"])
    assert len(a["y_train"]) == 30 and sorted(a["y_test"].tolist()) == sorted(y[:20].tolist())
    assert not np.array_equal(a["y_test"], y[:20])


def test_mnist1d_and_tiny_shakespeare_through_the_stage(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    result, lines = _run(tmp_path, _params(datasets=["mnist1d", "tiny_shakespeare"], max_train_examples=1000))
    m1d, text = _load(tmp_path, "mnist1d"), _load(tmp_path, "tiny_shakespeare")
    assert m1d["x_train"].shape == (1000, 40) and m1d["x_test"].shape == (1000, 40)
    assert m1d["x_train"].dtype == np.float32 and m1d["y_test"].dtype == np.int32
    assert np.bincount(m1d["y_test"]).tolist() == [102, 104, 89, 106, 106, 98, 99, 96, 98, 102]
    n = [len(text[k]) for k in ("train_tokens", "val_tokens", "test_tokens")]
    assert sum(n) == 1_115_394 and n == [1_003_854, 55_770, 55_770]  # never cut by max_train_examples
    assert text["vocab"].shape == (65,) and text["train_tokens"].dtype == np.int32
    manifest = json.loads((tmp_path / "data" / "prepared" / "manifest.json").read_text())["datasets"]
    assert manifest["tiny_shakespeare"]["kind"] == "text" and manifest["tiny_shakespeare"]["num_val"] == 55_770
    assert manifest["tiny_shakespeare"]["num_classes"] == 65 and manifest["tiny_shakespeare"]["image_size"] is None
    assert manifest["mnist1d"]["kind"] == "sequence" and manifest["mnist1d"]["num_train"] == 1000
    assert result.metrics["tiny_shakespeare/num_val"] == 55_770 and result.metrics["tiny_shakespeare/num_classes"] == 65
    assert "1003854 / 55770 / 55770 train / val / test tokens, vocabulary 65" in lines[1]
    # What downstream stages read.
    assert sorted(load_prepared(tmp_path, "tiny_shakespeare")) == ["test_tokens", "train_tokens", "val_tokens", "vocab"]
    assert sorted(load_prepared(tmp_path, "mnist1d")) == ["x_test", "x_train", "y_test", "y_train"]


# ------------------------------------------------------ every dataset: corrupt and missing files
def _linked_mirror(mirror: Path, dest: Path, folders: set[str]) -> Path:
    """A mirror of ``folders`` made of symlinks to the real files (cheap to tamper with one)."""
    for folder in folders:
        (dest / folder).mkdir(parents=True)
        for f in (mirror / folder).iterdir():
            (dest / folder / f.name).symlink_to(f)
    return dest


CASES = {  # dataset -> a mirror file of it
    "mnist": "mnist/t10k-labels-idx1-ubyte.gz",
    "fashion_mnist": "fashion_mnist/train-images-idx3-ubyte.gz.part05",
    "digits": "sklearn_digits/digits.csv.gz",
    "cifar10_jpeg": "cifar10_jpeg/train_frog_2500-4999.tar.gz",
    "mnist1d": "mnist1d/mnist1d_data.npz",
    "tiny_shakespeare": "tiny_shakespeare/input.txt",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_dataset_rejects_a_corrupt_file(name, tmp_path, monkeypatch, mirror):
    rel = CASES[name]
    bad = _linked_mirror(mirror, tmp_path / "mirror", {rel.split("/")[0]})
    target = bad / rel
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x04
    target.unlink()
    target.write_bytes(bytes(data))
    monkeypatch.setenv(MIRROR_ENV, str(bad))
    root = tmp_path / "project"
    root.mkdir()
    with pytest.raises(DataIntegrityError, match=re.escape(f"sha256 mismatch for {target}: expected ")) as e:
        _run(root, _params(datasets=[name]))
    assert "sha256sum -c SHA256SUMS" in str(e.value)
    assert not (root / "data").exists()


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_dataset_names_a_missing_file(name, tmp_path, monkeypatch, mirror):
    rel = CASES[name]
    bad = _linked_mirror(mirror, tmp_path / "mirror", {rel.split("/")[0]})
    (bad / rel).unlink()
    monkeypatch.setenv(MIRROR_ENV, str(bad))
    root = tmp_path / "project"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"mirror file {bad / rel} is missing")):
        _run(root, _params(datasets=[name]))
    assert not (root / "data").exists()


def test_lossless_cifar10_missing_from_the_shared_mirror_points_to_the_jpeg_copy(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    with pytest.raises(
        FileNotFoundError, match=r"cifar10/cifar-10-binary\.tar\.gz is missing.*use the dataset 'cifar10_jpeg'"
    ):
        _run(tmp_path, _params(datasets=["cifar10_gray_8"]))
    assert not (tmp_path / "data").exists()


def test_lossless_cifar10_rejects_a_wrong_archive(tmp_path, monkeypatch):
    (tmp_path / "mirror" / "cifar10").mkdir(parents=True)
    fake = tmp_path / "mirror" / "cifar10" / "cifar-10-binary.tar.gz"
    fake.write_bytes(b"not the archive")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    with pytest.raises(DataIntegrityError, match=re.escape(f"sha256 mismatch for {fake}: expected c4a38c50")):
        _run(tmp_path, _params(datasets=["cifar10"]))


def test_mirror_only_dataset_without_a_mirror_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, "none")
    with pytest.raises(
        FileNotFoundError, match=r"is mirror-only \(it has no canonical download URL\).*use the dataset 'cifar10'"
    ):
        _run(tmp_path, _params(datasets=["cifar10_jpeg_gray_8"]))
    assert not (tmp_path / "data").exists()
