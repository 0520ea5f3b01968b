"""Datasets: where they come from (URLs, mirror layout, sha256s) and how to decode them.

Pure library: numpy and the standard library only, no file I/O and no network. Fetching and
verifying files is done by ``components.stages.fetch``; ``components.stages.prepare_data`` writes
the arrays that :func:`build_arrays` returns.
"""

from components.data.decode import (
    area_weights,
    build_arrays,
    decode_digits_csv,
    decode_idx,
    resize_images,
    split_train_test,
    subsample,
)
from components.data.sources import (
    DATASETS,
    DatasetFormat,
    DatasetSpec,
    MirrorPart,
    SourceFile,
    get_dataset,
)

__all__ = [
    "DATASETS",
    "DatasetFormat",
    "DatasetSpec",
    "MirrorPart",
    "SourceFile",
    "area_weights",
    "build_arrays",
    "decode_digits_csv",
    "decode_idx",
    "get_dataset",
    "resize_images",
    "split_train_test",
    "subsample",
]
