"""MNIST pixel sequences: the shipped images, the 9,000/1,000 split without leakage, the sequence
layout (start token + 784 pixels, every pixel scored), and bits per dimension (a uniform model
over 256 levels costs exactly 8 bits/dim, through the benchmark's own scorer)."""

import hashlib
import math

import numpy as np
import pytest
import torch

from performers.bench.paper_tasks import causal_scores
from performers.images import (
    BOS_ID,
    PIXEL_LEVELS,
    PixelSequences,
    bits_per_dimension,
    load_mnist,
    pixel_batches,
)


def test_shipped_images_split_9000_1000_without_leakage():
    train, test = load_mnist()
    assert train.shape == (9000, 28, 28) and test.shape == (1000, 28, 28)
    assert train.dtype == test.dtype == torch.uint8
    digest = lambda images: {hashlib.sha256(x.numpy().tobytes()).hexdigest() for x in images}
    train_set, test_set = digest(train), digest(test)
    assert len(train_set) == 9000 and len(test_set) == 1000  # no duplicate inside either
    assert not train_set & test_set  # no image in both
    assert 0.1 < train.float().mean() / 255 < 0.2  # MNIST: mostly black background


def test_a_sequence_is_the_start_token_then_784_pixels_in_raster_order():
    train, _ = load_mnist()
    source = PixelSequences(train[:3])
    example = source.example(1)
    ids = example["input_ids"]
    assert ids.shape == (1, 785) and ids[0, 0] == BOS_ID
    assert torch.equal(ids[0, 1:], train[1].reshape(-1).long())
    assert torch.equal(ids[0, 1 + 28 * 5 + 7], train[1, 5, 7].long())  # row-major
    assert torch.equal(example["labels"], ids) and example["attention_mask"].all()
    batch = source.collate([source.example(i) for i in range(3)])
    assert batch["input_ids"].shape == (3, 785)
    batches = list(pixel_batches(train[:7], batch_size=3))
    assert [b["input_ids"].shape[0] for b in batches] == [3, 3, 1]


class _Uniform(torch.nn.Module):
    """Equal logits for every class at every position (and a large one for the start token,
    which the scorer must leave out of the distribution)."""

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, PIXEL_LEVELS + 1)
        logits[..., BOS_ID] = 50.0
        return logits


def test_a_uniform_model_scores_exactly_8_bits_per_dimension():
    _, test = load_mnist()
    scores = causal_scores(_Uniform(), pixel_batches(test[:5], 2), classes=PIXEL_LEVELS)
    assert scores["count"] == 5 * 784  # every pixel scored, the start token never
    assert math.isclose(bits_per_dimension(scores["nll"]), 8.0, rel_tol=1e-6)


def test_bad_archives_are_named(tmp_path):
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"wrong\.npz: no array named 'data'"):
        load_mnist(tmp_path / "wrong.npz")
    np.savez(tmp_path / "shape.npz", data=np.zeros((3, 28, 27), np.uint8))
    with pytest.raises(ValueError, match=r"shape\.npz: 'data' must be uint8 \(N, 28, 28\)"):
        load_mnist(tmp_path / "shape.npz")
    (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match=r"torn\.npz: not a readable \.npz archive"):
        load_mnist(tmp_path / "torn.npz")
    np.savez(tmp_path / "few.npz", data=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="train_images must be in"):
        load_mnist(tmp_path / "few.npz", train_images=3)
