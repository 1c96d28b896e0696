"""Writing the files of a prepared dataset as records stream in (used by
:func:`performers.proteins.prepared.prepare`).

Memory is constant in the number of records: token ids go straight to the current shard file,
index entries are buffered ``FLUSH_RECORDS`` at a time, every file is hashed (SHA-256) as it is
written. The only structure that grows is :class:`SeenSequences` (``dedupe``): 16 bytes per
unique sequence.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import sys
from pathlib import Path

import numpy as np

from performers.proteins.prepared_dataset import INDEX_FILES, shard_name

__all__ = ["FLUSH_RECORDS", "SeenSequences", "SplitWriter"]

FLUSH_RECORDS = 1 << 16
_INT32_MAX = (1 << 31) - 1


class _HashedFile:
    """A binary file written sequentially, hashed and counted as it goes."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self._handle = open(root / name, "wb")  # closed by close() / abort()
        self._digest = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self._handle.write(data)
        self._digest.update(data)
        self.bytes += len(data)

    def close(self) -> dict:
        self._handle.close()
        return {"file": self.name, "bytes": self.bytes, "sha256": self._digest.hexdigest()}

    def abort(self) -> None:
        # Closing flushes the buffer, which fails again on a full disk: the file is about to be
        # removed, and the error that stopped the run is the one to report.
        with contextlib.suppress(OSError):
            self._handle.close()


class _ArrayFile:
    """A little-endian integer array file, appended one value at a time, flushed in blocks."""

    def __init__(self, root: Path, name: str, typecode: str) -> None:
        self._file = _HashedFile(root, name)
        self._typecode = typecode
        self._buffer = array.array(typecode)
        self.count = 0

    def append(self, value: int) -> None:
        self._buffer.append(value)
        if len(self._buffer) >= FLUSH_RECORDS:
            self.flush()

    def flush(self) -> None:
        if sys.byteorder != "little":
            self._buffer.byteswap()
        self.count += len(self._buffer)
        self._file.write(self._buffer.tobytes())
        self._buffer = array.array(self._typecode)

    def close(self) -> dict:
        self.flush()
        return {**self._file.close(), "count": self.count}

    def abort(self) -> None:
        self._file.abort()


class SplitWriter:
    """The files of one split: token shards of at most ``shard_tokens`` tokens (a longer record
    gets a shard of its own; records never straddle shards, so every record is one slice of one
    memory map), the offsets/lengths index and the ids.

    Args:
        root: the dataset directory being written (a temporary one).
        split: the split's name (its folder).
        shard_tokens: target shard size in tokens (= bytes).
        cls_id, eos_id: the tokens that open and close every record.
    """

    def __init__(self, root: Path, split: str, shard_tokens: int, cls_id: int, eos_id: int) -> None:
        (root / split).mkdir()
        self.root, self.split, self.shard_tokens = root, split, shard_tokens
        self._cls, self._eos = bytes([cls_id]), bytes([eos_id])
        self.records = self.tokens = self.duplicates_removed = 0
        self._shards: list[dict] = []
        self._shard: _HashedFile | None = None
        self._shard_records = 0
        self._index = {
            "offsets": _ArrayFile(root, f"{split}/{INDEX_FILES['offsets'][0]}", "q"),
            "lengths": _ArrayFile(root, f"{split}/{INDEX_FILES['lengths'][0]}", "i"),
            "id_offsets": _ArrayFile(root, f"{split}/{INDEX_FILES['id_offsets'][0]}", "q"),
        }
        self._ids = _HashedFile(root, f"{split}/{INDEX_FILES['ids'][0]}")
        self._index["id_offsets"].append(0)
        assert array.array("q").itemsize == 8 and array.array("i").itemsize == 4

    def add(self, ids: bytes, record_id: str) -> None:
        """Append one record: ``ids`` are its residues' token ids (one byte each)."""
        length = len(ids) + 2
        if length > _INT32_MAX:
            raise ValueError(f"a record of {length} tokens does not fit the int32 length index")
        if self._shard is None or (self._shard_records and self._shard.bytes + length > self.shard_tokens):
            self._close_shard()
            self._shard = _HashedFile(self.root, shard_name(self.split, len(self._shards)))
        self._shard.write(self._cls + ids + self._eos)
        self._shard_records += 1
        self._index["offsets"].append(self.tokens)
        self._index["lengths"].append(length)
        name = record_id.encode("utf-8") + b"\n"
        self._ids.write(name)
        self._index["id_offsets"].append(self._ids.bytes)
        self.records += 1
        self.tokens += length

    def _close_shard(self) -> None:
        if self._shard is not None:
            self._shards.append(
                {**self._shard.close(), "tokens": self._shard.bytes, "records": self._shard_records}
            )
            self._shard, self._shard_records = None, 0

    def close(self) -> dict:
        """Finish the files; the split's manifest entry (counts, shards, index files)."""
        self._close_shard()
        index = {name: {**f.close(), "dtype": INDEX_FILES[name][1].str} for name, f in self._index.items()}
        index["ids"] = {**self._ids.close(), "dtype": "|u1"}
        index["ids"]["count"] = index["ids"]["bytes"]
        return {
            "records": self.records,
            "residues": self.tokens - 2 * self.records,
            "tokens": self.tokens,
            "duplicates_removed": self.duplicates_removed,
            "shards": self._shards,
            "index": index,
        }

    def abort(self) -> None:
        """Close every file without finishing (the directory is about to be removed)."""
        for f in [self._shard, self._ids, *self._index.values()]:
            if f is not None:
                f.abort()


class SeenSequences:
    """Exact-duplicate detection in constant memory per sequence: the 16-byte BLAKE2b digest of
    every unique sequence, in one sorted ``numpy`` array (``S16``), merged batch by batch.

    16 bytes per unique sequence (1.6 GB for 100 M proteins); two different sequences share a
    digest with probability about ``n² / 2¹²⁹`` (nil in practice).
    """

    BYTES_PER_SEQUENCE = 16

    def __init__(self) -> None:
        self._sorted = np.empty(0, dtype="S16")

    def __len__(self) -> int:
        return len(self._sorted)

    @staticmethod
    def digest(sequence: bytes) -> bytes:
        return hashlib.blake2b(sequence, digest_size=16).digest()

    def first_seen(self, digests: list[bytes]) -> np.ndarray:
        """``(len(digests),)`` bool: True where the digest was never seen before (earlier in the
        list included), and remember them all."""
        if not digests:
            return np.zeros(0, dtype=bool)
        batch = np.array(digests, dtype="S16")
        keep = np.zeros(len(batch), dtype=bool)
        keep[np.unique(batch, return_index=True)[1]] = True  # first occurrence within the batch
        if len(self._sorted):
            where = np.searchsorted(self._sorted, batch)
            found = self._sorted[np.minimum(where, len(self._sorted) - 1)] == batch
            keep &= ~found
        new = np.sort(batch[keep])
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, new), new)
        return keep
