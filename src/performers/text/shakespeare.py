"""Tiny Shakespeare (1.1 MB of plain text, shipped with the package) for character-level language
models: the split, a character vocabulary, and bits per character.

The split is the common one: the first 90 % of the characters train, the last 10 % validate
(contiguous, so no passage appears in both). The vocabulary is the sorted set of characters of
the training part; a validation character outside it is an error, not a silent ``<unk>``.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from performers.utils import shipped_data

__all__ = ["CharVocabulary", "bits_per_character", "load_tiny_shakespeare"]

TRAIN_FRACTION = 0.9


@dataclass(frozen=True)
class CharVocabulary:
    """Characters ↔ token ids ``0 … V−1`` (sorted characters)."""

    characters: str

    @classmethod
    def from_text(cls, text: str) -> CharVocabulary:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.characters)

    def encode(self, text: str) -> Tensor:
        """``(len(text),)`` int64 ids; ValueError naming the first unknown character and its index."""
        index = {c: i for i, c in enumerate(self.characters)}
        ids = []
        for position, character in enumerate(text):
            if character not in index:
                raise ValueError(f"character {character!r} at index {position} is not in the vocabulary")
            ids.append(index[character])
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        return "".join(self.characters[i] for i in ids.tolist())


def load_tiny_shakespeare(path: str | Path | None = None) -> tuple[str, str]:
    """``(train, valid)``: the first 90 % and the last 10 % of the text's characters.

    ``path`` defaults to the shipped ``performers/data/text/tinyshakespeare/input.txt.gz`` (see
    its SOURCE.md); a plain or gzip UTF-8 file of one's own also works.
    """
    path = shipped_data("text", "tinyshakespeare", "input.txt.gz") if path is None else Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as error:
        raise ValueError(f"{path}: not readable as UTF-8 text ({error})") from None
    if len(text) < 2:
        raise ValueError(f"{path}: {len(text)} characters; a split needs at least 2")
    cut = int(len(text) * TRAIN_FRACTION)
    return text[:cut], text[cut:]


def bits_per_character(mean_nll_nats: float | Tensor) -> float:
    """Mean negative log-likelihood per character in nats → bits per character (÷ ln 2)."""
    return float(mean_nll_nats) / math.log(2)
