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
    return prepare_data.run(params, root, log=lines.append), lines


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
        "seed": 0,
    }
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
    with pytest.raises(ValueError, match=r"data\.image_size=16 is not available for 'digits'"):
        _run(tmp_path, _params(datasets=["mnist", "digits"], image_size=16))
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
        log=lambda msg: None,
        map_fn=threaded_map,
    )
    assert calls[0] == ["digits", "mnist"]  # fetch + verify, then build, both fanned out
    assert len(calls) == 2 and len(calls[1]) == 2
    assert result.metrics["mnist/num_train"] == 100
