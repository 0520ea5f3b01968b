"""Datasets: where they come from (URLs, mirror layout, sha256s), how to decode and prepare them.

Pure library (numpy, jax for the on-device text sampler; Pillow, imported lazily, for the CIFAR-10
JPEG copy): no file I/O and no network. Fetching and verifying files is done by
``components.stages.fetch``; ``components.stages.prepare_data`` writes the arrays that
:func:`build_variant` returns, one file per prepared name (:func:`parse_variant`).

Modules: ``spec`` (the records), ``sources`` (the registry), ``decode`` (IDX, digits CSV, resize,
pad, split), ``cifar``, ``mnist1d``, ``text`` (decoders per format; ``text`` also has the jitted
window sampler), ``prepare`` (prepared names and their arrays).
"""

from components.data.cifar import (
    decode_cifar10_binary,
    decode_cifar10_jpeg,
    jpeg_decoder_version,
    to_grayscale,
)
from components.data.decode import (
    area_weights,
    decode_digits_csv,
    decode_idx,
    pad_images,
    resize_images,
    split_train_test,
    subsample,
)
from components.data.mnist1d import decode_mnist1d
from components.data.prepare import (
    Decoded,
    Variant,
    build_arrays,
    build_variant,
    decode_dataset,
    parse_variant,
)
from components.data.sources import (
    CIFAR10_CLASSES,
    DATASETS,
    DatasetFormat,
    DatasetKind,
    DatasetSpec,
    MirrorPart,
    SourceFile,
    get_dataset,
)
from components.data.text import (
    build_vocab,
    decode_text,
    decode_tokens,
    encode_text,
    sample_windows,
    split_tokens,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DatasetFormat",
    "DatasetKind",
    "DatasetSpec",
    "Decoded",
    "MirrorPart",
    "SourceFile",
    "Variant",
    "area_weights",
    "build_arrays",
    "build_variant",
    "build_vocab",
    "decode_cifar10_binary",
    "decode_cifar10_jpeg",
    "decode_dataset",
    "decode_digits_csv",
    "decode_idx",
    "decode_mnist1d",
    "decode_text",
    "decode_tokens",
    "encode_text",
    "get_dataset",
    "jpeg_decoder_version",
    "pad_images",
    "parse_variant",
    "resize_images",
    "sample_windows",
    "split_tokens",
    "split_train_test",
    "subsample",
    "to_grayscale",
]
