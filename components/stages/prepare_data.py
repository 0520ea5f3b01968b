"""prepare_data stage: fetch and verify the raw datasets, then write model-ready arrays.

Reads ``params.data`` (datasets, image_size, test_fraction, max_train_examples, text_split) and
``params.seed``. Each entry of ``data.datasets`` is a prepared name ``<dataset>[_gray][_<size>]``
(``components.data.prepare``). Writes, relative to the project root::

    data/prepared/<name>.npz       one per prepared name: x_train, y_train, x_test, y_test (images,
                                   MNIST-1D) or train_tokens, val_tokens, test_tokens, vocab (text);
                                   see components.data.build_variant
    data/prepared/manifest.json    per prepared name: dataset, variant (image_size, grayscale),
                                   source files + sha256 + origin, output sha256, shapes, dtypes,
                                   counts, number of classes, provenance notes, params, stage version

Order of work, so that a bad input never leaves a half-written output:

1. fetch and verify every source file of every dataset needed (mirror or download, see
   ``components.stages.fetch``, this stage's helper module: not a stage, and used by no other stage)
   — nothing is written under ``data/prepared`` before all pass;
2. decode each dataset once, build each of its variants, writing each npz to a hidden temporary file;
3. rename all npz into place, delete ``*.npz`` of names no longer listed, write the manifest.

The npz files are written deterministically (fixed zip timestamps, sorted members), so the same
inputs and params give byte-identical outputs and the same sha256 in the manifest, whether the
raw files came from the mirror or were downloaded (both decode to the same arrays; where that
could not hold, the datasets have different names: ``cifar10`` vs ``cifar10_jpeg``).
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

from components.data import (
    Variant,
    build_variant,
    decode_dataset,
    get_dataset,
    jpeg_decoder_version,
    parse_variant,
)
from components.stages.common import Logger, StageContext, StageResult, atomic_write_json, sha256_file
from components.stages.fetch import FetchedFile, fetch_file_with_origin, resolve_mirror
from components.stages.params import DataParams, PipelineParams
from components.stages.paths import CACHE_DIR, MANIFEST, PREPARED_DIR

__all__ = ["STAGE", "VERSION", "run", "variants", "write_npz"]

STAGE = "prepare_data"
# 3: the resize and the luma are exact and CPU-independent (no BLAS), so the bytes are the same everywhere
# 2: prepared names (variants), CIFAR-10, MNIST-1D, tiny-shakespeare; manifest v2 fields
VERSION = "3"

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


def variants(data: DataParams) -> list[Variant]:
    """The prepared variants ``data.datasets`` asks for, in order.

    Raises:
      ValueError: for a name that is not ``<dataset>[_gray][_<size>]`` or a size the dataset lacks.
    """
    out = []
    for name in data.datasets:
        try:
            out.append(parse_variant(name, image_size=data.image_size))
        except ValueError as err:
            raise ValueError(
                f"data.datasets: {err}; set data.image_size accordingly, or name the size: {name}_<size>"
            ) from None
    return out


@dataclasses.dataclass(frozen=True)
class _Fetched:
    name: str
    files: dict[str, FetchedFile]
    seconds: float


@dataclasses.dataclass(frozen=True)
class _Built:
    variant: Variant
    tmp_path: Path
    sha256: str
    shapes: dict[str, list[int]]
    dtypes: dict[str, str]
    counts: dict[str, int]
    num_classes: int
    sources: list[dict[str, str | None]]
    decoder: str | None
    seconds: float


def _fetch_dataset(name: str, *, mirror: Path | None, cache_dir: Path, log: Logger) -> _Fetched:
    """Fetch and verify every source file of dataset ``name``."""
    start = time.perf_counter()
    spec = get_dataset(name)
    try:
        files = {f.name: fetch_file_with_origin(f, mirror=mirror, cache_dir=cache_dir, log=log) for f in spec.files}
    except FileNotFoundError as err:
        if not spec.missing_hint:
            raise
        raise FileNotFoundError(f"{err} {spec.missing_hint}") from None
    return _Fetched(name, files, time.perf_counter() - start)


def _counts(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    if "train_tokens" in arrays:
        return {f"num_{split}": len(arrays[f"{split}_tokens"]) for split in ("train", "val", "test")}
    return {"num_train": len(arrays["y_train"]), "num_test": len(arrays["y_test"])}


def _describe(v: Variant, counts: dict[str, int], num_classes: int) -> str:
    if "num_val" in counts:
        return (
            f"{counts['num_train']} / {counts['num_val']} / {counts['num_test']} train / val / test tokens,"
            f" vocabulary {num_classes}"
        )
    shape = f" at {v.image_size}x{v.image_size}{' gray' if v.grayscale else ''}" if v.image_size else ""
    return f"{counts['num_train']} train / {counts['num_test']} test{shape}"


def _build_dataset(
    fetched: _Fetched,
    *,
    by_dataset: dict[str, list[Variant]],
    data: DataParams,
    seed: int,
    out_dir: Path,
    token: str,
    log: Logger,
) -> list[_Built]:
    """Decode one dataset and build each of its variants into a temporary npz in ``out_dir``."""
    start = time.perf_counter()
    spec = get_dataset(fetched.name)
    decoded = decode_dataset(spec.name, {fname: f.data for fname, f in fetched.files.items()})
    decode_s = time.perf_counter() - start
    sources = [
        {
            "name": f.name,
            "sha256": fetched.files[f.name].sha256,
            "content_sha256": f.content_sha256,
            "origin": fetched.files[f.name].origin,
        }
        for f in spec.files
    ]
    origins = ", ".join(sorted({str(s["origin"]) for s in sources}))
    decoder = jpeg_decoder_version() if spec.format == "cifar10_jpeg" else None
    built = []
    for v in by_dataset[spec.name]:
        t0 = time.perf_counter()
        arrays = build_variant(
            v,
            decoded,
            test_fraction=data.test_fraction,
            max_train_examples=data.max_train_examples,
            text_split=tuple(data.text_split),
            seed=seed,
        )
        tmp_path = out_dir / f".{v.name}.npz.{token}.tmp"
        try:
            with open(tmp_path, "wb") as f:
                write_npz(f, arrays)
            sha = sha256_file(tmp_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_path)
            raise
        build_s = time.perf_counter() - t0
        total_s = fetched.seconds + decode_s + build_s  # fetch and decode are shared by the variants
        counts = _counts(arrays)
        num_classes = len(arrays["vocab"]) if "vocab" in arrays else spec.num_classes
        log(
            f"{STAGE}: {v.name}: {_describe(v, counts, num_classes)}, {len(sources)} file(s) from {origins},"
            f" {total_s:.2f} s (fetch {fetched.seconds:.2f} s, decode {decode_s:.2f} s, build {build_s:.2f} s)"
        )
        built.append(
            _Built(
                variant=v,
                tmp_path=tmp_path,
                sha256=sha,
                shapes={k: list(a.shape) for k, a in arrays.items()},
                dtypes={k: a.dtype.name for k, a in arrays.items()},
                counts=counts,
                num_classes=num_classes,
                sources=sources,
                decoder=decoder,
                seconds=total_s,
            )
        )
        del arrays
    return built


def _manifest_entry(b: _Built, used: dict) -> dict:
    v = b.variant
    spec = get_dataset(v.dataset)
    entry = {
        "file": (PREPARED_DIR / f"{v.name}.npz").as_posix(),
        "sha256": b.sha256,
        "dataset": v.dataset,
        "kind": spec.kind,
        "image_size": v.image_size,
        "grayscale": v.grayscale,
        "sources": b.sources,
        "shapes": b.shapes,
        "dtypes": b.dtypes,
        **b.counts,
        "num_classes": b.num_classes,
        "has_test_split": spec.has_test_split,
        "exact_copy": spec.exact_copy,
        "notes": spec.notes,
        "params": used,
        "stage_version": VERSION,
    }
    if b.decoder is not None:
        entry["decoder"] = b.decoder
    return entry


def _build_all(
    fetched: list[_Fetched], wanted: list[Variant], data: DataParams, seed: int, out_dir: Path, map_fn, log: Logger
) -> list[_Built]:
    """Steps 2 and 3: build every variant into a hidden temporary npz, then rename all into place.

    Returns the built variants in ``wanted``'s order.
    """
    by_dataset: dict[str, list[Variant]] = {}
    for v in wanted:
        by_dataset.setdefault(v.dataset, []).append(v)
    out_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    build = functools.partial(
        _build_dataset, by_dataset=by_dataset, data=data, seed=seed, out_dir=out_dir, token=token, log=log
    )
    try:
        groups: list[list[_Built]] = map_fn(build, fetched)
        del fetched
        by_name = {b.variant.name: b for group in groups for b in group}
        built = [by_name[v.name] for v in wanted]
        for b in built:
            os.replace(b.tmp_path, out_dir / f"{b.variant.name}.npz")
    finally:
        for tmp in out_dir.glob(f".*.npz.{token}.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return built


def _remove_stale(root: Path, out_dir: Path, names: set[str], log: Logger) -> None:
    for stale in sorted(out_dir.glob("*.npz")):
        if stale.stem not in names:
            log(f"{STAGE}: removing stale {stale.relative_to(root)} (not in data.datasets)")
            stale.unlink()


def _manifest(built: list[_Built], data: DataParams, seed: int) -> dict:
    used = {
        "image_size": data.image_size,
        "test_fraction": data.test_fraction,
        "max_train_examples": data.max_train_examples,
        "text_split": list(data.text_split),
        "seed": seed,
    }
    return {
        "stage": STAGE,
        "version": VERSION,
        "datasets": {b.variant.name: _manifest_entry(b, used) for b in built},
    }


def run(params: PipelineParams, root: Path, context: StageContext | None = None) -> StageResult:
    """Prepare every name in ``params.data.datasets`` under ``<root>/data/prepared``.

    Args:
      params: the experiment; reads ``params.data`` and ``params.seed``.
      root: the project root (outputs and the download cache live under it).
      context: ``log`` receives one line per prepared name (sizes, origin, time taken) and per download;
        ``map_fn`` fans the per-dataset work out (fetch+verify, then decode+build its variants).

    Returns:
      A :class:`StageResult` with metrics ``<name>/num_train``, ``<name>/num_test`` (and
      ``<name>/num_val`` for text), ``<name>/num_classes``, ``<name>/seconds`` and the manifest as
      artifact.

    Raises:
      DataIntegrityError: if any source file fails its sha256 check (nothing is written then).
      FileNotFoundError: if ``$L2O_DATA_MIRROR`` or a mirror file is missing, or a mirror-only
        dataset is asked for without a mirror.
      ValueError: if a dataset cannot be built with these params (e.g. image_size 16 for digits).
    """
    context = context or StageContext()
    log = context.log
    root = Path(root)
    data = params.data
    wanted = variants(data)  # fails on bad params before reading any data
    mirror = resolve_mirror(root)
    out_dir = root / PREPARED_DIR
    datasets = list(dict.fromkeys(v.dataset for v in wanted))

    # 1. Fetch and verify everything before writing anything.
    fetch = functools.partial(_fetch_dataset, mirror=mirror, cache_dir=root / CACHE_DIR, log=log)
    # 2. Decode each dataset once and build its variants into hidden temporary npz files; 3. commit them
    # (the fetched bytes are only referenced by _build_all, which drops them once decoded).
    built = _build_all(context.map_fn(fetch, datasets), wanted, data, params.seed, out_dir, context.map_fn, log)
    _remove_stale(root, out_dir, set(data.datasets), log)
    atomic_write_json(root / MANIFEST, _manifest(built, data, params.seed))

    metrics: dict[str, float] = {}
    for b in built:
        for key, value in b.counts.items():
            metrics[f"{b.variant.name}/{key}"] = float(value)
        metrics[f"{b.variant.name}/num_classes"] = float(b.num_classes)
        metrics[f"{b.variant.name}/seconds"] = round(b.seconds, 3)
    return StageResult(
        stage=STAGE,
        version=VERSION,
        metrics=metrics,
        artifacts=[MANIFEST],
        tags={"data_source": "mirror" if mirror is not None else "download"},
    )
