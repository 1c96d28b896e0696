"""Streaming FASTA reader (plain or gzip) with line-numbered errors.

Records are yielded one at a time, so a multi-GB file is never held in memory. Sequences are
upper-cased, line breaks and spaces inside sequence lines are dropped, and a ``*`` (stop codon)
ending a line is removed. Anything else that is not an amino-acid letter is an error that names
the file, the line and the column.

Rare residues are handled explicitly (``rare=``):

* ``"keep"`` (default): ``X`` (unknown), ``B`` (D/N), ``Z`` (E/Q), ``U`` (selenocysteine) and
  ``O`` (pyrrolysine) are kept; the tokenizer has a token for each.
* ``"map"``: ``U → C``, ``O → K`` (their closest standard residues), ``B``, ``Z`` → ``X``.
* ``"reject"`` (also ``strict=True``): any of them is an error.

How it is fast (tens of millions of residues per second): the text is read in blocks of a few
MiB (:mod:`performers.proteins.fasta_stream`), cut into records at ``"\\n>"`` with
``bytes.split``, and each record's sequence lines are cleaned, upper-cased, rare-mapped and
checked in one ``bytes.translate`` (whitespace deleted, every illegal byte mapped to NUL, which
the input cannot contain). Only a record that is not plainly valid — an illegal character, a
comment line, an empty header or sequence, a stop ``*`` that does not end its line — is read
again line by line by the reference parser (:func:`_parse_lines`, the original reader), which
finds the offending line and column and builds the error. So the fast path never decides what
is an error; it only recognizes the common, valid case, and a test checks that both paths agree
on randomly broken inputs.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, NamedTuple

from performers.proteins.fasta_stream import FastaError, text_blocks

__all__ = [
    "RARE_RESIDUES",
    "RARE_RESIDUE_MAP",
    "STANDARD_RESIDUES",
    "FastaError",
    "FastaRecord",
    "RawRecord",
    "read_fasta",
    "read_fasta_batches",
]

STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
RARE_RESIDUES = "XBZUO"
RARE_RESIDUE_MAP = {"U": "C", "O": "K", "B": "X", "Z": "X", "X": "X"}
RareMode = Literal["keep", "map", "reject"]
# What ``str.strip()``/``str.split()`` treat as whitespace in ASCII text: deleted from sequences.
_WHITESPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_TEXT_BATCH = 4096  # records per batch when parsing a text stream


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
        return header_fields(self.header)

    def __len__(self) -> int:
        return len(self.sequence)


class RawRecord(NamedTuple):
    """A record as :func:`read_fasta_batches` yields it: ``header`` (text after ``>``),
    ``line`` (the header's line number) and ``sequence`` (cleaned residues, ASCII bytes)."""

    header: str
    line: int
    sequence: bytes


def header_fields(header: str) -> dict[str, str]:
    """``KEY=VALUE`` words of a header after its first word (the id)."""
    out = {}
    for word in header.split()[1:]:
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
    return out


def header_split(header: str) -> str | None:
    """The split a header's tags name: ``split=...`` (the RefSeq corpus), or FLIP's ``SET=`` with
    ``VALIDATION=True`` meaning ``"valid"``; None when the header has neither tag."""
    fields = header_fields(header)
    if "split" in fields:
        return fields["split"]
    if "SET" in fields:
        return "valid" if fields["SET"] == "train" and fields.get("VALIDATION") == "True" else fields["SET"]
    return None


class _Rules:
    """What a sequence may contain, for both parsers: the reference one (``allowed``, ``rare``)
    and the fast one (``table``: byte → cleaned byte, NUL for anything not plainly valid)."""

    def __init__(self, rare: str, strict: bool, alphabet: str | None) -> None:
        if rare not in ("keep", "map", "reject"):
            raise ValueError(f"rare must be 'keep', 'map' or 'reject', got {rare!r}")
        self.rare = "reject" if strict else rare
        self.labels = alphabet is not None
        if self.labels and (not alphabet or not alphabet.isascii()):
            raise ValueError(f"alphabet must be a non-empty string of ASCII characters, got {alphabet!r}")
        letters = alphabet if self.labels else STANDARD_RESIDUES + RARE_RESIDUES
        self.allowed = set(letters)
        table = bytearray(256)  # all NUL: not valid
        for char in letters:
            if self.labels:
                table[ord(char)] = ord(char)
                continue
            if char in RARE_RESIDUES and self.rare == "reject":
                continue  # left NUL: the reference parser builds the error
            target = RARE_RESIDUE_MAP.get(char, char) if self.rare == "map" else char
            table[ord(char)] = table[ord(char.lower())] = ord(target)
        self.table = bytes(table)
        self.strip_stars = not self.labels


def _parse_lines(
    lines: Iterable[tuple[int, str]],
    name: str,
    rules: _Rules,
    on_invalid: Callable[[FastaError], None] | None,
) -> Iterator[RawRecord]:
    """The reference parser: numbered text lines → records, checking every character.

    A bad record raises, or with ``on_invalid`` is reported to it and skipped up to the next
    header. Sequence data before the first header always raises (the input is not FASTA).
    """

    def fail(error: FastaError) -> None:
        if on_invalid is None:
            raise error
        on_invalid(error)

    header: str | None = None
    header_line = 0
    parts: list[str] = []
    bad = False
    for number, raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line.startswith(">"):
            if header is not None and not bad:
                yield from _finish(name, header, header_line, parts, fail)
            header, header_line, parts, bad = line[1:].strip(), number, [], False
            if not header:
                bad = True
                fail(FastaError(f"{name}:{number}: empty header (a '>' line needs an identifier)"))
            continue
        if line.startswith(";"):  # old-style comment line
            continue
        if header is None:
            raise FastaError(f"{name}:{number}: sequence data before the first '>' header")
        if bad:
            continue
        residues = "".join(line.split())
        if not rules.labels:
            residues = residues.upper()
        if residues.endswith("*") and rules.strip_stars:
            residues = residues[:-1]
        problem = _first_problem(residues, header.split()[0], rules)
        if problem is not None:
            bad = True
            fail(FastaError(f"{name}:{number}: {problem}"))
            continue
        if rules.rare == "map" and not rules.labels:
            residues = "".join(RARE_RESIDUE_MAP.get(c, c) for c in residues)
        parts.append(residues)
    if header is not None and not bad:
        yield from _finish(name, header, header_line, parts, fail)


def _first_problem(residues: str, record: str, rules: _Rules) -> str | None:
    """What is wrong with the first bad character of a cleaned line of ``record``, or None."""
    for column, char in enumerate(residues, start=1):
        if char not in rules.allowed:
            if char == "*":
                what = "a stop '*' inside the sequence"
            elif char == "\ufffd":  # how the reader decodes a non-ASCII byte
                what = "a non-ASCII character (the file is not plain ASCII FASTA)"
            else:
                what = f"illegal character {char!r}"
            return f"{what} in record {record!r} (column {column})"
        if not rules.labels and char in RARE_RESIDUES and rules.rare == "reject":
            return f"rare residue {char!r} in record {record!r} (column {column}) rejected in strict mode"
    return None


def _finish(name: str, header: str, line: int, parts: list[str], fail) -> Iterator[RawRecord]:
    sequence = "".join(parts)
    if not sequence:
        fail(FastaError(f"{name}:{line}: record {header.split()[0]!r} has no sequence"))
        return
    yield RawRecord(header, line, sequence.encode("ascii"))


def _parse_blocks(
    blocks: Iterable[bytes], name: str, rules: _Rules, on_invalid: Callable[[FastaError], None] | None
) -> Iterator[list[RawRecord]]:
    """The fast parser: text blocks → one list of records per block (see the module docstring)."""
    carry = b"\n"  # an empty line 0, so that a header on line 1 also follows a "\n"
    line = 0  # line number of carry's first line
    started = False  # whether the text before the first "\n>" has been parsed
    for block in blocks:
        pieces = (carry + block).split(b"\n>")
        carry = pieces.pop()  # the last record may continue in the next block
        batch: list[RawRecord] = []
        for piece in pieces:
            if started:
                _parse_piece(piece, line, name, rules, on_invalid, batch)
            else:  # before the first header: blank and comment lines only (or a " >" header)
                batch.extend(_parse_lines(enumerate(_lines(piece), start=line), name, rules, on_invalid))
                started = True
            line += piece.count(b"\n") + 1
        if batch:
            yield batch
    batch = []
    if started:
        _parse_piece(carry, line, name, rules, on_invalid, batch)
    else:
        batch.extend(_parse_lines(enumerate(_lines(carry), start=line), name, rules, on_invalid))
    if batch:
        yield batch


def _lines(text: bytes) -> list[str]:
    # ASCII with replacement, as the text-mode reader always decoded (a non-ASCII byte becomes
    # U+FFFD: in a header it is kept, in a sequence it is an illegal character).
    return text.decode("ascii", "replace").split("\n")


def _parse_piece(
    piece: bytes,
    line: int,
    name: str,
    rules: _Rules,
    on_invalid: Callable[[FastaError], None] | None,
    batch: list[RawRecord],
) -> None:
    """One record's bytes (its header line without the ``>``, then its sequence lines) → batch."""
    newline = piece.find(b"\n")
    head, body = (piece, b"") if newline < 0 else (piece[:newline], piece[newline + 1 :])
    header = head.decode("ascii", "replace").strip()
    if header and body:
        if rules.strip_stars and b"*" in body:
            body = body.replace(b"*\n", b"\n")
            if body.endswith(b"*"):
                body = body[:-1]
        sequence = body.translate(rules.table, _WHITESPACE)
        if sequence and b"\x00" not in sequence:
            batch.append(RawRecord(header, line, sequence))
            return
    # Not plainly valid: the reference parser finds what is wrong (or that nothing is).
    lines = _lines(piece)
    lines[0] = ">" + lines[0]
    batch.extend(_parse_lines(enumerate(lines, start=line), name, rules, on_invalid))


def _text_lines(stream: IO[str], name: str) -> Iterator[tuple[int, str]]:
    """Numbered lines of a text stream, without a leading byte-order mark; a stream that cannot
    be decoded is a FastaError naming it (not a bare UnicodeDecodeError)."""
    number = 0
    try:
        for number, line in enumerate(stream, start=1):
            yield number, line.removeprefix("\ufeff") if number == 1 else line
    except UnicodeDecodeError as error:
        byte = error.object[error.start : error.start + 1].hex()
        where = f"after line {number}" if number else "in its first line"
        raise FastaError(
            f"{name}: not {error.encoding} text {where} (byte 0x{byte}: {error.reason}); pass the path "
            "or a binary stream instead (a non-ASCII byte is then reported by line and column)"
        ) from None
    except EOFError as error:  # a gzip/bz2/lzma stream that ends early
        raise FastaError(f"{name}: truncated compressed file after line {number} ({error})") from None


def read_fasta_batches(
    source: str | os.PathLike | IO,
    *,
    rare: RareMode = "keep",
    strict: bool = False,
    alphabet: str | None = None,
    on_invalid: Callable[[FastaError], None] | None = None,
    on_raw: Callable[[bytes], None] | None = None,
) -> Iterator[list[RawRecord]]:
    """The records of a FASTA file in batches (one per block of a few MiB of text), as
    :class:`RawRecord` tuples with the sequence as ASCII bytes: the fast interface for bulk
    processing (``performers prepare``). Same rules and errors as :func:`read_fasta`.

    Args:
        source, rare, strict, alphabet: as for :func:`read_fasta`.
        on_invalid: if given, a bad record (illegal character, rejected rare residue, empty
            header or sequence) is passed to it as a :class:`FastaError` and skipped, instead
            of raising. Errors of the file as a whole (no FASTA at all, binary data, truncated
            or corrupt gzip) always raise.
        on_raw: called with each block of the file's raw (possibly compressed) bytes, in order,
            e.g. ``hashlib.sha256().update``; not called for a text stream.
    """
    rules = _Rules(rare, strict, alphabet)
    if isinstance(source, io.TextIOBase):
        name = str(getattr(source, "name", "<stream>"))
        records = _parse_lines(_text_lines(source, name), name, rules, on_invalid)
        while batch := [record for _, record in zip(range(_TEXT_BATCH), records, strict=False)]:
            yield batch
        return
    name = (
        str(Path(source))
        if isinstance(source, (str, os.PathLike))
        else str(getattr(source, "name", "<stream>"))
    )
    yield from _parse_blocks(text_blocks(source, name, on_raw=on_raw), name, rules, on_invalid)


def read_fasta(
    source: str | os.PathLike | IO,
    *,
    rare: RareMode = "keep",
    strict: bool = False,
    alphabet: str | None = None,
) -> Iterator[FastaRecord]:
    """Yield the records of a FASTA file (path to plain or gzip text, or an open stream).

    Args:
        source: a path, or a text/binary stream (a binary stream may be gzip).
        rare: what to do with ``X, B, Z, U, O`` (see the module docstring).
        strict: same as ``rare="reject"``.
        alphabet: read a FASTA-formatted *label* file instead (e.g. ``"HEC"`` or ``"01"``):
            exactly these (ASCII) characters are allowed (case kept) and ``rare`` does not apply.

    Raises:
        FastaError: sequence data before the first header, an empty header, a record without
            residues, an illegal character (with its column), a rejected rare residue; binary
            data, a truncated or corrupt gzip file, another compression format (naming the file).
        ValueError: a bad ``rare`` or ``alphabet``.
    """
    for batch in read_fasta_batches(source, rare=rare, strict=strict, alphabet=alphabet):
        for header, _, sequence in batch:
            yield FastaRecord(header, sequence.decode("ascii"))
