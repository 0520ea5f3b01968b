"""Prepared variants: names like ``mnist_28`` or ``cifar10_jpeg_gray_8``, and the arrays they hold.

A *prepared name* is ``<dataset>[_gray][_<size>]``:

* ``<dataset>`` is a registered dataset (``components.data.DATASETS``);
* ``_gray`` (RGB datasets only: ``cifar10``, ``cifar10_jpeg``) converts to BT.601 luma;
* ``_<size>`` (image datasets only) fixes the square side; without it the side is the
  ``image_size`` the caller passes (``params.data.image_size``). Sizes are ``1 ..`` the native side
  by exact area averaging, plus 32 for MNIST and Fashion-MNIST by centred zero-padding (LeNet-5's
  input); nothing is interpolated upwards.

The name is also the file stem the prepare_data stage writes (``data/prepared/<name>.npz``) and the
key of its manifest, so ``load_prepared(root, "mnist_28")`` finds it. What each kind holds:

=========  ============================================================================
kind       arrays
=========  ============================================================================
image      ``x_train`` float32 ``[N, S, S, C]`` in [0, 1], ``y_train`` int32 ``[N]``,
           ``x_test``, ``y_test`` likewise (``C`` = 1, or 3 for RGB CIFAR-10)
sequence   ``x_train`` float32 ``[N, 40]`` (MNIST-1D signals as stored), ``y_train`` int32,
           ``x_test``, ``y_test``
text       ``train_tokens``, ``val_tokens``, ``test_tokens`` int32 (indices into ``vocab``),
           ``vocab`` int32 ``[V]`` code points (see ``components.data.text``)
=========  ============================================================================

Randomness, all derived from the one params ``seed`` through independent streams: the held-out
test split of datasets without one (digits), the shuffle of class-grouped sources (the CIFAR-10
JPEG copy; train and test each), and the ``max_train_examples`` subsample. Variants of one dataset
at different sizes therefore hold the same examples in the same order.

Example:
  >>> parse_variant("cifar10_jpeg_gray_8", image_size=28)
  Variant(name='cifar10_jpeg_gray_8', dataset='cifar10_jpeg', image_size=8, grayscale=True)
  >>> parse_variant("mnist", image_size=8).image_size
  8
"""

import dataclasses
import re

import numpy as np

from components.data import cifar, mnist1d, text
from components.data.decode import (
    decode_digits_csv,
    decode_idx,
    pad_images,
    resize_images,
    split_train_test,
    subsample,
)
from components.data.sources import DATASETS, DatasetSpec, get_dataset

__all__ = [
    "Decoded",
    "Variant",
    "build_arrays",
    "build_variant",
    "decode_dataset",
    "parse_variant",
]

# Tags that derive independent random streams from the one params seed.
_SPLIT_STREAM = 1
_SUBSAMPLE_STREAM = 2
_SHUFFLE_TRAIN_STREAM = 3
_SHUFFLE_TEST_STREAM = 4

_GRAY = "_gray"
_SIZE_SUFFIX = re.compile(r"^(?P<base>.+)_(?P<size>[1-9][0-9]*)$")
_GRAMMAR = "<dataset>[_gray][_<size>]"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One prepared variant of a dataset.

    Attributes:
      name: the prepared name (file stem and manifest key).
      dataset: the registered dataset it is built from.
      image_size: square side of its images; ``None`` for sequence and text datasets.
      grayscale: RGB converted to luma.
    """

    name: str
    dataset: str
    image_size: int | None
    grayscale: bool


def _name_error(name: str, why: str) -> ValueError:
    return ValueError(
        f"bad prepared dataset name {name!r}: {why}. Expected {_GRAMMAR} with <dataset> one of {sorted(DATASETS)}"
    )


def parse_variant(name: str, *, image_size: int | None = None) -> Variant:
    """Parse a prepared name (see the module docstring) and check that the variant exists.

    Args:
      name: e.g. ``"mnist"``, ``"mnist_28"``, ``"cifar10_jpeg_gray_8"``, ``"tiny_shakespeare"``.
      image_size: the side of image datasets named without ``_<size>`` (``params.data.image_size``).

    Returns:
      The :class:`Variant`.

    Raises:
      ValueError: for an unknown dataset, ``_gray`` on a gray dataset, a suffix on a non-image
        dataset, or a size the dataset cannot be prepared at (the message lists the valid ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"a prepared dataset name must be a str, got {type(name).__name__}")
    base, size = name, None
    if base not in DATASETS and (m := _SIZE_SUFFIX.match(base)):
        base, size = m["base"], int(m["size"])
    gray = base not in DATASETS and base.endswith(_GRAY)
    if gray:
        base = base[: -len(_GRAY)]
    if base not in DATASETS:
        raise _name_error(name, f"no dataset {base!r}")
    spec = DATASETS[base]
    if spec.kind != "image":
        if name != base:
            raise _name_error(name, f"{base!r} is a {spec.kind} dataset; only image datasets take _gray or _<size>")
        return Variant(name, base, None, False)
    if gray and spec.channels != 3:
        raise _name_error(name, f"{base!r} is already single-channel; _gray applies to RGB datasets only")
    if size is None:
        if image_size is None:
            raise ValueError(f"{name!r} names no size: pass image_size (params.data.image_size) or use {name}_<size>")
        size = image_size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"image_size must be an int, got {type(size).__name__}")
    if size not in spec.image_sizes:
        raise ValueError(_size_message(spec, int(size), name))
    return Variant(name, base, int(size), gray)


def _size_message(spec: DatasetSpec, size: int, name: str) -> str:
    native = spec.image_size
    pad = f", or {spec.padded_size} (zero-padded)" if spec.padded_size else ""
    return (
        f"image_size={size} is not available for {spec.name!r} ({name!r}): its native images are"
        f" {native}x{native}; area averaging only downsamples, so use a size in 1..{native}{pad}"
    )


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A dataset decoded from its source files, before any seeded step or resizing.

    Attributes:
      spec: the dataset.
      x_train, y_train, x_test, y_test: as decoded (uint8 images at native size, float64 MNIST-1D
        signals); ``x_test``/``y_test`` are ``None`` without a test split. ``None`` for text.
      text: the corpus (text datasets only).
    """

    spec: DatasetSpec
    x_train: np.ndarray | None = None
    y_train: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    text: str | None = None


def _check_images(spec: DatasetSpec, x: np.ndarray, y: np.ndarray, what: str) -> None:
    side = spec.image_size
    expected = (side, side) if spec.channels == 1 else (side, side, spec.channels)
    if x.shape[1:] != expected:
        raise ValueError(f"{spec.name} {what}: expected images [N, {', '.join(map(str, expected))}], got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{spec.name} {what}: {len(x)} images but labels of shape {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= spec.num_classes):
        raise ValueError(f"{spec.name}: labels must lie in 0..{spec.num_classes - 1}, got {y.min()}..{y.max()}")


def decode_dataset(name: str, files: dict[str, bytes]) -> Decoded:
    """Decode a dataset's verified source files (deterministic; no seed involved).

    Args:
      name: a registered dataset.
      files: logical file name -> bytes, for every file of the dataset.

    Returns:
      The :class:`Decoded` arrays (or text).

    Raises:
      ValueError: for an unknown dataset, a missing file, or undecodable data.
    """
    spec = get_dataset(name)
    missing = [f for f in spec.file_names if f not in files]
    if missing:
        raise ValueError(f"{name}: missing source files {missing}; expected all of {list(spec.file_names)}")
    x_test = y_test = None
    if spec.format == "idx":
        assert spec.train_labels is not None  # guaranteed by DatasetSpec.__post_init__
        x_train, y_train = decode_idx(files[spec.train_images]), decode_idx(files[spec.train_labels])
        if spec.has_test_split:
            x_test, y_test = decode_idx(files[spec.test_images]), decode_idx(files[spec.test_labels])
    elif spec.format == "digits_csv":
        x_train, y_train = decode_digits_csv(files[spec.train_images])
    elif spec.format == "cifar10_binary":
        x_train, y_train, x_test, y_test = cifar.decode_cifar10_binary(files[spec.files[0].name])
    elif spec.format == "cifar10_jpeg":
        x_train, y_train, x_test, y_test = cifar.decode_cifar10_jpeg(files)
    elif spec.format == "mnist1d":
        x_train, y_train, x_test, y_test = mnist1d.decode_mnist1d(files[spec.files[0].name])
        return Decoded(spec, x_train, y_train, x_test, y_test)
    elif spec.format == "text":
        return Decoded(spec, text=text.decode_text(files[spec.files[0].name]))
    else:  # pragma: no cover - DatasetFormat is a closed Literal checked by DatasetSpec
        raise ValueError(f"unknown dataset format {spec.format!r}")
    _check_images(spec, x_train, y_train, "train")
    if x_test is not None:
        _check_images(spec, x_test, y_test, "test")
    return Decoded(spec, x_train, y_train, x_test, y_test)


def _derive_seed(seed: int, stream: int) -> int:
    """An independent seed for one use (``stream``) of the params seed."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0])


def _to_model_images(x: np.ndarray, spec: DatasetSpec, size: int, grayscale: bool) -> np.ndarray:
    if grayscale:
        x = cifar.to_grayscale(x)  # float32 [N, H, W], same 0..pixel_max scale
    # Resize first (it is linear), so the scaling runs on the small output.
    out = resize_images(x, min(size, spec.image_size))  # float32
    out /= np.float32(spec.pixel_max)
    np.clip(out, 0.0, 1.0, out=out)  # weights sum to 1 up to rounding
    if out.ndim == 3:
        out = out[..., None]
    return pad_images(out, size) if size > spec.image_size else out


def _labelled_splits(
    d: Decoded, *, test_fraction: float, max_train_examples: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test examples after the seeded steps: held-out split, shuffle, subsample (in that order)."""
    if d.x_test is None:
        x_train, y_train, x_test, y_test = split_train_test(
            d.x_train, d.y_train, test_fraction=test_fraction, seed=_derive_seed(seed, _SPLIT_STREAM)
        )
    else:
        x_train, y_train, x_test, y_test = d.x_train, d.y_train, d.x_test, d.y_test
    if d.spec.grouped_by_class:
        perm = np.random.default_rng(_derive_seed(seed, _SHUFFLE_TRAIN_STREAM)).permutation(len(x_train))
        x_train, y_train = x_train[perm], y_train[perm]
        perm = np.random.default_rng(_derive_seed(seed, _SHUFFLE_TEST_STREAM)).permutation(len(x_test))
        x_test, y_test = x_test[perm], y_test[perm]
    x_train, y_train = subsample(
        x_train, y_train, max_examples=max_train_examples, seed=_derive_seed(seed, _SUBSAMPLE_STREAM)
    )
    return x_train, y_train, x_test, y_test


def build_variant(
    variant: Variant,
    decoded: Decoded,
    *,
    test_fraction: float,
    max_train_examples: int | None,
    text_split: tuple[float, float, float],
    seed: int,
) -> dict[str, np.ndarray]:
    """The arrays of one prepared variant (see the module docstring for what each kind holds).

    Args:
      variant: from :func:`parse_variant`.
      decoded: :func:`decode_dataset` of ``variant.dataset``.
      test_fraction: held-out fraction for labelled datasets without a test split, in (0, 1).
      max_train_examples: cap on training examples of labelled datasets (seeded; the test split is
        kept whole), or ``None``; text corpora are never cut.
      text_split: ``(train, val, test)`` fractions of a text corpus, contiguous in that order.
      seed: the experiment seed.

    Returns:
      name -> array, ready for ``np.savez``.

    Raises:
      ValueError: on mismatched arguments or bad split parameters.
    """
    spec = decoded.spec
    if spec.name != variant.dataset:
        raise ValueError(f"variant {variant.name!r} is built from {variant.dataset!r}, got decoded {spec.name!r}")
    if spec.kind == "text":
        assert decoded.text is not None  # decode_dataset sets it for text datasets
        vocab = text.build_vocab(decoded.text)
        train, val, test = text.split_tokens(text.encode_text(decoded.text, vocab), text_split)
        return {"train_tokens": train, "val_tokens": val, "test_tokens": test, "vocab": vocab}
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if max_train_examples is not None and max_train_examples < 1:
        raise ValueError(f"max_train_examples must be >= 1 or None, got {max_train_examples}")
    x_train, y_train, x_test, y_test = _labelled_splits(
        decoded, test_fraction=test_fraction, max_train_examples=max_train_examples, seed=seed
    )
    if spec.kind == "sequence":
        x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    else:
        assert variant.image_size is not None  # parse_variant sets it for image datasets
        x_train = _to_model_images(x_train, spec, variant.image_size, variant.grayscale)
        x_test = _to_model_images(x_test, spec, variant.image_size, variant.grayscale)
    return {
        "x_train": x_train,
        "y_train": y_train.astype(np.int32),
        "x_test": x_test,
        "y_test": y_test.astype(np.int32),
    }


def build_arrays(
    name: str,
    files: dict[str, bytes],
    *,
    image_size: int,
    test_fraction: float,
    max_train_examples: int | None,
    seed: int,
    grayscale: bool = False,
) -> dict[str, np.ndarray]:
    """Decode an image dataset's verified source files into model-ready arrays.

    Steps: decode; hold out a test split (``test_fraction``, seeded) if the dataset has none;
    shuffle class-grouped sources (seeded); keep at most ``max_train_examples`` training examples
    (seeded; the test split is kept whole); optionally convert RGB to luma; area-downsample to
    ``image_size`` (or zero-pad where :attr:`DatasetSpec.padded_size` allows); scale pixels to
    [0, 1]; add a channel axis to gray images. Equivalent to :func:`decode_dataset` then
    :func:`build_variant`.

    Args:
      name: a registered image dataset (``components.data.DATASETS``).
      files: logical file name -> bytes, for every file of the dataset (already verified).
      image_size: output side (see :attr:`DatasetSpec.image_sizes`).
      test_fraction: held-out fraction for datasets without a test split, in (0, 1).
      max_train_examples: cap on training examples, or ``None`` for all.
      seed: the experiment seed.
      grayscale: convert RGB images to luma (RGB datasets only).

    Returns:
      ``{"x_train", "y_train", "x_test", "y_test"}``: images float32 ``[N, S, S, C]`` in [0, 1],
      labels int32 ``[N]``.

    Raises:
      ValueError: for an unknown or non-image dataset, a missing file, an unavailable
        ``image_size``, bad split parameters, or undecodable data.

    Example:
      >>> arrays = build_arrays("digits", {"digits.csv.gz": raw}, image_size=8,
      ...                       test_fraction=0.2, max_train_examples=None, seed=0)  # doctest: +SKIP
      >>> arrays["x_train"].shape  # doctest: +SKIP
      (1438, 8, 8, 1)
    """
    spec = get_dataset(name)
    if spec.kind != "image":
        raise ValueError(f"build_arrays builds image datasets; {name!r} is a {spec.kind} dataset: use build_variant")
    variant = parse_variant(f"{name}{_GRAY if grayscale else ''}", image_size=image_size)
    if not 0.0 < test_fraction < 1.0:  # fail before decoding
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return build_variant(
        variant,
        decode_dataset(name, files),
        test_fraction=test_fraction,
        max_train_examples=max_train_examples,
        text_split=(0.9, 0.05, 0.05),
        seed=seed,
    )
