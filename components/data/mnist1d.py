"""Decode MNIST-1D (Greydanus 2020): the upstream pickle or the mirror's npz, to the same arrays.

The canonical file, ``mnist1d_data.pkl``, is a pickled dict of numpy arrays (``x``, ``y``,
``x_test``, ``y_test``, ``t``, ``templates``). A pickle can run arbitrary code when loaded, so it is
read with an unpickler that resolves only the few numpy globals an array needs (and only after its
sha256 was verified by the fetch step); anything else is refused. The mirror holds the same arrays
as an ``.npz`` (read with ``allow_pickle=False``). Which of the two ``raw`` is, is told by its magic
bytes (zip vs pickle).

Shapes: ``x`` float64 ``[4000, 40]``, ``y`` int64 ``[4000]``, ``x_test`` ``[1000, 40]``,
``y_test`` ``[1000]``: length-40 signals, 10 classes.
"""

import codecs
import io
import pickle
import zipfile

import numpy as np

__all__ = ["decode_mnist1d"]

_ZIP_MAGIC = b"PK"
_PICKLE_PROTO = 0x80
_KEYS = ("x", "y", "x_test", "y_test")


def _numpy_globals() -> dict[tuple[str, str], object]:
    # The callables numpy's own __reduce__ / __reduce_ex__ emit (protocols 2..5), under their current
    # and pre-2.0 module names, plus the one protocol 2 uses to spell bytes (codecs.encode of a str).
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], object] = {}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, numbers, strings, bytes and numpy arrays; refuses everything else."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"MNIST-1D pickle refers to {module}.{name}, which is not a numpy array part; refusing"
                " to load it (only numpy arrays and builtin containers are allowed)"
            ) from None


def _arrays_from_pickle(raw: bytes) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"MNIST-1D pickle does not load: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"MNIST-1D pickle holds a {type(obj).__name__}, expected a dict of arrays")
    return obj


def _arrays_from_npz(raw: bytes) -> dict:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"MNIST-1D npz does not load: {e}") from e


def decode_mnist1d(raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode MNIST-1D from the upstream pickle or the mirror's npz.

    Args:
      raw: the bytes of ``mnist1d_data.pkl`` or of the mirror's ``mnist1d_data.npz``.

    Returns:
      ``(x_train, y_train, x_test, y_test)`` as stored: signals float64 ``[N, L]``, labels int64
      ``[N]`` in 0..9 (4000 / 1000 examples, ``L = 40`` for the real file).

    Raises:
      ValueError: if ``raw`` is neither container, lacks ``x, y, x_test, y_test``, the pickle refers
        to anything but numpy arrays, or the shapes do not agree.
    """
    raw = bytes(raw)
    if raw[:2] == _ZIP_MAGIC:
        arrays = _arrays_from_npz(raw)
    elif raw[:1] and raw[0] == _PICKLE_PROTO:
        arrays = _arrays_from_pickle(raw)
    else:
        raise ValueError(
            f"MNIST-1D data starts with {raw[:4].hex() or 'nothing'}: expected an npz (zip, 504b...)"
            " or a pickle (80..); the file is truncated or corrupt"
        )
    missing = [k for k in _KEYS if k not in arrays]
    if missing:
        raise ValueError(f"MNIST-1D data lacks {missing}; it holds {sorted(arrays)}")
    x, y, x_test, y_test = (np.asarray(arrays[k]) for k in _KEYS)
    for xs, ys, split in ((x, y, "train"), (x_test, y_test, "test")):
        if xs.ndim != 2 or ys.ndim != 1 or len(xs) != len(ys):
            raise ValueError(f"MNIST-1D {split}: expected x [N, L] and y [N], got {xs.shape} and {ys.shape}")
        if len(ys) and (ys.min() < 0 or ys.max() > 9):
            raise ValueError(f"MNIST-1D {split}: labels must lie in 0..9, got {ys.min()}..{ys.max()}")
    if x.shape[1] != x_test.shape[1]:
        raise ValueError(f"MNIST-1D: train signals have length {x.shape[1]}, test {x_test.shape[1]}")
    return x, y, x_test, y_test
