"""Decode the MNIST-family files, and the array operations every image dataset shares.

Pure functions over bytes and numpy arrays (no file I/O, no network): IDX (MNIST, Fashion-MNIST)
and scikit-learn's digits CSV decoding; exact area downsampling; centred zero-padding; a seeded
train/test split and subsample. ``components.data.prepare`` assembles them into prepared arrays.

Downsampling is exact area averaging (a box filter): output pixel ``i`` covers the input interval
``[i * H / S, (i + 1) * H / S)`` and is the mean of the input over it, weighting each input pixel by
its overlap with the interval, so non-integer ratios (28 -> 8) are handled exactly and the image
mean is preserved. Nothing here upsamples by interpolation: the only larger size is defined by
zero-padding (:func:`pad_images`).

Example:
  >>> import numpy as np
  >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
  >>> resize_images(x, 2)[0]
  array([[ 2.5,  4.5],
         [10.5, 12.5]], dtype=float32)
"""

import gzip
import io
import math
import struct
import zlib

import numpy as np

__all__ = [
    "area_weights",
    "decode_digits_csv",
    "decode_idx",
    "pad_images",
    "resize_images",
    "split_train_test",
    "subsample",
]

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes (third magic byte) -> big-endian dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_RESIZE_CHUNK_BYTES = 1 << 23

_DIGITS_PIXELS = 64
_DIGITS_MAX = 16


def _maybe_gunzip(raw: bytes, what: str) -> bytes:
    """``raw`` decompressed if it starts with the gzip magic, else ``raw`` itself."""
    raw = bytes(raw)
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(
            f"{what}: data starts with the gzip magic but does not decompress ({e}); the file is"
            " truncated or corrupt: fetch it again"
        ) from e


def decode_idx(raw: bytes) -> np.ndarray:
    """Decode an IDX file (the MNIST format), gunzipping it first if it is gzip-compressed.

    Format: magic ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32 dimensions, then the
    values, big-endian, in C order.

    Args:
      raw: the file's bytes (``.gz`` or plain).

    Returns:
      An array of shape ``dims`` in native byte order (uint8 for MNIST images and labels).

    Raises:
      ValueError: if the magic, the type code or the dimensions are invalid, or the payload size
        does not match the dimensions (truncated or padded file).

    Example:
      >>> decode_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
      array([7, 2, 1], dtype=uint8)
    """
    data = _maybe_gunzip(raw, "IDX file")
    if len(data) < 4:
        raise ValueError(f"not an IDX file: {len(data)} bytes is shorter than the 4-byte magic")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"not an IDX file: magic {data[:4].hex()} does not start with 0000"
            " (expected e.g. 00000803 for images, 00000801 for labels)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise ValueError(f"IDX type code 0x{code:02x} is not one of {allowed}")
    if ndim == 0:
        raise ValueError("IDX header declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"IDX header declares {ndim} dimensions ({header} header bytes) but the file has only {len(data)} bytes"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"IDX size mismatch: header says shape {list(dims)} of {dtype.name}"
            f" ({expected} bytes in all) but the file has {len(data)} bytes;"
            " the file is truncated or corrupt"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # native order, writable copy


def decode_digits_csv(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Decode scikit-learn's ``digits.csv.gz``: per row 64 pixel values (0..16), then the label.

    Args:
      raw: the file's bytes (``.gz`` or plain CSV).

    Returns:
      ``(images, labels)``: images uint8 ``[N, 8, 8]`` with values 0..16 (row-major, as
      ``sklearn.datasets.load_digits().images``) and labels uint8 ``[N]`` in 0..9. The 64
      features of ``load_digits().data`` are ``images.reshape(N, 64)``.

    Raises:
      ValueError: if the text is not a numeric CSV with 65 columns, or values are out of range.
    """
    data = _maybe_gunzip(raw, "digits CSV")
    try:
        text = data.decode("ascii")
        rows = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"digits CSV does not parse as integer CSV: {e}") from e
    if rows.shape[0] == 0 or rows.shape[1] != _DIGITS_PIXELS + 1:
        raise ValueError(
            f"digits CSV: expected rows of {_DIGITS_PIXELS} pixels + 1 label"
            f" ({_DIGITS_PIXELS + 1} columns), got an array of shape {rows.shape}"
        )
    pixels, labels = rows[:, :_DIGITS_PIXELS], rows[:, _DIGITS_PIXELS]
    if pixels.min() < 0 or pixels.max() > _DIGITS_MAX:
        raise ValueError(f"digits CSV: pixel values must lie in 0..{_DIGITS_MAX}, got {pixels.min()}..{pixels.max()}")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"digits CSV: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    side = math.isqrt(_DIGITS_PIXELS)
    return pixels.astype(np.uint8).reshape(-1, side, side), labels.astype(np.uint8)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """The ``[n_out, n_in]`` matrix of exact area (box-filter) downsampling along one axis.

    ``R[i, j] = |[i n_in / n_out, (i + 1) n_in / n_out) ∩ [j, j + 1)| / (n_in / n_out)``: the
    fraction of output pixel ``i``'s footprint covered by input pixel ``j``. Every row sums to 1;
    every column sums to ``n_out / n_in`` (each input pixel is used exactly once in all).
    Computed in integer units of ``1 / n_out`` pixel, so the weights are exact rationals.

    Args:
      n_in: input length (pixels).
      n_out: output length, ``1 <= n_out <= n_in``.

    Returns:
      float64 ``[n_out, n_in]`` weights.

    Raises:
      ValueError: if ``n_out`` is not in ``1..n_in`` (upsampling is not area averaging).

    Example:
      >>> area_weights(3, 2) * 3
      array([[2., 1., 0.],
             [0., 1., 2.]])
    """
    if not 1 <= n_out <= n_in:
        raise ValueError(f"area downsampling needs 1 <= output size <= input size, got {n_in} -> {n_out}")
    i = np.arange(n_out)[:, None]
    j = np.arange(n_in)[None, :]
    # In units of 1/n_out pixel: output i spans [i n_in, (i+1) n_in), input j spans
    # [j n_out, (j+1) n_out).
    overlap = np.minimum((i + 1) * n_in, (j + 1) * n_out) - np.maximum(i * n_in, j * n_out)
    return np.clip(overlap, 0, None) / n_in


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """Downsample images to ``size x size`` by exact area averaging, with the same bytes on every CPU.

    ``y[n] = R_H @ x[n] @ R_W^T`` (per channel) with ``R = area_weights(...)``; see the module
    docstring. Constant images stay constant and the per-image mean is preserved.

    The result does not depend on the machine. A BLAS matmul would pick its kernel (and so its
    summation order) by CPU, and the prepared data, with every DVC stage after it, would then differ
    in the last bits between an AVX-512 Intel and an AMD machine. Instead ``R`` is applied in its exact
    integer form ``O = n_in * R`` (overlaps in units of ``1 / size`` pixel) as elementwise
    multiply-adds in a fixed order, and divided once by ``H * W`` at the end:

    * integer images (uint8 MNIST, Fashion-MNIST, CIFAR, digits) are summed in int64, which is exact,
      so the output is the correctly rounded float64 mean, rounded once more to float32;
    * float images (e.g. CIFAR's float32 luma) are summed in float64 with the same fixed order: plain
      IEEE operations on each element, so identical everywhere and within float64 rounding of exact.

    Args:
      x: images ``[N, H, W]`` or ``[N, H, W, C]``, any real dtype.
      size: output side, ``1 <= size <= min(H, W)``. ``size == H == W`` returns the input
        (as floating point) unchanged.

    Returns:
      ``[N, size, size]`` or ``[N, size, size, C]``: float64 for float64 input, else float32.

    Raises:
      ValueError: on a wrong rank or a size outside ``1..min(H, W)``.
      TypeError: if ``size`` is not an int.
    """
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"resize_images expects images [N, H, W] or [N, H, W, C], got shape {x.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    h, w = x.shape[1], x.shape[2]
    if not 1 <= size <= min(h, w):
        raise ValueError(
            f"size must be in 1..{min(h, w)} for {h}x{w} images (area averaging only downsamples), got {size}"
        )
    dtype = np.dtype(np.float64 if x.dtype == np.float64 else np.float32)
    if size == h == w:
        return x.astype(dtype, copy=True)
    acc = np.dtype(np.int64 if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_ else np.float64)
    o_h = np.rint(area_weights(h, size) * h).astype(np.int64)  # exact integers (overlap counts)
    o_w = np.rint(area_weights(w, size) * w).astype(np.int64)
    out = np.empty((x.shape[0], size, size, *x.shape[3:]), dtype=dtype)
    # Chunks of ~8 MiB of accumulator: a whole-dataset int64 copy of MNIST is 440 MB.
    chunk = max(1, _RESIZE_CHUNK_BYTES // (h * w * acc.itemsize * (x.shape[3] if x.ndim == 4 else 1)))
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk]
        rows = _weighted_sum_axis(block, o_h, axis=1, acc=acc)  # [n, size, W, ...]
        both = _weighted_sum_axis(rows, o_w, axis=2, acc=acc)  # [n, size, size, ...]
        out[start : start + chunk] = both / np.float64(h * w)  # one rounding (int64 -> float64 exact)
    return out


def _weighted_sum_axis(x: np.ndarray, weights: np.ndarray, *, axis: int, acc: np.dtype) -> np.ndarray:
    """``sum_j weights[i, j] * x.take(j, axis)`` for each ``i``, as elementwise ops in increasing ``j``.

    No BLAS and no reduction kernel, whose order could depend on the CPU: each output element is
    the same sequence of IEEE (or exact integer) multiply-adds on every machine.
    """
    n_out = weights.shape[0]
    shape = list(x.shape)
    shape[axis] = n_out
    out = np.zeros(shape, dtype=acc)
    index = [slice(None)] * x.ndim
    for i in range(n_out):
        index[axis] = i
        target = out[tuple(index)]
        for j in np.flatnonzero(weights[i]):
            src = [slice(None)] * x.ndim
            src[axis] = int(j)
            target += x[tuple(src)].astype(acc) * acc.type(weights[i, j])
    return out


def _check_xy(x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")


def split_train_test(
    x: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out ``round(test_fraction * N)`` examples, chosen by a seeded permutation.

    Args:
      x: inputs ``[N, ...]``.
      y: labels ``[N]``.
      test_fraction: held-out fraction, in (0, 1).
      seed: seed of ``np.random.default_rng``; the same seed gives the same split.

    Returns:
      ``(x_train, y_train, x_test, y_test)``, each in permuted order.

    Raises:
      ValueError: if lengths differ, ``test_fraction`` is outside (0, 1), or either side of the
        split would be empty.
    """
    _check_xy(x, y)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(x)
    n_test = round(n * test_fraction)
    if not 0 < n_test < n:
        raise ValueError(
            f"test_fraction={test_fraction} of {n} examples leaves {n_test} test and"
            f" {n - n_test} train examples; both must be non-empty"
        )
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def subsample(x: np.ndarray, y: np.ndarray, *, max_examples: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``max_examples`` examples, chosen uniformly without replacement (seeded).

    Args:
      x: inputs ``[N, ...]``.
      y: labels ``[N]``.
      max_examples: how many to keep; ``None`` or ``>= N`` keeps everything.
      seed: seed of ``np.random.default_rng``.

    Returns:
      ``(x, y)`` restricted to the chosen examples, in their original order.

    Raises:
      ValueError: if lengths differ or ``max_examples < 1``.
    """
    _check_xy(x, y)
    if max_examples is None or max_examples >= len(x):
        return x, y
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
    keep = np.sort(np.random.default_rng(seed).choice(len(x), size=max_examples, replace=False))
    return x[keep], y[keep]


def pad_images(x: np.ndarray, size: int) -> np.ndarray:
    """Centre ``[N, H, W, ...]`` images in a ``size x size`` frame of zeros.

    The one way this package enlarges images: e.g. MNIST 28x28 -> 32x32 (2 pixels each side), the
    input size of LeNet-5 (LeCun et al. 1998), whose background is 0 like MNIST's. ``size - H`` and
    ``size - W`` must be even so the image stays centred.

    Args:
      x: images ``[N, H, W]`` or ``[N, H, W, C]``.
      size: output side, ``>= max(H, W)``, with ``size - H`` and ``size - W`` even.

    Returns:
      ``[N, size, size, ...]`` of ``x.dtype``; ``x`` itself when already ``size x size``.

    Raises:
      ValueError: on a wrong rank, a smaller size, or an odd margin.
    """
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"pad_images expects images [N, H, W] or [N, H, W, C], got shape {x.shape}")
    h, w = x.shape[1], x.shape[2]
    if size < max(h, w) or (size - h) % 2 or (size - w) % 2:
        raise ValueError(f"cannot centre {h}x{w} images in {size}x{size}: size must be >= both sides by even margins")
    if size == h == w:
        return x
    top, left = (size - h) // 2, (size - w) // 2
    pad = [(0, 0), (top, size - h - top), (left, size - w - left)] + [(0, 0)] * (x.ndim - 3)
    return np.pad(x, pad)
