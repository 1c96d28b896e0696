"""Image data, and nothing else (like :mod:`performers.proteins` and :mod:`performers.text`): MNIST
shipped with the package, as pixel sequences for autoregressive models. It imports no model and
no training code."""

from performers.images.mnist import (
    BOS_ID,
    PIXEL_LEVELS,
    PixelSequences,
    bits_per_dimension,
    load_mnist,
    pixel_batches,
)

__all__ = ["BOS_ID", "PIXEL_LEVELS", "PixelSequences", "bits_per_dimension", "load_mnist", "pixel_batches"]
