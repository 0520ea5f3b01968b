"""prepare_data stage: fetch and verify the raw datasets, then write model-ready arrays.

Reads ``params.data`` (datasets, image_size, test_fraction, max_train_examples) and ``params.seed``.
Writes, relative to the project root::

    data/prepared/<name>.npz       x_train, y_train, x_test, y_test (see components.data.build_arrays)
    data/prepared/manifest.json    per dataset: source files + sha256 + origin, output sha256,
                                   shapes, number of classes, params used, stage version

Order of work, so that a bad input never leaves a half-written output:

1. fetch and verify every source file of every dataset (mirror or download, see
   ``components.stages.fetch``) — nothing is written under ``data/prepared`` before all pass;
2. decode and build each dataset, writing its npz to a hidden temporary file;
3. rename all npz into place, delete ``*.npz`` of datasets no longer listed, write the manifest.

The npz files are written deterministically (fixed zip timestamps, sorted members), so the same
inputs and params give byte-identical outputs and the same sha256 in the manifest, whether the
raw files came from the mirror or were downloaded (their decompressed payloads are identical).
"""

import contextlib
import dataclasses
import functools
import os
import time
import uuid
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from components.data import build_arrays, get_dataset
from components.stages.common import (
    MANIFEST,
    PREPARED_DIR,
    Logger,
    MapFn,
    StageResult,
    atomic_write_json,
    print_logger,
    serial_map,
    sha256_file,
)
from components.stages.fetch import FetchedFile, fetch_file_with_origin, resolve_mirror
from components.stages.params import PipelineParams

__all__ = ["CACHE_DIR", "MANIFEST", "PREPARED_DIR", "STAGE", "VERSION", "run", "write_npz"]

STAGE = "prepare_data"
VERSION = "1"
CACHE_DIR = Path("data") / "raw"  # downloads only; unused with a mirror

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` (what ``np.savez`` writes), deterministically.

    Same layout as ``np.savez`` (a stored zip of ``<key>.npy`` members, readable by ``np.load``)
    but with fixed member timestamps and sorted member order, so equal arrays give equal bytes.

    Args:
      f: a binary file opened for writing.
      arrays: name -> array (no object arrays).
    """
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)


@dataclasses.dataclass(frozen=True)
class _Fetched:
    name: str
    files: dict[str, FetchedFile]
    seconds: float


@dataclasses.dataclass(frozen=True)
class _Built:
    name: str
    tmp_path: Path
    sha256: str
    shapes: dict[str, list[int]]
    num_train: int
    num_test: int
    sources: list[dict[str, str]]
    seconds: float


def _fetch_dataset(name: str, *, mirror: Path | None, cache_dir: Path, log: Logger) -> _Fetched:
    """Fetch and verify every source file of dataset ``name``."""
    start = time.perf_counter()
    spec = get_dataset(name)
    files = {f.name: fetch_file_with_origin(f, mirror=mirror, cache_dir=cache_dir, log=log) for f in spec.files}
    return _Fetched(name, files, time.perf_counter() - start)


def _build_dataset(
    fetched: _Fetched,
    *,
    image_size: int,
    test_fraction: float,
    max_train_examples: int | None,
    seed: int,
    out_dir: Path,
    token: str,
    log: Logger,
) -> _Built:
    """Decode and build one dataset, writing its npz to a temporary file in ``out_dir``."""
    start = time.perf_counter()
    name = fetched.name
    spec = get_dataset(name)
    arrays = build_arrays(
        name,
        {fname: f.data for fname, f in fetched.files.items()},
        image_size=image_size,
        test_fraction=test_fraction,
        max_train_examples=max_train_examples,
        seed=seed,
    )
    tmp_path = out_dir / f".{name}.npz.{token}.tmp"
    try:
        with open(tmp_path, "wb") as f:
            write_npz(f, arrays)
        sha = sha256_file(tmp_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
    sources = [
        {
            "name": f.name,
            "sha256": fetched.files[f.name].sha256,
            "content_sha256": f.content_sha256,
            "origin": fetched.files[f.name].origin,
        }
        for f in spec.files
    ]
    build_s = time.perf_counter() - start
    total_s = fetched.seconds + build_s
    origins = sorted({s["origin"] for s in sources})
    num_train, num_test = len(arrays["y_train"]), len(arrays["y_test"])
    log(
        f"{STAGE}: {name}: {num_train} train / {num_test} test at {image_size}x{image_size},"
        f" {len(sources)} file(s) from {', '.join(origins)}, {total_s:.2f} s"
        f" (fetch {fetched.seconds:.2f} s, build {build_s:.2f} s)"
    )
    return _Built(
        name=name,
        tmp_path=tmp_path,
        sha256=sha,
        shapes={k: list(v.shape) for k, v in arrays.items()},
        num_train=num_train,
        num_test=num_test,
        sources=sources,
        seconds=total_s,
    )


def run(
    params: PipelineParams,
    root: Path,
    *,
    log: Logger = print_logger,
    map_fn: MapFn = serial_map,
) -> StageResult:
    """Prepare every dataset in ``params.data.datasets`` under ``<root>/data/prepared``.

    Args:
      params: the experiment; reads ``params.data`` and ``params.seed``.
      root: the project root (outputs and the download cache live under it).
      log: receives one line per dataset (sizes, origin, time taken) and per download.
      map_fn: fans the per-dataset work out (fetch+verify, then build); runs serially by default.

    Returns:
      A :class:`StageResult` with metrics ``<name>/num_train``, ``<name>/num_test``,
      ``<name>/num_classes``, ``<name>/seconds`` and the manifest as artifact.

    Raises:
      DataIntegrityError: if any source file fails its sha256 check (nothing is written then).
      FileNotFoundError: if ``$L2O_DATA_MIRROR`` or a mirror file is missing.
      ValueError: if a dataset cannot be built with these params (e.g. image_size 16 for digits).
    """
    root = Path(root)
    data = params.data
    names = list(data.datasets)
    mirror = resolve_mirror(root)
    cache_dir = root / CACHE_DIR
    out_dir = root / PREPARED_DIR

    # Fail on bad params before reading any data.
    for name in names:
        native = get_dataset(name).image_size
        if data.image_size > native:
            raise ValueError(
                f"data.image_size={data.image_size} is not available for {name!r}: its native"
                f" images are {native}x{native} and area averaging only downsamples; set"
                f" data.image_size <= {native} or drop {name!r} from data.datasets"
            )

    # 1. Fetch and verify everything before writing anything.
    fetched: list[_Fetched] = map_fn(
        functools.partial(_fetch_dataset, mirror=mirror, cache_dir=cache_dir, log=log), names
    )

    # 2. Build each dataset into a hidden temporary npz.
    out_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    build = functools.partial(
        _build_dataset,
        image_size=data.image_size,
        test_fraction=data.test_fraction,
        max_train_examples=data.max_train_examples,
        seed=params.seed,
        out_dir=out_dir,
        token=token,
        log=log,
    )
    try:
        built: list[_Built] = map_fn(build, fetched)
        del fetched
        # 3. Commit: rename into place, drop stale outputs, write the manifest.
        for b in built:
            os.replace(b.tmp_path, out_dir / f"{b.name}.npz")
    finally:
        for tmp in out_dir.glob(f".*.npz.{token}.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    for stale in sorted(out_dir.glob("*.npz")):
        if stale.stem not in names:
            log(f"{STAGE}: removing stale {stale.relative_to(root)} (not in data.datasets)")
            stale.unlink()

    used = {
        "image_size": data.image_size,
        "test_fraction": data.test_fraction,
        "max_train_examples": data.max_train_examples,
        "seed": params.seed,
    }
    manifest = {
        "stage": STAGE,
        "version": VERSION,
        "datasets": {
            b.name: {
                "file": (PREPARED_DIR / f"{b.name}.npz").as_posix(),
                "sha256": b.sha256,
                "sources": b.sources,
                "shapes": b.shapes,
                "num_train": b.num_train,
                "num_test": b.num_test,
                "num_classes": get_dataset(b.name).num_classes,
                "has_test_split": get_dataset(b.name).has_test_split,
                "params": used,
                "stage_version": VERSION,
            }
            for b in built
        },
    }
    atomic_write_json(root / MANIFEST, manifest)

    metrics: dict[str, float] = {}
    for b in built:
        metrics[f"{b.name}/num_train"] = float(b.num_train)
        metrics[f"{b.name}/num_test"] = float(b.num_test)
        metrics[f"{b.name}/num_classes"] = float(get_dataset(b.name).num_classes)
        metrics[f"{b.name}/seconds"] = round(b.seconds, 3)
    return StageResult(
        stage=STAGE,
        version=VERSION,
        metrics=metrics,
        artifacts=[MANIFEST],
        tags={"data_source": "mirror" if mirror is not None else "download"},
    )
