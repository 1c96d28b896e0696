"""The BLOSUM62 substitution matrix (shipped data), for a substitution-score baseline."""

from __future__ import annotations

import functools

from performers.utils import shipped_data

__all__ = ["blosum62"]


@functools.lru_cache(maxsize=1)
def blosum62() -> dict[tuple[str, str], int]:
    """``(a, b) -> score`` for the 20 standard residues (``performers/data/proteins/blosum62.txt``)."""
    rows = [
        line.split()
        for line in shipped_data("proteins", "blosum62.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    letters = rows[0]
    return {(row[0], b): int(value) for row in rows[1:] for b, value in zip(letters, row[1:], strict=True)}
