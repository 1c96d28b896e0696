"""Reading a prepared protein dataset (written by :func:`performers.proteins.prepared.prepare`)
without loading it: every array is a read-only ``numpy.memmap``, so opening a split costs a few
file opens whatever its size, and the operating system's page cache is the only cache.

The on-disk format (version :data:`FORMAT_VERSION`) is described in
:mod:`performers.proteins.prepared`; this module is its reader and the single place that knows
the file names.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from performers.proteins.tokenizer import ProteinTokenizer
from performers.utils.errors import InputError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "SPLITS",
    "TOKENIZER",
    "PreparedDataset",
    "PreparedDatasetError",
    "is_prepared",
    "read_manifest",
    "verify_prepared",
]

FORMAT = "performers-prepared-proteins"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
SPLITS = ("train", "valid", "test")
TOKEN_DTYPE = np.dtype(np.uint8)
# The index arrays of a split: name → (file name inside the split's folder, dtype on disk).
INDEX_FILES = {
    "offsets": ("offsets.i64", np.dtype("<i8")),  # start of each record in the split's stream
    "lengths": ("lengths.i32", np.dtype("<i4")),  # tokens of each record, <cls> and <eos> included
    "id_offsets": ("id_offsets.i64", np.dtype("<i8")),  # start of each id in ids.txt, plus the end
    "ids": ("ids.txt", np.dtype(np.uint8)),  # the FASTA ids (first word of the header), one a line
}


def shard_name(split: str, index: int) -> str:
    """Path of a token shard relative to the dataset directory."""
    return f"{split}/tokens-{index:05d}.u8"


class PreparedDatasetError(InputError):
    """A directory that is not a (readable) prepared dataset; the message names it and says why."""


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a prepared dataset, checked for format and version.

    Raises:
        PreparedDatasetError: no ``manifest.json``, not JSON, not this format, another version.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise PreparedDatasetError(f"{directory}: no such directory (expected a prepared dataset)")
    if not path.is_file():
        raise PreparedDatasetError(
            f"{directory}: not a prepared dataset (no {MANIFEST}; create one with `performers prepare`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PreparedDatasetError(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PreparedDatasetError(f"{path}: not a prepared protein dataset (format is not {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise PreparedDatasetError(
            f"{path}: format version {version!r}, but this version of performers reads version "
            f"{FORMAT_VERSION}; prepare the data again with this version"
        )
    return manifest


def is_prepared(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a prepared dataset of this format version (by its manifest;
    the data files are checked when a split is opened)."""
    try:
        read_manifest(directory)
    except PreparedDatasetError:
        return False
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def verify_prepared(directory: str | os.PathLike, *, hashes: bool = True) -> list[str]:
    """Every data file of a prepared dataset (token shards and index files of every split)
    checked against its manifest entry: present, of its size, and (``hashes``) of its SHA-256.

    Reads the whole dataset when ``hashes`` (O(size)); sizes alone cost one ``stat`` per file.

    Returns:
        One line per problem, naming the file (``"DIR/train/tokens-00000.u8: contents differ
        ..."``); empty when every file matches.

    Raises:
        PreparedDatasetError: ``directory`` is not a prepared dataset of this format version.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    problems = []
    for split in manifest.get("splits", {}).values():
        for entry in [*split["shards"], *split["index"].values()]:
            path = directory / entry["file"]
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            size = path.stat().st_size
            if size != entry["bytes"]:
                what = "truncated" if size < entry["bytes"] else "longer than the manifest says"
                problems.append(f"{path}: {what} ({size} bytes, the manifest says {entry['bytes']})")
            elif hashes and _sha256(path) != entry["sha256"]:
                problems.append(f"{path}: contents differ from the manifest's SHA-256 (changed or corrupt)")
    return problems


def _memmap(path: Path, dtype: np.dtype, count: int, what: str) -> np.ndarray:
    """A read-only memmap of ``count`` items, after checking the file's size."""
    if not path.is_file():
        raise PreparedDatasetError(f"{path}: {what} file missing")
    expected = count * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        problem = "truncated" if size < expected else "longer than the index says"
        raise PreparedDatasetError(
            f"{path}: {what} file {problem} ({size} bytes, expected {expected}); prepare the data again"
        )
    if count == 0:
        return np.empty(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class PreparedDataset:
    """One split of a prepared dataset, read through memory maps.

    Args:
        directory: the dataset directory (``performers prepare --out DIR``).
        split: ``"train"``, ``"valid"`` or ``"test"``.

    Attributes:
        tokenizer: the dataset's :class:`ProteinTokenizer` (from ``tokenizer.json``).
        manifest: the parsed ``manifest.json``.
        lengths: ``(N,)`` int32, tokens per record including ``<cls>`` and ``<eos>``.
        offsets: ``(N,)`` int64, where each record starts in the split's token stream.

    Record ``i`` is ``tokens(i)`` = ``[<cls>, residues..., <eos>]`` (uint8 ids, exactly
    ``ProteinTokenizer().encode(sequence)``), and the split's token stream is the records
    concatenated in input order (``stream(start, stop)``), what
    :class:`performers.proteins.data.ConcatenatedWindows` builds in memory.

    Raises:
        PreparedDatasetError: not a prepared dataset, another format version, a split it does not
            have, a missing file, or a file whose size disagrees with the index (truncated).
    """

    def __init__(self, directory: str | os.PathLike, split: str = "train") -> None:
        self.directory = Path(directory)
        self.split = split
        self.manifest = read_manifest(self.directory)
        splits = self.manifest.get("splits", {})
        if split not in splits:
            raise PreparedDatasetError(
                f"{self.directory}: no {split!r} split (this dataset has "
                f"{', '.join(sorted(splits)) or 'none'})"
            )
        info = splits[split]
        try:
            self.tokenizer = ProteinTokenizer.load(self.directory / TOKENIZER)
        except (OSError, ValueError) as error:
            raise PreparedDatasetError(f"{self.directory}: cannot read {TOKENIZER} ({error})") from None
        self._info = info
        self._records = int(info["records"])
        self._tokens = int(info["tokens"])
        index = info["index"]
        arrays = {}
        for name, (_, dtype) in INDEX_FILES.items():
            entry = index[name]
            arrays[name] = _memmap(self.directory / entry["file"], dtype, int(entry["count"]), name)
        self.offsets, self.lengths = arrays["offsets"], arrays["lengths"]
        self._id_offsets, self._ids = arrays["id_offsets"], arrays["ids"]
        self._shards = [
            _memmap(self.directory / shard["file"], TOKEN_DTYPE, int(shard["tokens"]), "token shard")
            for shard in info["shards"]
        ]
        counts = [int(shard["records"]) for shard in info["shards"]]
        self._first_record = np.concatenate([[0], np.cumsum(counts)]).tolist()  # (S + 1,)
        self._shard_start = np.concatenate([[0], np.cumsum([len(s) for s in self._shards])]).tolist()
        self._check_consistency()

    def _check_consistency(self) -> None:
        """Cheap checks (O(shards)) that the index and the shards describe the same stream."""
        where = f"{self.directory} ({self.split})"
        n = self._records
        if len(self.offsets) != n or len(self.lengths) != n or len(self._id_offsets) != n + 1:
            raise PreparedDatasetError(f"{where}: index arrays disagree with the manifest's {n} records")
        if self._first_record[-1] != n or self._shard_start[-1] != self._tokens:
            raise PreparedDatasetError(
                f"{where}: shards hold {self._shard_start[-1]} tokens in "
                f"{self._first_record[-1]} records, the manifest says {self._tokens} in {n}"
            )
        if n and int(self.offsets[-1]) + int(self.lengths[-1]) != self._tokens:
            raise PreparedDatasetError(
                f"{where}: the last record does not end the token stream (corrupt index)"
            )
        if int(self._id_offsets[-1]) != len(self._ids):
            raise PreparedDatasetError(
                f"{where}: the id index does not end at the end of ids.txt (corrupt index)"
            )
        for shard in self._shards:
            if len(shard) and (shard[0] != self.tokenizer.cls_id or shard[-1] != self.tokenizer.eos_id):
                raise PreparedDatasetError(
                    f"{where}: a token shard does not start with <cls> and end with <eos>"
                )

    def __len__(self) -> int:
        return self._records

    @property
    def num_tokens(self) -> int:
        """Length of the split's token stream (all records, special tokens included)."""
        return self._tokens

    @property
    def num_residues(self) -> int:
        """Residues of the split (tokens less the two special tokens of every record)."""
        return self._tokens - 2 * self._records

    def _index(self, i: int) -> int:
        if not -self._records <= i < self._records:
            raise IndexError(f"record {i} out of range for the {self._records} records of {self.split!r}")
        return i + self._records if i < 0 else int(i)

    def length(self, i: int) -> int:
        """Tokens of record ``i``, ``<cls>`` and ``<eos>`` included."""
        return int(self.lengths[self._index(i)])

    def tokens(self, i: int) -> np.ndarray:
        """Record ``i`` as ``(length(i),)`` uint8 ids ``[<cls>, residues..., <eos>]`` (a read-only
        view of the shard: records never straddle shards)."""
        i = self._index(i)
        shard = bisect.bisect_right(self._first_record, i) - 1
        start = int(self.offsets[i]) - self._shard_start[shard]
        return self._shards[shard][start : start + int(self.lengths[i])]

    __getitem__ = tokens

    def record_id(self, i: int) -> str:
        """The FASTA id (first word of the header) of record ``i``."""
        i = self._index(i)
        start, stop = int(self._id_offsets[i]), int(self._id_offsets[i + 1]) - 1  # drop the "\n"
        return bytes(self._ids[start:stop]).decode("utf-8")

    def stream(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the split's concatenated stream, ``(stop - start,)`` uint8
        (a view when inside one shard, else a copy joining the shards' pieces)."""
        if not 0 <= start <= stop <= self._tokens:
            raise IndexError(f"stream slice [{start}, {stop}) outside [0, {self._tokens}] of {self.split!r}")
        first = max(bisect.bisect_right(self._shard_start, start) - 1, 0)
        pieces = []
        for shard in range(first, len(self._shards)):
            base = self._shard_start[shard]
            if base >= stop:
                break
            pieces.append(self._shards[shard][max(start - base, 0) : stop - base])
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.empty(0, TOKEN_DTYPE)

    def verify(self) -> None:
        """Check every file of the split against the SHA-256 in the manifest and every record's
        ``<cls>``/``<eos>`` and offset (reads the whole split: O(size)).

        Raises:
            PreparedDatasetError: naming the first file or record that does not match.
        """
        entries = [*self._info["shards"], *self._info["index"].values()]
        for entry in entries:
            path = self.directory / entry["file"]
            if _sha256(path) != entry["sha256"]:
                raise PreparedDatasetError(f"{path}: contents differ from the manifest's SHA-256 (corrupt)")
        step = 1 << 20
        for begin in range(0, self._records, step):
            offsets = np.asarray(self.offsets[begin : begin + step], dtype=np.int64)
            lengths = np.asarray(self.lengths[begin : begin + step], dtype=np.int64)
            previous = int(self.offsets[begin - 1]) + int(self.lengths[begin - 1]) if begin else 0
            expected = previous + np.concatenate([[0], np.cumsum(lengths[:-1])])
            if not np.array_equal(offsets, expected) or (lengths < 3).any():
                raise PreparedDatasetError(
                    f"{self.directory} ({self.split}): inconsistent offsets near record {begin}"
                )
            ends = offsets + lengths - 1
            for positions, want, what in (
                (offsets, self.tokenizer.cls_id, "<cls>"),
                (ends, self.tokenizer.eos_id, "<eos>"),
            ):
                shard_of = np.searchsorted(self._shard_start, positions, side="right") - 1
                for shard in np.unique(shard_of):
                    local = positions[shard_of == shard] - self._shard_start[shard]
                    if (self._shards[shard][local] != want).any():
                        raise PreparedDatasetError(
                            f"{self.directory} ({self.split}): a record near {begin} does not have its {what}"
                        )

    def __getstate__(self) -> dict:
        # Memory maps would be pickled as whole arrays: a worker process reopens the files instead.
        return {"directory": self.directory, "split": self.split}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"], state["split"])

    def __repr__(self) -> str:
        return (
            f"PreparedDataset({str(self.directory)!r}, split={self.split!r}: {self._records} records, "
            f"{self._tokens} tokens in {len(self._shards)} shards)"
        )
