"""The records that describe a dataset: its source files, their pinned sha256s, how to decode it.

A :class:`DatasetSpec` lists the :class:`SourceFile` s of one dataset. A source file can be
obtained in up to two ways, each with its own pinned checksum:

* **download** from ``urls`` (the real upstream locations); the downloaded bytes must hash to
  ``url_sha256``. A file with no ``urls`` is **mirror-only**: it has no canonical download (the
  CIFAR-10 JPEG copy, which is a re-packing of a third-party export, not an upstream file).
* **mirror**: a local folder (``L2O_DATA_MIRROR``, by default ``../shared/datasets``) holds the file
  as one or more ``mirror_parts``; each part must hash to its own pinned sha256 and their
  concatenation, the whole file, to ``sha256``.

The two copies are not always byte-identical (see each dataset in ``components.data.sources``):
where they share a decompressed payload its hash is pinned as ``content_sha256``, which names the
data independently of where it came from; where the containers differ (MNIST-1D: an upstream
pickle, a mirrored npz) the decoder reads both and yields the same arrays.

Pure data: no file I/O and no network.
"""

import dataclasses
from typing import Literal

__all__ = [
    "DatasetFormat",
    "DatasetKind",
    "DatasetSpec",
    "MirrorPart",
    "SourceFile",
]

# How the source files are laid out (which decoder reads them).
DatasetFormat = Literal["idx", "digits_csv", "cifar10_binary", "cifar10_jpeg", "mnist1d", "text"]
# What the prepared arrays are: labelled images, labelled 1-D signals, or a character corpus.
DatasetKind = Literal["image", "sequence", "text"]

_KIND: dict[str, DatasetKind] = {
    "idx": "image",
    "digits_csv": "image",
    "cifar10_binary": "image",
    "cifar10_jpeg": "image",
    "mnist1d": "sequence",
    "text": "text",
}

_HEX = frozenset("0123456789abcdef")


def _check_sha256(value: str, what: str) -> None:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise ValueError(f"{what}: expected a 64-character lowercase hex sha256, got {value!r}")


@dataclasses.dataclass(frozen=True)
class MirrorPart:
    """One file inside the mirror folder.

    Attributes:
      path: path relative to the mirror root, with ``/`` separators (e.g. ``mnist/x.gz.part00``).
      sha256: pinned sha256 of this part's bytes (as listed in the mirror's ``SHA256SUMS``).
    """

    path: str
    sha256: str

    def __post_init__(self):
        _check_sha256(self.sha256, f"MirrorPart({self.path!r})")
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"MirrorPart path must be relative inside the mirror, got {self.path!r}")


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One logical source file of a dataset.

    Attributes:
      name: logical file name, e.g. ``train-images-idx3-ubyte.gz``.
      urls: canonical download locations, tried in order; empty for a mirror-only file.
      url_sha256: pinned sha256 of the file as served by ``urls`` (``None`` iff mirror-only).
      mirror_parts: the file's pieces in the mirror, in concatenation order.
      sha256: pinned sha256 of the WHOLE mirror file (the concatenated ``mirror_parts``).
      content_sha256: pinned sha256 of the payload both copies share once decompressed (the file
        itself when it is not compressed), or ``None`` when the two copies are different
        containers of the same arrays, or when the file is only ever used whole.
    """

    name: str
    urls: tuple[str, ...]
    url_sha256: str | None
    mirror_parts: tuple[MirrorPart, ...]
    sha256: str
    content_sha256: str | None

    def __post_init__(self):
        if (self.url_sha256 is None) != (not self.urls):
            raise ValueError(
                f"SourceFile {self.name!r} needs at least one download URL and its url_sha256,"
                " or neither (a mirror-only file)"
            )
        if not self.mirror_parts:
            raise ValueError(f"SourceFile {self.name!r} needs at least one mirror part")
        _check_sha256(self.sha256, f"SourceFile({self.name!r}).sha256")
        for field in ("url_sha256", "content_sha256"):
            if getattr(self, field) is not None:
                _check_sha256(getattr(self, field), f"SourceFile({self.name!r}).{field}")

    @property
    def mirror_only(self) -> bool:
        """True when the file has no canonical download (only a mirror can provide it)."""
        return not self.urls


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its source files, which file holds what, and how to decode it.

    Attributes:
      name: registry name (``mnist``, ``cifar10_jpeg``, ``tiny_shakespeare``, ...).
      files: the source files; all must be fetched and verified before decoding.
      format: which decoder reads the files (:data:`DatasetFormat`); it fixes :attr:`kind`.
      num_classes: number of label classes (labels ``0 .. num_classes - 1``); for a text corpus,
        the size of its character vocabulary.
      homepage: where the dataset is described.
      license: the data licence.
      train_images: IDX / digits CSV only: logical name of the file with the training images.
      train_labels: IDX only: logical name of the training-label file.
      test_images: IDX only: logical name of the test-image file.
      test_labels: IDX only: as ``train_labels`` for the test split.
      has_test_split: ``False`` when the dataset ships no test split (images: one is held out with
        ``test_fraction``; text: the corpus is cut into contiguous train/validation/test ranges).
      image_size: native square side in pixels (image datasets), else ``None``.
      channels: image channels at native resolution (1 gray, 3 RGB).
      padded_size: a side larger than ``image_size`` that is defined by centred zero-padding
        (32 for MNIST-like digits: LeNet-5's input), or ``None``; nothing else upsamples.
      pixel_max: value of a full-intensity pixel (255 for 8-bit images, 16 for UCI digits).
      grouped_by_class: the source order is class-major; building shuffles it with the seed.
      exact_copy: ``False`` when the data is not byte-identical to the canonical dataset
        (the CIFAR-10 JPEG copy is a lossy re-encode).
      notes: provenance caveats, recorded in the prepare_data manifest.
      missing_hint: appended to the error raised when a mirror lacks the dataset's files.
    """

    name: str
    files: tuple[SourceFile, ...]
    format: DatasetFormat
    num_classes: int
    homepage: str
    license: str
    train_images: str | None = None
    train_labels: str | None = None
    test_images: str | None = None
    test_labels: str | None = None
    has_test_split: bool = True
    image_size: int | None = None
    channels: int = 1
    padded_size: int | None = None
    pixel_max: int = 255
    grouped_by_class: bool = False
    exact_copy: bool = True
    notes: str = ""
    missing_hint: str = ""

    def __post_init__(self):
        if self.format not in _KIND:
            raise ValueError(f"DatasetSpec {self.name!r}: format {self.format!r} is not one of {sorted(_KIND)}")
        names = [f.name for f in self.files]
        if not names:
            raise ValueError(f"DatasetSpec {self.name!r} needs at least one source file")
        if len(set(names)) != len(names):
            raise ValueError(f"DatasetSpec {self.name!r}: duplicate file names {names}")
        roles = {
            "train_images": self.train_images,
            "train_labels": self.train_labels,
            "test_images": self.test_images,
            "test_labels": self.test_labels,
        }
        for role, fname in roles.items():
            if fname is not None and fname not in names:
                raise ValueError(f"DatasetSpec {self.name!r}: {role}={fname!r} is not one of its files {names}")
        if self.format in ("idx", "digits_csv"):
            if self.train_images is None:
                raise ValueError(f"DatasetSpec {self.name!r}: format {self.format!r} needs train_images")
            if self.has_test_split != (self.test_images is not None):
                raise ValueError(
                    f"DatasetSpec {self.name!r}: has_test_split={self.has_test_split}"
                    f" but test_images={self.test_images!r}"
                )
        if self.format == "idx" and (self.train_labels is None or (self.has_test_split and self.test_labels is None)):
            raise ValueError(f"DatasetSpec {self.name!r}: IDX datasets need separate label files")
        if (self.kind == "image") != (self.image_size is not None):
            raise ValueError(f"DatasetSpec {self.name!r}: image_size must be set exactly for image datasets")
        if self.padded_size is not None and (self.image_size is None or self.padded_size <= self.image_size):
            raise ValueError(
                f"DatasetSpec {self.name!r}: padded_size={self.padded_size} must exceed image_size={self.image_size}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"DatasetSpec {self.name!r}: channels must be 1 or 3, got {self.channels}")

    @property
    def kind(self) -> DatasetKind:
        """``"image"``, ``"sequence"`` (MNIST-1D) or ``"text"``."""
        return _KIND[self.format]

    @property
    def image_sizes(self) -> tuple[int, ...]:
        """Every square side this dataset can be prepared at (empty for non-image datasets).

        ``1 .. image_size`` by exact area averaging, plus ``padded_size`` by zero-padding.
        """
        if self.image_size is None:
            return ()
        sizes = tuple(range(1, self.image_size + 1))
        return sizes + ((self.padded_size,) if self.padded_size is not None else ())

    def file(self, name: str) -> SourceFile:
        """The source file with logical name ``name``.

        Raises:
          KeyError: if the dataset has no such file (the message lists the known ones).
        """
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(f"dataset {self.name!r} has no file {name!r}; files: {self.file_names}")

    @property
    def file_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files)
