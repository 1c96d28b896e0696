"""The bytes of a FASTA file, in large blocks: plain or gzip (detected by magic bytes), with
line endings normalized and binary input refused.

This is the input layer of :func:`performers.proteins.fasta.read_fasta`: it knows nothing of
records. It exists as its own module because reading fast and failing clearly are both about
bytes, not residues:

* gzip is inflated with :mod:`zlib` directly, 1 MiB of compressed input at a time and at most
  :data:`BLOCK_BYTES` of text out of each call (so a "zip bomb" cannot blow up memory); members
  of a multi-member file are read one after the other, as ``gzip``/``zcat`` do. Reading the raw
  bytes ourselves lets the caller hash them (``on_raw``, the SHA-256 of the input recorded in a
  prepared dataset's manifest) in the same pass.
* A truncated gzip file (interrupted download), corrupt compressed data, a file compressed with
  something else than gzip, and binary (non-text) data are :class:`FastaError` naming the file
  and what is wrong.
* ``\\r\\n`` and lone ``\\r`` become ``\\n`` (text mode's universal newlines, which the line
  numbers of error messages follow).
* A UTF-8 byte-order mark at the start of the text (as some Windows editors write) is dropped;
  a UTF-16 one is a :class:`FastaError` (FASTA is ASCII text).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from typing import IO

from performers.utils.errors import InputError

__all__ = ["BLOCK_BYTES", "FastaError", "text_blocks"]

BLOCK_BYTES = 4 << 20  # text per block: large enough that per-block Python costs vanish
_RAW_BYTES = 1 << 20  # compressed bytes per read
_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_FORMATS = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}
# Control characters no text file contains (NUL included); 0x1c-0x1f are left out because
# Python's str.split() treats them as whitespace and the reader always has.
_BINARY = bytes(range(0x00, 0x09)) + bytes(range(0x0E, 0x1C)) + b"\x7f"
_BINARY_SET = frozenset(_BINARY)
_SNIFF_BYTES = 1 << 16
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class FastaError(InputError):
    """Malformed FASTA input; the message starts with ``file:line:`` (or ``file:`` for a
    problem of the file as a whole: truncated or corrupt gzip, binary data)."""


def _raw_blocks(handle: IO[bytes], on_raw: Callable[[bytes], None] | None, name: str) -> Iterator[bytes]:
    while block := _read(handle, name):
        if on_raw is not None:
            on_raw(block)
        yield block


def _read(handle: IO[bytes], name: str) -> bytes:
    """One raw block; a stream that decompresses itself (``gzip.open(path, "rb")``) and ends
    early is a FastaError naming it, not a bare EOFError."""
    try:
        return handle.read(_RAW_BYTES)
    except EOFError as error:
        raise FastaError(f"{name}: truncated compressed file ({error})") from None


def _gunzip(raw: Iterator[bytes], name: str) -> Iterator[bytes]:
    """Inflate every gzip member of ``raw`` (blocks of compressed bytes) into text blocks."""
    inflater: zlib._Decompress | None = zlib.decompressobj(16 + zlib.MAX_WBITS)
    between = b""  # bytes after a member's end, before we know whether another member follows
    consumed = 0
    for block in raw:
        consumed += len(block)
        data = block
        while data:
            if inflater is None:  # after a member: another member, zero padding, or garbage
                between = (between + data).lstrip(b"\x00")
                data = b""
                if len(between) < 2:
                    break
                if between[:2] != _GZIP_MAGIC:
                    raise FastaError(
                        f"{name}: corrupt gzip file (data after the end of the compressed stream)"
                    )
                inflater, data, between = zlib.decompressobj(16 + zlib.MAX_WBITS), between, b""
            try:
                text = inflater.decompress(data, BLOCK_BYTES)
            except zlib.error as error:
                raise FastaError(
                    f"{name}: corrupt gzip data after {consumed} compressed bytes ({error})"
                ) from None
            if text:
                yield text
            data = inflater.unconsumed_tail
            if inflater.eof:
                data, inflater = inflater.unused_data, None
        # decompress(..., max_length) may hold output back even when all input was consumed
        while inflater is not None and not inflater.eof and (text := inflater.decompress(b"", BLOCK_BYTES)):
            yield text
    if between:
        raise FastaError(f"{name}: corrupt gzip file (a partial member header after the compressed stream)")
    if inflater is not None and not inflater.eof:
        raise FastaError(
            f"{name}: truncated gzip file: the compressed data ends before its end-of-stream marker "
            f"(after {consumed} bytes); the file is incomplete (an interrupted download or copy?)"
        )


def _plain(first: bytes, raw: Iterator[bytes]) -> Iterator[bytes]:
    """Regroup raw blocks into text blocks of about BLOCK_BYTES (fewer, larger blocks)."""
    parts, size = [first], len(first)
    for block in raw:
        parts.append(block)
        size += len(block)
        if size >= BLOCK_BYTES:
            yield b"".join(parts)
            parts, size = [], 0
    if size:
        yield b"".join(parts)


def text_blocks(
    source: str | os.PathLike | IO[bytes], name: str, *, on_raw: Callable[[bytes], None] | None = None
) -> Iterator[bytes]:
    """The text of a FASTA file (a path or a binary stream) in blocks of about
    :data:`BLOCK_BYTES`, gzip inflated, newlines normalized to ``\\n``.

    Args:
        source: a path, or a binary stream (read, not closed).
        name: the file's name in error messages.
        on_raw: called with every block of the file's raw (possibly compressed) bytes, in
            order; e.g. ``hashlib.sha256().update``.

    Raises:
        FastaError: compressed with another format than gzip, truncated or corrupt gzip data, or
            binary data (a NUL or another control character that no text contains).
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            yield from _normalized(_without_bom(_decoded(handle, name, on_raw), name), name)
    else:
        yield from _normalized(_without_bom(_decoded(source, name, on_raw), name), name)


def _without_bom(blocks: Iterator[bytes], name: str) -> Iterator[bytes]:
    """The text without a leading UTF-8 byte-order mark (which may span tiny blocks); a UTF-16
    mark is refused by name rather than reported as binary data or a missing header."""
    head: bytes | None = b""
    for block in blocks:
        if head is None:
            yield block
            continue
        head += block
        if len(head) < len(_UTF8_BOM) and _UTF8_BOM.startswith(head):
            continue  # could still be a BOM: wait for more bytes
        if head.startswith(_UTF16_BOMS):
            raise FastaError(
                f"{name}: UTF-16 text (byte-order mark {head[:2].hex()}); FASTA must be ASCII/UTF-8"
            )
        yield head.removeprefix(_UTF8_BOM)
        head = None
    if head:
        yield head.removeprefix(_UTF8_BOM)


def _decoded(handle: IO[bytes], name: str, on_raw: Callable[[bytes], None] | None) -> Iterator[bytes]:
    raw = _raw_blocks(handle, on_raw, name)
    first = b""
    while len(first) < 8 and (block := next(raw, b"")):  # enough bytes to recognize a format
        first += block
    if first[:2] == _GZIP_MAGIC:
        yield from _gunzip(_chain(first, raw), name)
        return
    for magic, fmt in _OTHER_FORMATS.items():
        if first.startswith(magic):
            raise FastaError(f"{name}: a {fmt}-compressed file; only plain or gzip FASTA can be read")
    yield from _plain(first, raw)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _normalized(blocks: Iterator[bytes], name: str) -> Iterator[bytes]:
    """``\\r\\n`` and ``\\r`` → ``\\n`` (a ``\\r`` ending a block waits for the next one), and
    binary data refused: a NUL anywhere, another control character in the first 64 KiB."""
    held = b""
    offset = 0  # text bytes before this block, for messages
    for index, block in enumerate(blocks):
        sniff = block[:_SNIFF_BYTES] if index == 0 else b""
        if len(sniff.translate(None, _BINARY)) != len(sniff):
            position = next(i for i, byte in enumerate(sniff) if byte in _BINARY_SET)
            raise FastaError(
                f"{name}: binary data (byte 0x{sniff[position]:02x} at offset {position}): "
                "not a FASTA text file"
            )
        if b"\x00" in block:
            raise FastaError(
                f"{name}: binary data (a NUL byte at offset {offset + block.find(0)} of the text): "
                "not a FASTA text file"
            )
        offset += len(block)
        if held:
            block, held = held + block, b""
        if b"\r" in block:
            if block.endswith(b"\r"):
                block, held = block[:-1], b"\r"
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if block:
            yield block
    if held:
        yield b"\n"
