"""Fetch dataset source files from a local mirror or their canonical URLs, verifying every sha256.

Where files come from (:func:`resolve_mirror`):

1. ``$L2O_DATA_MIRROR`` if set (it must be an existing folder, or ``none`` to always download);
2. else ``<root>/../shared/datasets`` if it exists;
3. else nothing: files are downloaded from their canonical URLs into a cache folder.

Mirror-only files (no canonical download, e.g. the CIFAR-10 JPEG copy) can only come from a mirror;
asking to download one raises ``FileNotFoundError`` saying so.

From a mirror, each part file is checked against its pinned sha256, then the concatenated whole
file against its own. A download is streamed to a temporary file, checked, and only then renamed
into the cache; a cached file is reused when its sha256 still matches. Any mismatch raises
:class:`DataIntegrityError` naming the file, both checksums and the fix.
"""

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import NamedTuple

from components.data import SourceFile
from components.stages.common import Logger, print_logger, sha256_bytes, sha256_file

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "MIRROR_ENV",
    "NO_MIRROR",
    "DataIntegrityError",
    "FetchedFile",
    "fetch_file",
    "fetch_file_with_origin",
    "resolve_mirror",
]

MIRROR_ENV = "L2O_DATA_MIRROR"
NO_MIRROR = "none"  # L2O_DATA_MIRROR=none: download even if ../shared/datasets exists
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class DataIntegrityError(ValueError):
    """A file's sha256 differs from the pinned one (corrupt, truncated or substituted data)."""


class FetchedFile(NamedTuple):
    """A verified source file.

    Attributes:
      data: the whole file's bytes.
      sha256: their sha256 (equal to the pinned one for ``origin``).
      origin: ``"mirror"``, or the URL it was downloaded from (also when reused from the cache).
    """

    data: bytes
    sha256: str
    origin: str


def resolve_mirror(root: Path) -> Path | None:
    """The local dataset mirror to read from, or ``None`` to download.

    Args:
      root: the project root.

    Returns:
      ``None`` if ``$L2O_DATA_MIRROR`` is ``none``; else ``$L2O_DATA_MIRROR`` if set (non-empty);
      else ``<root>/../shared/datasets`` if that folder exists; else ``None``. Paths are returned
      resolved (absolute).

    Raises:
      FileNotFoundError: if ``$L2O_DATA_MIRROR`` is set but is not an existing folder.
    """
    env = os.environ.get(MIRROR_ENV, "")
    if env.strip().lower() == NO_MIRROR:
        return None
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"{MIRROR_ENV}={env!r} is not an existing folder. Point it at a dataset mirror"
                f" (a folder laid out like ../shared/datasets, e.g. holding mnist/ and"
                f" sklearn_digits/), unset it to use ../shared/datasets, or set it to {NO_MIRROR!r} to download."
            )
        return path.resolve()
    default = Path(root) / ".." / "shared" / "datasets"
    return default.resolve() if default.is_dir() else None


def _mismatch(path: object, expected: str, actual: str, fix: str) -> DataIntegrityError:
    return DataIntegrityError(f"sha256 mismatch for {path}: expected {expected}, got {actual}. {fix}")


def _read_mirror(spec_file: SourceFile, mirror: Path) -> FetchedFile:
    download = (
        f"set {MIRROR_ENV}={NO_MIRROR} to download it from {spec_file.urls[0]}"
        if spec_file.urls
        else "(this file is mirror-only: it has no canonical download)"
    )
    fix = (
        f"The mirror at {mirror} is corrupt or incomplete: restore it (check it with"
        f" `cd {mirror} && sha256sum -c SHA256SUMS`), set {MIRROR_ENV} to a good mirror, or {download}."
    )
    chunks = []
    n = len(spec_file.mirror_parts)
    for k, part in enumerate(spec_file.mirror_parts):
        path = mirror.joinpath(*part.path.split("/"))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"mirror file {path} is missing (part {k + 1} of {n} of {spec_file.name}). {fix}"
            ) from None
        actual = sha256_bytes(data)
        if actual != part.sha256:
            raise _mismatch(path, part.sha256, actual, fix)
        chunks.append(data)
    whole = b"".join(chunks)
    actual = sha256_bytes(whole)
    if actual != spec_file.sha256:
        where = " + ".join(part.path for part in spec_file.mirror_parts)
        raise _mismatch(f"{spec_file.name} assembled from {mirror}/{{{where}}}", spec_file.sha256, actual, fix)
    return FetchedFile(whole, actual, "mirror")


def _cache_path(spec_file: SourceFile, cache_dir: Path) -> Path:
    # Content-addressed: MNIST and Fashion-MNIST share logical file names.
    return Path(cache_dir) / f"{(spec_file.url_sha256 or spec_file.sha256)[:16]}-{spec_file.name}"


def _download(url: str, cache_dir: Path, name: str) -> tuple[Path, str]:
    """Stream ``url`` into a temporary file in ``cache_dir``; return its path and sha256."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".download", dir=cache_dir)
    h = hashlib.sha256()
    try:
        with (
            os.fdopen(fd, "wb") as f,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            while block := response.read(_CHUNK):
                h.update(block)
                f.write(block)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp), h.hexdigest()


def _download_verified(spec_file: SourceFile, cache_dir: Path, log: Logger) -> FetchedFile:
    if spec_file.mirror_only:
        raise FileNotFoundError(
            f"{spec_file.name} is mirror-only (it has no canonical download URL) and no mirror is in use:"
            f" set {MIRROR_ENV} to a dataset mirror holding {spec_file.mirror_parts[0].path}"
            " (e.g. ../shared/datasets)."
        )
    assert spec_file.url_sha256 is not None  # SourceFile: URLs come with their sha256
    cache_dir = Path(cache_dir)
    target = _cache_path(spec_file, cache_dir)
    expected = spec_file.url_sha256
    if target.is_file():
        actual = sha256_file(target)
        if actual == expected:
            return FetchedFile(target.read_bytes(), actual, spec_file.urls[0])
        log(f"fetch: cached {target} has sha256 {actual}, expected {expected}; downloading again")

    cache_dir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    mismatches: list[DataIntegrityError] = []
    for url in spec_file.urls:
        log(f"fetch: downloading {url} -> {target}")
        try:
            tmp, actual = _download(url, cache_dir, spec_file.name)
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
            failures.append(f"{url}: {e}")
            continue
        if actual != expected:
            os.unlink(tmp)
            mismatches.append(
                _mismatch(
                    f"{spec_file.name} downloaded from {url}",
                    expected,
                    actual,
                    "The download is corrupt or the upstream file changed: re-run to re-download"
                    f" (delete {target} if it exists), or set {MIRROR_ENV} to a verified local mirror.",
                )
            )
            continue
        os.replace(tmp, target)
        return FetchedFile(target.read_bytes(), actual, url)
    if mismatches:
        raise mismatches[0]
    raise ConnectionError(
        f"could not download {spec_file.name} from any of {list(spec_file.urls)}:"
        f" {'; '.join(failures)}. Without internet access, set {MIRROR_ENV} to a local dataset"
        f" mirror (e.g. ../shared/datasets) holding {spec_file.mirror_parts[0].path}."
    )


def fetch_file_with_origin(
    spec_file: SourceFile, *, mirror: Path | None, cache_dir: Path, log: Logger = print_logger
) -> FetchedFile:
    """Fetch and verify one source file, and say where it came from.

    Args:
      spec_file: the file's spec (``components.data.DATASETS[name].files[i]``).
      mirror: a mirror folder (from :func:`resolve_mirror`), or ``None`` to download.
      cache_dir: where downloads are kept (unused with a mirror).
      log: receives a line per download.

    Returns:
      The verified :class:`FetchedFile`.

    Raises:
      DataIntegrityError: if a part, the whole file or a download has the wrong sha256.
      FileNotFoundError: if a mirror part is missing, or a mirror-only file is asked for without a mirror.
      ConnectionError: if no URL could be downloaded.
    """
    if mirror is not None:
        return _read_mirror(spec_file, Path(mirror))
    return _download_verified(spec_file, cache_dir, log)


def fetch_file(spec_file: SourceFile, *, mirror: Path | None, cache_dir: Path, log: Logger = print_logger) -> bytes:
    """Fetch one source file's bytes, verified against its pinned sha256s.

    With a mirror, every part file and the concatenated whole are checked; otherwise the file is
    downloaded from ``spec_file.urls`` (or reused from ``cache_dir``) and checked.

    Args:
      spec_file: the file's spec.
      mirror: a mirror folder, or ``None`` to download.
      cache_dir: where downloads are kept (unused with a mirror).
      log: receives a line per download.

    Returns:
      The whole file's bytes.

    Raises:
      DataIntegrityError: on any sha256 mismatch (the message names the file, both checksums and
        how to fix it).
      FileNotFoundError: if a mirror part is missing, or a mirror-only file is asked for without a mirror.
      ConnectionError: if no URL could be downloaded.

    Example:
      >>> from components.data import DATASETS
      >>> spec = DATASETS["digits"].files[0]
      >>> raw = fetch_file(spec, mirror=Path("../shared/datasets"),
      ...                  cache_dir=Path("data/raw"))  # doctest: +SKIP
    """
    return fetch_file_with_origin(spec_file, mirror=mirror, cache_dir=cache_dir, log=log).data
