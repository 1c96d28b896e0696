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


def test_training_windows_are_cuts_of_the_text_reproducible_from_their_streams():
    from performers.text import TextWindows
    from performers.training.data import RandomStreams

    ids = torch.arange(1000)
    windows = TextWindows(ids, 64)
    assert len(windows) == 1000 // 64
    first = windows.example(3, RandomStreams(0, 0, 3))["input_ids"][0]
    again = windows.example(3, RandomStreams(0, 0, 3))["input_ids"][0]
    other_epoch = windows.example(3, RandomStreams(0, 1, 3))["input_ids"][0]
    assert torch.equal(first, again) and first.shape == (64,)
    assert torch.equal(first, torch.arange(int(first[0]), int(first[0]) + 64))  # contiguous
    assert 3 * 64 <= int(first[0]) < 4 * 64
    assert not torch.equal(first, other_epoch) or int(first[0]) == 3 * 64
    ends = set()
    for seed in range(20):  # the last window's offsets would run past the text: clipped to its end
        last = windows.example(len(windows) - 1, RandomStreams(seed, 0, 14))["input_ids"][0]
        assert last.shape == (64,) and torch.equal(last, torch.arange(int(last[0]), int(last[0]) + 64))
        ends.add(int(last[-1]))
    assert max(ends) == 999
    with pytest.raises(ValueError, match="fewer than one window"):
        TextWindows(ids[:10], 64)


def test_validation_windows_do_not_overlap_and_a_uniform_model_costs_log2_v():
    from performers.bench.paper_tasks import causal_scores
    from performers.text import window_batches

    ids = torch.arange(100) % 7
    batches = list(window_batches(ids, 10, batch_size=4))
    rows = torch.cat([b["input_ids"] for b in batches])
    assert rows.shape == (10, 10) and torch.equal(rows.flatten(), ids)
    spread = torch.cat([b["input_ids"] for b in window_batches(ids, 10, max_windows=3)])
    assert torch.equal(spread[:, 0], torch.tensor([0, 40, 90]) % 7)  # windows 0, 4 and 9 of 10

    class Uniform(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return torch.zeros(*input_ids.shape, 65)

    scores = causal_scores(Uniform(), window_batches(ids, 10))
    assert scores["count"] == 10 * 9  # the first character of each window has no context
    assert math.isclose(bits_per_character(scores["nll"]), math.log2(65), rel_tol=1e-6)
