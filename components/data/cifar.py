"""Decode CIFAR-10: the canonical binary archive, or the mirror's lossy JPEG copy; RGB to gray.

Both decoders return uint8 images ``[N, 32, 32, 3]`` (RGB, row-major) and uint8 labels ``[N]``:

* :func:`decode_cifar10_binary` reads ``cifar-10-binary.tar.gz`` (Krizhevsky's binary version):
  ``cifar-10-batches-bin/data_batch_{1..5}.bin`` (train, in that order) and ``test_batch.bin``, each
  a run of 3073-byte records ``<label byte><1024 red><1024 green><1024 blue>`` (rows of 32 pixels).
  No pickle is loaded and nothing is extracted to disk. The order is the canonical one.
* :func:`decode_cifar10_jpeg` reads the mirror's per-class tarballs of JPEG files
  (``train/<class>/NNNN.jpg``, ``test/<class>/NNNN.jpg``) with Pillow, in **class-major order**
  (class 0's images by file number, then class 1's, ...): shuffle before use (the prepare step
  does, with the seed). The pixels are a lossy JPEG re-encode of CIFAR-10, not the original
  values; decoding is deterministic for a given libjpeg build (Pillow wheels bundle
  libjpeg-turbo; :func:`jpeg_decoder_version` says which, and the prepare manifest records it).

Pillow is imported only when JPEGs are decoded (it ships with matplotlib, a project dependency).

Example:
  >>> x = np.zeros((2, 32, 32, 3), np.uint8); x[..., 0] = 255
  >>> round(float(to_grayscale(x)[0, 0, 0]), 3)  # pure red: its BT.601 luma, 0.299 * 255
  76.245
"""

import io
import re
import tarfile

import numpy as np

from components.data.sources import CIFAR10_CLASSES

__all__ = [
    "LUMA_WEIGHTS",
    "decode_cifar10_binary",
    "decode_cifar10_jpeg",
    "jpeg_decoder_version",
    "to_grayscale",
]

# ITU-R BT.601 luma, as Pillow's convert("L") and tf.image.rgb_to_grayscale use.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

_SIDE = 32
_RECORD = 1 + 3 * _SIDE * _SIDE
_BIN_DIR = "cifar-10-batches-bin"
_TRAIN_BATCHES = tuple(f"{_BIN_DIR}/data_batch_{i}.bin" for i in range(1, 6))
_TEST_BATCH = f"{_BIN_DIR}/test_batch.bin"
_JPEG_MEMBER = re.compile(r"^(train|test)/([a-z]+)/(\d+)\.jpg$")
_GRAY_CHUNK = 4096


def _open_tar(raw: bytes, what: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=io.BytesIO(raw), mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{what} is not a readable tar archive ({e}); the file is truncated or corrupt") from e


def _read_members(tf: tarfile.TarFile, what: str) -> dict[str, bytes]:
    out = {}
    try:
        for member in tf:
            if member.isfile():
                f = tf.extractfile(member)
                assert f is not None  # regular files always have data
                out[member.name] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{what} is not a readable tar archive ({e}); the file is truncated or corrupt") from e
    return out


def _decode_records(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    if len(data) == 0 or len(data) % _RECORD:
        raise ValueError(f"{what}: {len(data)} bytes is not a positive multiple of the {_RECORD}-byte CIFAR-10 record")
    rec = np.frombuffer(data, np.uint8).reshape(-1, _RECORD)
    labels = rec[:, 0].copy()
    if labels.max() >= len(CIFAR10_CLASSES):
        raise ValueError(f"{what}: labels must lie in 0..{len(CIFAR10_CLASSES) - 1}, got up to {labels.max()}")
    images = rec[:, 1:].reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def decode_cifar10_binary(raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode ``cifar-10-binary.tar.gz`` into the canonical train and test arrays.

    Args:
      raw: the archive's bytes (gzip-compressed or plain tar).

    Returns:
      ``(x_train, y_train, x_test, y_test)``: images uint8 ``[N, 32, 32, 3]`` (50000 and 10000 for
      the real archive), labels uint8 ``[N]``, in the archive's order (batches 1..5, then test).

    Raises:
      ValueError: if the archive does not open, lacks a batch file, or a batch is not a whole
        number of 3073-byte records with labels in 0..9.
    """
    members = _read_members(_open_tar(raw, "CIFAR-10 binary archive"), "CIFAR-10 binary archive")
    missing = [m for m in (*_TRAIN_BATCHES, _TEST_BATCH) if m not in members]
    if missing:
        raise ValueError(
            f"CIFAR-10 binary archive lacks {missing}; expected the members {[*_TRAIN_BATCHES, _TEST_BATCH]}"
            " of cifar-10-binary.tar.gz (the python or matlab versions are not read)"
        )
    train = [_decode_records(members[m], m) for m in _TRAIN_BATCHES]
    x_test, y_test = _decode_records(members[_TEST_BATCH], _TEST_BATCH)
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test


def jpeg_decoder_version() -> str:
    """The JPEG decoder :func:`decode_cifar10_jpeg` uses, e.g. ``"Pillow 11.0.0, libjpeg-turbo 3.0.4"``."""
    import PIL  # noqa: PLC0415  (optional at import time)
    from PIL import features  # noqa: PLC0415

    turbo = features.version("libjpeg_turbo")
    jpeg = f"libjpeg-turbo {turbo}" if turbo else f"libjpeg {features.version_codec('jpg')}"
    return f"Pillow {PIL.__version__}, {jpeg}"


def _decode_jpeg(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
            if im.size != (_SIDE, _SIDE):
                raise ValueError(f"{name}: expected a {_SIDE}x{_SIDE} image, got {im.size[0]}x{im.size[1]}")
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.frombuffer(im.tobytes(), np.uint8).reshape(_SIDE, _SIDE, 3)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{name}: not a decodable JPEG ({e}); the file is truncated or corrupt") from e


def decode_cifar10_jpeg(files: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode the mirror's CIFAR-10 JPEG tarballs, in class-major order.

    Every regular member of every tarball must be named ``{train,test}/<class>/<number>.jpg`` with
    ``<class>`` one of :data:`~components.data.sources.CIFAR10_CLASSES` (its position is the label);
    within a split and class the numbers must be exactly ``0 .. n-1`` (no image missing or doubled).

    Args:
      files: tarball name -> bytes (all tarballs of the dataset; names are not interpreted).

    Returns:
      ``(x_train, y_train, x_test, y_test)``: images uint8 ``[N, 32, 32, 3]`` RGB, labels uint8
      ``[N]``, sorted by (label, file number). The real copy has 5000 train and 1000 test images
      per class.

    Raises:
      ValueError: on an unreadable tarball or JPEG, an unexpected member name, an image that is
        not 32x32, or a gap or duplicate in the file numbers.
      ImportError: if Pillow is not installed.
    """
    try:
        import PIL  # noqa: F401, PLC0415
    except ImportError as e:
        raise ImportError("decoding cifar10_jpeg needs Pillow (`pip install pillow`; it comes with matplotlib)") from e
    entries: dict[str, dict[tuple[int, int], bytes]] = {"train": {}, "test": {}}
    for tar_name in sorted(files):
        members = _read_members(_open_tar(files[tar_name], tar_name), tar_name)
        for name, data in members.items():
            m = _JPEG_MEMBER.match(name)
            if m is None or m.group(2) not in CIFAR10_CLASSES:
                raise ValueError(
                    f"{tar_name}: unexpected member {name!r}; expected train/<class>/NNNN.jpg or"
                    f" test/<class>/NNNN.jpg with <class> one of {list(CIFAR10_CLASSES)}"
                )
            key = (CIFAR10_CLASSES.index(m.group(2)), int(m.group(3)))
            if key in entries[m.group(1)]:
                raise ValueError(f"{tar_name}: {name} appears twice in the CIFAR-10 JPEG tarballs")
            entries[m.group(1)][key] = data
    out = []
    for split in ("train", "test"):
        keys = sorted(entries[split])
        if not keys:
            raise ValueError(f"no {split}/ images in the CIFAR-10 JPEG tarballs {sorted(files)}")
        for label in sorted({k[0] for k in keys}):
            numbers = [n for c, n in keys if c == label]
            if numbers != list(range(len(numbers))):
                raise ValueError(
                    f"CIFAR-10 JPEG {split}/{CIFAR10_CLASSES[label]}: file numbers are not 0..{len(numbers) - 1}"
                    " (an image is missing or a tarball was left out)"
                )
        x = np.empty((len(keys), _SIDE, _SIDE, 3), np.uint8)
        for i, key in enumerate(keys):
            x[i] = _decode_jpeg(entries[split][key], f"{split}/{CIFAR10_CLASSES[key[0]]}/{key[1]:04d}.jpg")
        out += [x, np.asarray([k[0] for k in keys], np.uint8)]
    return out[0], out[1], out[2], out[3]


def to_grayscale(x: np.ndarray) -> np.ndarray:
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` of RGB images, in float32, same value scale.

    Args:
      x: images ``[N, H, W, 3]``, any real dtype.

    Returns:
      float32 ``[N, H, W]`` (for uint8 input, values in [0, 255]; not rounded).

    Raises:
      ValueError: if ``x`` is not ``[N, H, W, 3]``.
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"to_grayscale expects RGB images [N, H, W, 3], got shape {x.shape}")
    w = np.asarray(LUMA_WEIGHTS, np.float32)
    out = np.empty(x.shape[:3], np.float32)
    for start in range(0, len(x), _GRAY_CHUNK):  # chunks: the float copy of all of CIFAR is 700 MB
        rgb = x[start : start + _GRAY_CHUNK].astype(np.float32)
        # Elementwise, in a fixed order, not a BLAS matvec: the same bytes on every CPU.
        out[start : start + _GRAY_CHUNK] = rgb[..., 0] * w[0] + rgb[..., 1] * w[1] + rgb[..., 2] * w[2]
    return out
