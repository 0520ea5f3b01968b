"""prepare_data's params section."""

import math

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from components.stages.params.common import PreparedName, _Section

__all__ = ["DataParams"]


class DataParams(_Section):
    """prepare_data: which prepared datasets to write and how.

    Each entry of ``datasets`` is a prepared name ``<dataset>[_gray][_<size>]`` and becomes
    ``data/prepared/<name>.npz``: ``mnist`` (at ``image_size``), ``mnist_28``, ``mnist_32``
    (zero-padded), ``cifar10_jpeg_gray_8``, ``mnist1d``, ``tiny_shakespeare``. Several variants of
    one dataset are prepared from one decoding, with the same examples in the same order.
    """

    datasets: list[PreparedName] = Field(
        default=["mnist", "fashion_mnist", "digits"],
        min_length=1,
        description="prepared names <dataset>[_gray][_<size>]; one data/prepared/<name>.npz each",
    )
    image_size: PositiveInt = Field(
        default=8, le=28, description="square side of image datasets named without _<size> (area downsampling)"
    )
    test_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="held-out fraction for datasets without a test split"
    )
    max_train_examples: PositiveInt | None = Field(
        default=None, description="keep at most this many training examples per labelled dataset (seeded)"
    )
    text_split: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(
        default=(0.9, 0.05, 0.05),
        description="train/validation/test fractions of a text corpus, as contiguous ranges in that order",
    )

    @model_validator(mode="after")
    def _unique(self):
        from components.data import parse_variant  # noqa: PLC0415

        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets must be unique, got {self.datasets}")
        for name in self.datasets:
            try:
                parse_variant(name, image_size=self.image_size)
            except ValueError as err:
                raise ValueError(
                    f"data.datasets: {err}; set data.image_size accordingly, or name the size: {name}_<size>"
                ) from None
        if not math.isclose(sum(self.text_split), 1.0, abs_tol=1e-9):
            raise ValueError(f"text_split fractions must sum to 1, got {list(self.text_split)}")
        return self

    def prepared_name(self, name: str) -> str | None:
        """The entry of ``datasets`` that prepares the same variant as ``name``, or ``None``.

        ``mnist_8`` and ``mnist`` (with ``image_size: 8``) are one variant, written once as
        ``data/prepared/mnist.npz``; tasks name their data with explicit sizes and find it here.
        """
        from components.data import parse_variant  # noqa: PLC0415

        want = parse_variant(name, image_size=self.image_size)
        for entry in self.datasets:
            got = parse_variant(entry, image_size=self.image_size)
            if (got.dataset, got.image_size, got.grayscale) == (want.dataset, want.image_size, want.grayscale):
                return entry
        return None

    def require(self, name: str, where: str) -> str:
        """:meth:`prepared_name`, or a ValueError that says what to add to ``data.datasets``."""
        entry = self.prepared_name(name)
        if entry is None:
            raise ValueError(
                f"{where} needs prepared dataset {name!r}, which data.datasets does not prepare"
                f" ({list(self.datasets)}): add {name!r} to data.datasets"
            )
        return entry
