"""Streaming FASTA reader (plain or gzip) with line-numbered errors.

Records are yielded one at a time, so a multi-GB file is never held in memory. Sequences are
upper-cased, line breaks and spaces inside sequence lines are dropped, and a terminal ``*``
(stop codon) is removed. Anything else that is not an amino-acid letter is an error that names
the file, the line and the column.

Rare residues are handled explicitly (``rare=``):

* ``"keep"`` (default): ``X`` (unknown), ``B`` (D/N), ``Z`` (E/Q), ``U`` (selenocysteine) and
  ``O`` (pyrrolysine) are kept; the tokenizer has a token for each.
* ``"map"``: ``U → C``, ``O → K`` (their closest standard residues), ``B``, ``Z`` → ``X``.
* ``"reject"`` (also ``strict=True``): any of them is an error.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

__all__ = [
    "RARE_RESIDUES",
    "RARE_RESIDUE_MAP",
    "STANDARD_RESIDUES",
    "FastaError",
    "FastaRecord",
    "read_fasta",
]

STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
RARE_RESIDUES = "XBZUO"
RARE_RESIDUE_MAP = {"U": "C", "O": "K", "B": "X", "Z": "X", "X": "X"}
RareMode = Literal["keep", "map", "reject"]


class FastaError(ValueError):
    """Malformed FASTA input; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class FastaRecord:
    """One record: ``header`` is the text after ``>``; ``sequence`` the cleaned residues."""

    header: str
    sequence: str

    @property
    def id(self) -> str:
        """The first word of the header."""
        return self.header.split(maxsplit=1)[0]

    @property
    def fields(self) -> dict[str, str]:
        """``KEY=VALUE`` words of the header, e.g. ``{"SET": "train"}``."""
        out = {}
        for word in self.header.split()[1:]:
            key, sep, value = word.partition("=")
            if sep:
                out[key] = value
        return out

    def __len__(self) -> int:
        return len(self.sequence)


def _open_text(source: str | os.PathLike | IO) -> tuple[IO[str], str, bool]:
    """``(text stream, name for messages, whether we opened it)``; gzip is detected by magic bytes."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        with open(path, "rb") as probe:
            magic = probe.read(2)
        if magic == b"\x1f\x8b":
            return gzip.open(path, "rt", encoding="ascii", errors="replace"), str(path), True
        return open(path, encoding="ascii", errors="replace"), str(path), True
    name = getattr(source, "name", "<stream>")
    if isinstance(source, io.TextIOBase):
        return source, str(name), False
    return io.TextIOWrapper(source, encoding="ascii", errors="replace"), str(name), False


def read_fasta(
    source: str | os.PathLike | IO,
    *,
    rare: RareMode = "keep",
    strict: bool = False,
    alphabet: str | None = None,
) -> Iterator[FastaRecord]:
    """Yield the records of a FASTA file (path to plain or gzip text, or an open stream).

    Args:
        source: a path, or a text/binary stream.
        rare: what to do with ``X, B, Z, U, O`` (see the module docstring).
        strict: same as ``rare="reject"``.
        alphabet: read a FASTA-formatted *label* file instead (e.g. ``"HEC"`` or ``"01"``):
            exactly these characters are allowed (case kept) and ``rare`` does not apply.

    Raises:
        FastaError: sequence data before the first header, an empty header, a record without
            residues, an illegal character (with its column), a rejected rare residue.
    """
    if rare not in ("keep", "map", "reject"):
        raise ValueError(f"rare must be 'keep', 'map' or 'reject', got {rare!r}")
    if strict:
        rare = "reject"
    labels = alphabet is not None
    allowed = set(alphabet) if labels else set(STANDARD_RESIDUES) | set(RARE_RESIDUES)
    stream, name, owned = _open_text(source)
    try:
        header: str | None = None
        header_line = 0
        parts: list[str] = []
        for number, raw in enumerate(stream, start=1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith(">"):
                if header is not None:
                    yield _finish(name, header, header_line, parts)
                header = line[1:].strip()
                header_line = number
                if not header:
                    raise FastaError(f"{name}:{number}: empty header (a '>' line needs an identifier)")
                parts = []
                continue
            if line.startswith(";"):  # old-style comment line
                continue
            if header is None:
                raise FastaError(f"{name}:{number}: sequence data before the first '>' header")
            residues = "".join(line.split())
            if not labels:
                residues = residues.upper()
            if residues.endswith("*") and not labels:
                residues = residues[:-1]
            for column, char in enumerate(residues, start=1):
                if char not in allowed:
                    what = "a stop '*' inside the sequence" if char == "*" else f"illegal character {char!r}"
                    raise FastaError(
                        f"{name}:{number}: {what} in record {header.split()[0]!r} (column {column})"
                    )
                if not labels and char in RARE_RESIDUES and rare == "reject":
                    raise FastaError(
                        f"{name}:{number}: rare residue {char!r} in record {header.split()[0]!r} "
                        f"(column {column}) rejected in strict mode"
                    )
            if rare == "map" and not labels:
                residues = "".join(RARE_RESIDUE_MAP.get(c, c) for c in residues)
            parts.append(residues)
        if header is not None:
            yield _finish(name, header, header_line, parts)
    finally:
        if owned:
            stream.close()


def _finish(name: str, header: str, line: int, parts: list[str]) -> FastaRecord:
    sequence = "".join(parts)
    if not sequence:
        raise FastaError(f"{name}:{line}: record {header.split()[0]!r} has no sequence")
    return FastaRecord(header, sequence)
