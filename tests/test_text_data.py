"""Tiny Shakespeare: the shipped text, its 90/10 split without overlap, the character vocabulary,
and bits per character (a uniform model over V characters costs log2 V bits)."""

import gzip
import math

import pytest
import torch
import torch.nn.functional as F

from performers.text import CharVocabulary, bits_per_character, load_tiny_shakespeare


def test_shipped_text_splits_90_10_contiguously():
    train, valid = load_tiny_shakespeare()
    assert len(train) + len(valid) == 1_115_394  # the SOURCE.md size
    assert len(train) == int(0.9 * 1_115_394)
    assert train.startswith("First Citizen:")
    vocabulary = CharVocabulary.from_text(train)
    assert len(vocabulary) == 65  # every character of the validation part is known
    ids = vocabulary.encode(valid[:1000])
    assert vocabulary.decode(ids) == valid[:1000]


def test_unknown_characters_and_unreadable_files_are_named(tmp_path):
    vocabulary = CharVocabulary.from_text("abc")
    with pytest.raises(ValueError, match=r"character 'z' at index 2 is not in the vocabulary"):
        vocabulary.encode("abz")
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(gzip.compress("é".encode("latin-1")))
    with pytest.raises(ValueError, match=r"bad\.txt\.gz: not readable as UTF-8"):
        load_tiny_shakespeare(bad)


def test_a_uniform_model_costs_log2_v_bits_per_character():
    vocabulary = CharVocabulary.from_text(load_tiny_shakespeare()[0])
    targets = vocabulary.encode("To be, or not to be")
    logits = torch.zeros(len(targets), len(vocabulary))  # uniform
    nll = F.cross_entropy(logits, targets)
    assert math.isclose(bits_per_character(nll), math.log2(65), rel_tol=1e-6)
    # A model that is certain and right costs nothing.
    certain = torch.full((len(targets), len(vocabulary)), -1e4).scatter_(1, targets[:, None], 0.0)
    assert bits_per_character(F.cross_entropy(certain, targets)) < 1e-6
