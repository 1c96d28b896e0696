"""Text data, and nothing else (like :mod:`performers.proteins`): the STS Benchmark and Tiny
Shakespeare shipped with the package. It imports no model and no training code."""

from performers.text.shakespeare import CharVocabulary, bits_per_character, load_tiny_shakespeare
from performers.text.stsb import load_stsb
from performers.text.windows import TextWindows, window_batches

__all__ = [
    "CharVocabulary",
    "TextWindows",
    "bits_per_character",
    "load_stsb",
    "load_tiny_shakespeare",
    "window_batches",
]
