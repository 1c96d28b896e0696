"""MNIST as pixel sequences: each 28×28 image is 784 intensities (0–255) in raster order, the
task of autoregressive pixel prediction with a 256-way softmax per pixel.

The shipped file holds MNIST's 10,000 test-set images (``performers/data/images/mnist``, see
its SOURCE.md). :func:`load_mnist` splits them by a fixed permutation (``torch.randperm`` seeded
with :data:`SPLIT_SEED`): 9,000 train, 1,000 test (the images are distinct, so none occurs in
both). A sequence is
``[BOS, p_0, …, p_783]`` with ``BOS = 256`` (vocabulary 257): a causal model reads the start
token and predicts every pixel, so all 784 are scored. Bits per dimension: the mean negative
log-likelihood per pixel in bits (a model that spreads its probability evenly over the 256
levels scores exactly 8).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from performers.utils import shipped_data

__all__ = ["BOS_ID", "PIXEL_LEVELS", "PixelSequences", "bits_per_dimension", "load_mnist", "pixel_batches"]

PIXEL_LEVELS = 256
BOS_ID = PIXEL_LEVELS  # the start token; vocabulary = PIXEL_LEVELS + 1
TRAIN_IMAGES = 9000
SPLIT_SEED = 0  # the permutation that splits the images (torch.randperm with this seed)
IMAGE_SHAPE = (28, 28)


def load_mnist(path: str | Path | None = None, *, train_images: int = TRAIN_IMAGES) -> tuple[Tensor, Tensor]:
    """``(train, test)`` uint8 images ``(N, 28, 28)``: ``train_images`` of them and the rest, split by
    a fixed permutation (the same on every machine).

    ``path`` defaults to the shipped ``mnist_test10k.npz``; any ``.npz`` with one uint8 array
    ``data`` of shape ``(N, 28, 28)`` works.

    Raises:
        ValueError: the file is not such an archive (the message names the file and the problem),
            or the split leaves no test image.
    """
    path = shipped_data("images", "mnist", "mnist_test10k.npz") if path is None else Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "data" not in archive.files:
                raise ValueError(f"{path}: no array named 'data' (arrays: {archive.files})")
            data = archive["data"]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        if isinstance(error, ValueError) and str(path) in str(error):
            raise
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from None
    if data.dtype != np.uint8 or data.ndim != 3 or data.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{path}: 'data' must be uint8 (N, 28, 28), got {data.dtype} {data.shape}")
    if not 0 < train_images < len(data):
        raise ValueError(
            f"train_images must be in [1, {len(data) - 1}] for {len(data)} images, got {train_images}"
        )
    images = torch.from_numpy(np.ascontiguousarray(data))
    # A fixed permutation, not the file's order: MNIST's test set puts its cleaner writers first
    # and its harder ones last, so a cut by index would test on one kind of writer.
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    return images[order[:train_images]].clone(), images[order[train_images:]].clone()


def _sequence(image: Tensor) -> Tensor:
    return torch.cat([torch.tensor([BOS_ID]), image.reshape(-1).long()])


class PixelSequences:
    """Training examples (:class:`~performers.training.data.ExampleSource`): image ``i`` as
    ``input_ids = labels = [BOS, pixels…]`` ``(1, 785)`` (the trainer shifts causal labels; the
    start token is never a target). No randomness: ``streams`` is unused."""

    def __init__(self, images: Tensor) -> None:
        if images.dim() != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def example(self, index: int, streams=None) -> dict[str, Tensor]:
        ids = _sequence(self.images[index])[None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def collate(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        return {key: torch.cat([e[key] for e in examples]) for key in examples[0]}


def pixel_batches(images: Tensor, batch_size: int = 50) -> Iterator[dict[str, Tensor]]:
    """The evaluation batches of ``images`` in order (every image once), as :class:`PixelSequences`."""
    source = PixelSequences(images)
    for start in range(0, len(source), batch_size):
        yield source.collate([source.example(i) for i in range(start, min(start + batch_size, len(source)))])


def bits_per_dimension(mean_nll_nats: float | Tensor) -> float:
    """Mean negative log-likelihood per pixel in nats → bits per dimension (÷ ln 2)."""
    return float(mean_nll_nats) / math.log(2)
