"""Where each dataset comes from: canonical URLs, a local mirror layout, and pinned sha256s.

A :class:`DatasetSpec` lists the :class:`SourceFile` s of one dataset. Every source file can be
obtained in two ways, each with its own pinned checksum:

* **download** from ``urls`` (the real upstream locations); the downloaded bytes must hash to
  ``url_sha256``.
* **mirror**: a local folder (``L2O_DATA_MIRROR``, by default ``../shared/datasets``) holds the file
  as one or more ``mirror_parts``; each part must hash to its own pinned sha256 and their
  concatenation, the whole file, to ``sha256``.

The two copies are not always byte-identical: the mirror re-gzipped MNIST and Fashion-MNIST as
independent gzip members (level 9, mtime 0) split at record boundaries, so the ``.gz`` bytes differ
from upstream while the *decompressed* payload is identical. That payload's hash is pinned too
(``content_sha256``); it names the data independently of where it came from, so the prepared arrays
are the same whichever way the files were obtained. For sklearn digits the mirror file is the
upstream file verbatim (``sha256 == url_sha256``).

This module is pure data: no file I/O and no network (see ``components.stages.fetch`` for that).

Example:
  >>> from components.data import DATASETS
  >>> spec = DATASETS["mnist"]
  >>> spec.file(spec.test_labels).urls[0]
  'https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz'
"""

import dataclasses
from typing import Literal

__all__ = [
    "DATASETS",
    "DatasetFormat",
    "DatasetSpec",
    "MirrorPart",
    "SourceFile",
    "get_dataset",
]

DatasetFormat = Literal["idx", "digits_csv"]

_HEX = frozenset("0123456789abcdef")


def _check_sha256(value: str, what: str) -> None:
    if len(value) != 64 or not set(value) <= _HEX:
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
      urls: canonical download locations, tried in order.
      url_sha256: pinned sha256 of the file as served by ``urls``.
      mirror_parts: the file's pieces in the mirror, in concatenation order.
      sha256: pinned sha256 of the WHOLE mirror file (the concatenated ``mirror_parts``).
      content_sha256: pinned sha256 of the decompressed payload; identical for both copies.
    """

    name: str
    urls: tuple[str, ...]
    url_sha256: str
    mirror_parts: tuple[MirrorPart, ...]
    sha256: str
    content_sha256: str

    def __post_init__(self):
        if not self.urls:
            raise ValueError(f"SourceFile {self.name!r} needs at least one download URL")
        if not self.mirror_parts:
            raise ValueError(f"SourceFile {self.name!r} needs at least one mirror part")
        for field in ("url_sha256", "sha256", "content_sha256"):
            _check_sha256(getattr(self, field), f"SourceFile({self.name!r}).{field}")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its source files, which file holds what, and how to decode it.

    Attributes:
      name: registry name (``mnist``, ``fashion_mnist``, ``digits``).
      files: the source files; all must be fetched and verified before decoding.
      format: ``"idx"`` (separate IDX image/label files) or ``"digits_csv"`` (one CSV holding
        64 pixels then the label per row).
      train_images: logical name of the file with the training images.
      train_labels: logical name of the file with the training labels, or ``None`` when the labels
        live in ``train_images`` (the digits CSV).
      test_images: logical name of the test-image file, ``None`` without a test split.
      test_labels: as ``train_labels`` for the test split.
      has_test_split: ``False`` when the dataset ships no test split (one is then held out with
        ``test_fraction``).
      image_size: native square side in pixels.
      pixel_max: value of a full-intensity pixel (255 for MNIST, 16 for digits).
      num_classes: number of label classes (labels are ``0 .. num_classes - 1``).
      homepage: where the dataset is described.
      license: the data licence.
    """

    name: str
    files: tuple[SourceFile, ...]
    format: DatasetFormat
    train_images: str
    train_labels: str | None
    test_images: str | None
    test_labels: str | None
    has_test_split: bool
    image_size: int
    pixel_max: int
    num_classes: int
    homepage: str
    license: str

    def __post_init__(self):
        names = [f.name for f in self.files]
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
        if self.has_test_split != (self.test_images is not None):
            raise ValueError(
                f"DatasetSpec {self.name!r}: has_test_split={self.has_test_split} but test_images={self.test_images!r}"
            )
        if self.format == "idx" and (self.train_labels is None or (self.has_test_split and self.test_labels is None)):
            raise ValueError(f"DatasetSpec {self.name!r}: IDX datasets need separate label files")

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


def _split_parts(prefix: str, sha256s: list[str]) -> tuple[MirrorPart, ...]:
    return tuple(MirrorPart(f"{prefix}.part{i:02d}", sha) for i, sha in enumerate(sha256s))


# ---------------------------------------------------------------------------------------------
# MNIST (LeCun, Cortes, Burges). Upstream gz checksums are the ones TFDS pins for the GCS copy.
# Mirror: ../shared/datasets/mnist (re-gzipped; see its README for provenance).
_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"

MNIST = DatasetSpec(
    name="mnist",
    files=(
        SourceFile(
            name="train-images-idx3-ubyte.gz",
            urls=(_MNIST_URL + "train-images-idx3-ubyte.gz",),
            url_sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            mirror_parts=_split_parts(
                "mnist/train-images-idx3-ubyte.gz",
                [
                    "0fb7f9ec1ad29ba2fdc3b35110df4a3899ca8e66e01f2fd06b77a79270534663",
                    "e451764f0651253ab7cdb6e5d405b771a860cff4149313b9fda1d76175d8d04e",
                    "401073b6b65518c7253c489c1559d6713a62b671f3f9190229f6ec177e8460de",
                    "0d4a9d1d74ccb74760ef4963d63441e318e56e108eff51d82531dc884b13f374",
                ],
            ),
            sha256="e4ed21d14eb596e2a7a499e1feb06859dabe59574a0fd3ea34e3ffd54e90cc49",
            content_sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        SourceFile(
            name="train-labels-idx1-ubyte.gz",
            urls=(_MNIST_URL + "train-labels-idx1-ubyte.gz",),
            url_sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            mirror_parts=(
                MirrorPart(
                    "mnist/train-labels-idx1-ubyte.gz",
                    "81a978ae83d39ffdba0db3ce2fcaf80a8921e9629e874428996a2b03242d4b2a",
                ),
            ),
            sha256="81a978ae83d39ffdba0db3ce2fcaf80a8921e9629e874428996a2b03242d4b2a",
            content_sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        SourceFile(
            name="t10k-images-idx3-ubyte.gz",
            urls=(_MNIST_URL + "t10k-images-idx3-ubyte.gz",),
            url_sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            mirror_parts=(
                MirrorPart(
                    "mnist/t10k-images-idx3-ubyte.gz",
                    "197e111ae341b0770be9011ac5e622d0e6cd1c640b32eb0de5dc1dd26cc6e182",
                ),
            ),
            sha256="197e111ae341b0770be9011ac5e622d0e6cd1c640b32eb0de5dc1dd26cc6e182",
            content_sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        SourceFile(
            name="t10k-labels-idx1-ubyte.gz",
            urls=(_MNIST_URL + "t10k-labels-idx1-ubyte.gz",),
            url_sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            mirror_parts=(
                MirrorPart(
                    "mnist/t10k-labels-idx1-ubyte.gz",
                    "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
                ),
            ),
            sha256="b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
            content_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ),
    format="idx",
    train_images="train-images-idx3-ubyte.gz",
    train_labels="train-labels-idx1-ubyte.gz",
    test_images="t10k-images-idx3-ubyte.gz",
    test_labels="t10k-labels-idx1-ubyte.gz",
    has_test_split=True,
    image_size=28,
    pixel_max=255,
    num_classes=10,
    homepage="http://yann.lecun.com/exdb/mnist/",
    license="CC BY-SA 3.0",
)

# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (Xiao, Rasul, Vollgraf 2017). Upstream checksums: the official S3 files.
# Mirror: ../shared/datasets/fashion_mnist (from Debian's package, re-gzipped and split).
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    files=(
        SourceFile(
            name="train-images-idx3-ubyte.gz",
            urls=(_FASHION_URL + "train-images-idx3-ubyte.gz",),
            url_sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            mirror_parts=_split_parts(
                "fashion_mnist/train-images-idx3-ubyte.gz",
                [
                    "4798bd55f7498967f4d7b4b04a1994f681d002411db0fe14c61cbba8892a0f78",
                    "0552ccf017f57c3579c6b5d416633f0787fb45edf2597a99319aa99f3852a07d",
                    "a7336b9240c8fec08c267a69e4edda8a09fce75c198389949a63cb8ecc25cf53",
                    "eb705682c0fed5af39b049bcdff717f392c9614fd7aac95e0de1d6636608df95",
                    "fb48793d1a0d61d1db617fc967c3d0d5a23d1f3490c76865b1a31fb9590cedc0",
                    "f06e6151bdcf6658f87b2cae3116f779e5b08d0343883f7812a8b1adb9508977",
                    "2b57645da38fd1cae3318e5db4ffff89092409a0937eb8f0ab376df060b4ec5f",
                    "7a2a1eb928c99bac140619afe5c2708cbcc1ca858f5d393bc35183299ecb154f",
                ],
            ),
            sha256="bd4ca598c617b6bf1de2e09e770e054d9b5d854a0e0ab00200e544f41b162ab5",
            content_sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        SourceFile(
            name="train-labels-idx1-ubyte.gz",
            urls=(_FASHION_URL + "train-labels-idx1-ubyte.gz",),
            url_sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            mirror_parts=(
                MirrorPart(
                    "fashion_mnist/train-labels-idx1-ubyte.gz",
                    "ba2276a91de230dfa74547adc521dde7c79c603d63d5058a1e7e48e7b41d93f7",
                ),
            ),
            sha256="ba2276a91de230dfa74547adc521dde7c79c603d63d5058a1e7e48e7b41d93f7",
            content_sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        SourceFile(
            name="t10k-images-idx3-ubyte.gz",
            urls=(_FASHION_URL + "t10k-images-idx3-ubyte.gz",),
            url_sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            mirror_parts=_split_parts(
                "fashion_mnist/t10k-images-idx3-ubyte.gz",
                [
                    "8f02b2390520d38be9474d714664ab85b581415b02a61881cca160bcca492a6b",
                    "a1d1b46d788c7280749b0e8739d5b94e6f5e59d59c745d42a487e5a31019bdae",
                ],
            ),
            sha256="7540f22c883303dc170370a8e9cd02bb498dcfad956f47f1cd4a9cf46e68f022",
            content_sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        SourceFile(
            name="t10k-labels-idx1-ubyte.gz",
            urls=(_FASHION_URL + "t10k-labels-idx1-ubyte.gz",),
            url_sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            mirror_parts=(
                MirrorPart(
                    "fashion_mnist/t10k-labels-idx1-ubyte.gz",
                    "bad34aa92450454a281e4959ab5a22f03213e21212f4261dadf52e42fa6cd580",
                ),
            ),
            sha256="bad34aa92450454a281e4959ab5a22f03213e21212f4261dadf52e42fa6cd580",
            content_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
    format="idx",
    train_images="train-images-idx3-ubyte.gz",
    train_labels="train-labels-idx1-ubyte.gz",
    test_images="t10k-images-idx3-ubyte.gz",
    test_labels="t10k-labels-idx1-ubyte.gz",
    has_test_split=True,
    image_size=28,
    pixel_max=255,
    num_classes=10,
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    license="MIT",
)

# ---------------------------------------------------------------------------------------------
# UCI "Optical Recognition of Handwritten Digits" as shipped by scikit-learn (load_digits).
# The file has been unchanged across scikit-learn releases; the mirror copy is verbatim.
_DIGITS_URL = "https://raw.githubusercontent.com/scikit-learn/scikit-learn/1.5.2/sklearn/datasets/data/digits.csv.gz"
DIGITS = DatasetSpec(
    name="digits",
    files=(
        SourceFile(
            name="digits.csv.gz",
            urls=(_DIGITS_URL,),
            url_sha256="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
            mirror_parts=(
                MirrorPart(
                    "sklearn_digits/digits.csv.gz",
                    "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
                ),
            ),
            sha256="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
            content_sha256="6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8",
        ),
    ),
    format="digits_csv",
    train_images="digits.csv.gz",
    train_labels=None,
    test_images=None,
    test_labels=None,
    has_test_split=False,
    image_size=8,
    pixel_max=16,
    num_classes=10,
    homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
    license="CC BY 4.0",
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST, DIGITS)}


def get_dataset(name: str) -> DatasetSpec:
    """The registered :class:`DatasetSpec` called ``name``.

    Raises:
      ValueError: for an unknown name; the message lists the registered ones.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None
