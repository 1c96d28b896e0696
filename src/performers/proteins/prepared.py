"""Prepared protein datasets: FASTA (plain or gzip, one or many files) → a directory of token ids
in memory-mapped shards, read without loading (:class:`PreparedDataset`).

``prepare(["uniref50.fasta.gz"], "data/uniref50", valid_fraction=0.01, test_fraction=0.01)``
or ``performers prepare uniref50.fasta.gz --out data/uniref50 --valid-fraction 0.01 ...``.

Format (version 1)::

    DIR/manifest.json        format, version, inputs (path, bytes, SHA-256), options, counts, files
    DIR/tokenizer.json       the ProteinTokenizer (ids never drift from the data)
    DIR/<split>/tokens-00000.u8 ...   token ids, uint8, the split's records concatenated
    DIR/<split>/offsets.i64  int64 (N,): where record i starts in the split's token stream
    DIR/<split>/lengths.i32  int32 (N,): its tokens, <cls> and <eos> included
    DIR/<split>/ids.txt      the FASTA ids (first word of each header), one a line
    DIR/<split>/id_offsets.i64  int64 (N + 1,): where each id starts in ids.txt, then its size

for each split (``train``, ``valid``, ``test``) that has records. Record i is stored as
``ProteinTokenizer().encode(sequence)`` = ``[<cls>, residues..., <eos>]``, records in input order,
so a split's token stream is exactly what the concatenated-window training mode
(:class:`performers.proteins.data.ConcatenatedWindows`) builds in memory. A shard holds whole
records (up to ``shard_tokens`` tokens; a longer record gets a shard of its own), so a record is
always one slice of one map. Every binary file is a raw little-endian array whose dtype, length
and SHA-256 are in the manifest; a reader checks sizes on open (:meth:`PreparedDataset.verify`
checks the hashes of a split, :func:`verify_prepared` — ``performers prepare --verify DIR`` —
those of every file and names each one that changed or is missing).

Why raw arrays and ``numpy.memmap`` rather than Arrow/``datasets``, HDF5 or a database: the data
is one flat stream of small integers plus two integer arrays, which numpy maps with zero copies
and no dependency beyond numpy; ``mmap`` shares pages between DataLoader workers and DDP ranks on
one machine for free; writing is a sequential append (constant memory, fast); and the files are
trivially readable from any language. uint8 holds the 30-token vocabulary (``prepare`` refuses a
tokenizer with ids above 255). Ids are a text file plus an offset array so that a reader holds no
Python string per record.

Splits: from header tags (``split=train|valid|test``, or FLIP's ``SET=train|test`` with
``VALIDATION=True|False``, as :func:`performers.proteins.data.split_of`), from the file
(``{"train": [...], "valid": [...]}``), or, with ``valid_fraction``/``test_fraction``, from a
hash of the sequence: ``u = int.from_bytes(blake2b(sequence, digest_size=8).digest(), "big") /
2**64`` (``sequence`` the cleaned, upper-case ASCII letters :func:`read_fasta` yields); test if
``u < test_fraction``, valid if ``u < test_fraction + valid_fraction``, train otherwise — so a
protein lands in the same split whatever the files and their order. Tags are then ignored.

A repeated FASTA id is allowed (records are addressed by position; the same id from two sources,
or an id reused by a label file, is common in real data, and checking uniqueness would take
memory that grows with the corpus); commands that key their output by id check it themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from performers.proteins.fasta import FastaError, RareMode, header_split, read_fasta_batches
from performers.proteins.prepared_dataset import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SPLITS,
    TOKENIZER,
    PreparedDataset,
    PreparedDatasetError,
    is_prepared,
    read_manifest,
    verify_prepared,
)
from performers.proteins.prepared_writer import SeenSequences, SplitWriter
from performers.proteins.tokenizer import ProteinTokenizer
from performers.utils import atomic_directory, package_version
from performers.utils.errors import InputError
from performers.utils.files import existing_ancestor
from performers.utils.validation import is_int

__all__ = [
    "DEFAULT_SHARD_TOKENS",
    "FORMAT_VERSION",
    "NotEnoughSpaceError",
    "PreparedDataset",
    "PreparedDatasetError",
    "hash_split",
    "is_prepared",
    "prepare",
    "read_manifest",
    "size_estimate",
    "summary",
    "tag_split",
    "verify_prepared",
]

DEFAULT_SHARD_TOKENS = 1 << 28  # 256 MiB per shard: few files, each far below any size limit
_SKIPPED_EXAMPLES = 10  # error messages of skipped records kept per input in the manifest
_PROGRESS_SECONDS = 15.0
Sources = Sequence[str | os.PathLike] | Mapping[str, Sequence[str | os.PathLike] | str | os.PathLike]


def hash_split(sequence: bytes, valid_fraction: float, test_fraction: float) -> str:
    """The split of a sequence (cleaned upper-case ASCII letters) under hash splitting."""
    u = int.from_bytes(hashlib.blake2b(sequence, digest_size=8).digest(), "big") / 2.0**64
    if u < test_fraction:
        return "test"
    return "valid" if u < test_fraction + valid_fraction else "train"


def tag_split(header: str, where: str) -> str:
    """``"train" | "valid" | "test"`` from a header's tags, as :func:`performers.proteins.data.split_of`.

    Raises:
        FastaError: no tag, or a tag naming another split (``where`` is ``file:line``).
    """
    split = header_split(header)
    if split is None:
        raise FastaError(
            f"{where}: record {header.split()[0]!r} has no split tag (split=... or SET=...) in its header; "
            "split by sequence hash (valid_fraction/test_fraction, --valid-fraction/--test-fraction) "
            "or give per-split files (--train/--valid/--test)"
        )
    if split not in SPLITS:
        raise FastaError(f"{where}: record {header.split()[0]!r} has split {split!r}, not one of {SPLITS}")
    return split


def _plan(sources: Sources, valid_fraction: float, test_fraction: float) -> list[tuple[Path, str | None]]:
    """``[(path, split or None)]`` in reading order, checked."""
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(f"valid_fraction + test_fraction must be < 1, got {valid_fraction + test_fraction}")
    if isinstance(sources, Mapping):
        unknown = set(sources) - set(SPLITS)
        if unknown:
            raise ValueError(f"sources: unknown split(s) {sorted(unknown)}; use {SPLITS}")
        if valid_fraction or test_fraction:
            raise ValueError(
                "valid_fraction/test_fraction split by hash; they cannot be combined with per-split files"
            )
        plan = []
        for split, paths in sources.items():
            paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
            plan += [(Path(p), split) for p in paths]
    elif isinstance(sources, (str, os.PathLike)):
        plan = [(Path(sources), None)]
    else:
        plan = [(Path(p), None) for p in sources]
    if not plan:
        raise ValueError("sources: no input file")
    for path, _ in plan:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such FASTA file")
    return plan


def _uncompressed_size(path: Path) -> int:
    """The bytes ``path`` holds once decompressed: its size, or for gzip the size its trailer
    records (modulo 2**32, so at least twice the compressed size: FASTA compresses 2-4x)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b" or size < 18:
            return size
        handle.seek(-4, os.SEEK_END)
        trailer = int.from_bytes(handle.read(4), "little")
    return max(trailer, 2 * size)


def size_estimate(sources: Sources) -> int:
    """Bytes a prepared dataset of ``sources`` will take, about: their uncompressed size (each
    residue becomes one token byte; headers and line ends pay for the ids and the index)."""
    plan = _plan(sources, 0.0, 0.0)
    return sum(_uncompressed_size(path) for path, _ in plan)


class NotEnoughSpaceError(InputError):
    """``prepare`` refused to start: the output's file system has less free space than the
    dataset's size estimate; the message names the directory and both numbers."""


def _check_free_space(out_dir: Path, needed: int) -> None:
    place = existing_ancestor(out_dir)
    free = shutil.disk_usage(place).free
    if free < needed:
        raise NotEnoughSpaceError(
            f"{out_dir}: not enough free space to prepare the data: it needs about {needed:,} bytes "
            f"(the inputs' uncompressed size), {free:,} bytes are free on {place}; free some space "
            "or choose another --out (out_dir)"
        )


def _token_table(tokenizer: ProteinTokenizer) -> bytes:
    """``bytes.translate`` table: an upper-case residue letter → its token id (one byte), what
    ``tokenizer.encode`` gives letter by letter (any other byte → ``<unk>``)."""
    if len(tokenizer) - 1 > np.iinfo(np.uint8).max:
        raise ValueError(
            f"a vocabulary of {len(tokenizer)} tokens does not fit the uint8 token shards (ids <= 255)"
        )
    table = bytearray([tokenizer.unk_id]) * 256
    for letter in tokenizer.residues:
        table[ord(letter)] = tokenizer.encode(letter, add_special_tokens=False)[0]
    return bytes(table)


def prepare(
    sources: Sources,
    out_dir: str | os.PathLike,
    *,
    valid_fraction: float = 0.0,
    test_fraction: float = 0.0,
    dedupe: bool = False,
    skip_invalid: bool = False,
    rare: RareMode = "keep",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Tokenize FASTA files into a prepared dataset directory (format in the module docstring).

    Streaming: memory does not grow with the corpus (records are read in blocks of a few MiB and
    written as they come), except with ``dedupe``, which keeps 16 bytes per unique sequence.
    The directory is assembled next to ``out_dir`` and renamed into place at the end, so a
    failure (or Ctrl-C, or a full disk) never leaves a partial dataset. Before it starts, the
    free space of ``out_dir``'s file system is checked against :func:`size_estimate`.

    Args:
        sources: FASTA paths (plain or gzip) whose splits come from header tags or hash
            fractions, or ``{"train": [paths], "valid": [...], "test": [...]}``.
        out_dir: the directory to create.
        valid_fraction, test_fraction: split by sequence hash (see the module docstring).
        dedupe: drop a record whose sequence equals an earlier one (across all files and
            splits, in reading order: files as given, a mapping's splits in its order).
        skip_invalid: skip a malformed record (illegal character, rejected rare residue, empty
            header or sequence) and count it, instead of failing. Errors of a whole file
            (truncated gzip, binary data, no FASTA at all) still fail.
        rare: ``"keep" | "map" | "reject"`` rare residues, as :func:`read_fasta`.
        shard_tokens: tokens (bytes) per shard file.
        overwrite: replace an existing ``out_dir`` (only once the new one is complete).
        log: progress messages (``None``: silent).

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        FastaError: malformed input (naming file, line and column), a record without a split
            tag when splitting by tags, a truncated or corrupt gzip file, binary data.
        FileExistsError: ``out_dir`` exists and not ``overwrite``.
        NotEnoughSpaceError: less free space than the size estimate (nothing written).
        performers.utils.DiskWriteError: a write refused midway (full disk, quota, size limit,
            read-only): the partial directory is removed, an existing ``out_dir`` is intact.
        FileNotFoundError: a missing input.
        ValueError: bad options, or no record at all.
    """
    plan = _plan(sources, valid_fraction, test_fraction)
    if not is_int(shard_tokens) or shard_tokens < 1:
        raise ValueError(f"shard_tokens must be a positive integer, got {shard_tokens!r}")
    if rare not in ("keep", "map", "reject"):
        raise ValueError(f"rare must be 'keep', 'map' or 'reject', got {rare!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True / --overwrite to replace it)")
    say = log or (lambda message: None)
    # Refuse at once rather than fail hours in (an --overwrite keeps the old copy until the end).
    needed = sum(_uncompressed_size(path) for path, _ in plan)
    _check_free_space(out_dir, needed)
    tokenizer = ProteinTokenizer()
    job = _Job(tokenizer, valid_fraction, test_fraction, dedupe, skip_invalid, rare, shard_tokens, say)
    start = time.perf_counter()
    with (
        atomic_directory(out_dir, replace=overwrite, size=needed) as tmp,
        contextlib.ExitStack() as cleanup,
    ):
        job.root = tmp
        cleanup.callback(job.abort)  # close open files if anything fails (no-op after finish)
        inputs = [job.read(path, split) for path, split in plan]
        splits = job.finish()
        records = sum(s["records"] for s in splits.values())
        if records == 0:
            raise ValueError(f"no records in {', '.join(str(p) for p, _ in plan)}: nothing to prepare")
        tokenizer.save(tmp / TOKENIZER)
        seconds = time.perf_counter() - start
        residues = sum(s["residues"] for s in splits.values())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_with": f"performers {package_version()}",
            "tokenizer": TOKENIZER,
            "token_dtype": "uint8",
            "vocab_size": len(tokenizer),
            "options": job.options(),
            "inputs": inputs,
            "splits": splits,
            "totals": {
                "records": records,
                "residues": residues,
                "skipped": sum(i["skipped"] for i in inputs),
                "duplicates_removed": sum(s["duplicates_removed"] for s in splits.values()),
            },
            "seconds": round(seconds, 3),
            "residues_per_second": round(residues / max(seconds, 1e-9)),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    say(summary(manifest, out_dir))
    return manifest


class _Job:
    """The state of one ``prepare`` run: split writers, the duplicate set, counters."""

    def __init__(
        self, tokenizer, valid_fraction, test_fraction, dedupe, skip_invalid, rare, shard_tokens, say
    ):
        self.tokenizer, self.table = tokenizer, _token_table(tokenizer)
        self.valid_fraction, self.test_fraction = valid_fraction, test_fraction
        self.by_hash = bool(valid_fraction or test_fraction)
        self.seen = SeenSequences() if dedupe else None
        self.skip_invalid, self.rare, self.shard_tokens, self.say = skip_invalid, rare, shard_tokens, say
        self.root: Path | None = None
        self.writers: dict[str, SplitWriter] = {}
        self.split_by = "tags"

    def writer(self, split: str) -> SplitWriter:
        if split not in self.writers:
            tok = self.tokenizer
            self.writers[split] = SplitWriter(self.root, split, self.shard_tokens, tok.cls_id, tok.eos_id)
        return self.writers[split]

    def read(self, path: Path, fixed: str | None) -> dict:
        """Stream one input file into the split writers; its manifest entry."""
        digest, size = hashlib.sha256(), 0
        skipped: list[str] = []
        records = residues = duplicates = 0
        started = last = time.perf_counter()
        if fixed is not None:
            self.split_by = "files"
        elif self.by_hash:
            self.split_by = "hash"

        def on_raw(block: bytes) -> None:
            nonlocal size
            digest.update(block)
            size += len(block)

        def on_invalid(error: FastaError) -> None:
            skipped.append(str(error))

        batches = read_fasta_batches(
            path, rare=self.rare, on_invalid=on_invalid if self.skip_invalid else None, on_raw=on_raw
        )
        for batch in batches:
            if fixed is not None:
                splits = [fixed] * len(batch)
            elif self.by_hash:
                splits = [hash_split(r.sequence, self.valid_fraction, self.test_fraction) for r in batch]
            else:
                splits = [tag_split(r.header, f"{path}:{r.line}") for r in batch]
            keep = (
                self.seen.first_seen([SeenSequences.digest(r.sequence) for r in batch])
                if self.seen is not None
                else None
            )
            table = self.table
            for k, (record, split) in enumerate(zip(batch, splits, strict=True)):
                writer = self.writer(split)
                if keep is not None and not keep[k]:
                    writer.duplicates_removed += 1
                    duplicates += 1
                    continue
                writer.add(record.sequence.translate(table), record.header.split(maxsplit=1)[0])
                records += 1
                residues += len(record.sequence)
            if time.perf_counter() - last > _PROGRESS_SECONDS:
                last = time.perf_counter()
                self.say(
                    f"  {path}: {records:,} records, {residues / (last - started):,.0f} residues/s so far"
                )
        seconds = time.perf_counter() - started
        self.say(
            f"read {path}: {records:,} records, {residues:,} residues ({len(skipped)} skipped, "
            f"{duplicates} duplicates removed) in {seconds:.1f} s"
        )
        return {
            "path": str(path),
            "split": fixed,
            "bytes": size,
            "sha256": digest.hexdigest(),
            "records": records,
            "residues": residues,
            "skipped": len(skipped),
            "skipped_examples": skipped[:_SKIPPED_EXAMPLES],
            "duplicates_removed": duplicates,
        }

    def finish(self) -> dict[str, dict]:
        splits = {name: self.writers.pop(name).close() for name in SPLITS if name in self.writers}
        return splits

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()
        self.writers.clear()

    def options(self) -> dict:
        return {
            "split_by": self.split_by,
            "valid_fraction": self.valid_fraction,
            "test_fraction": self.test_fraction,
            "split_hash": "blake2b(sequence, digest_size=8) as a big-endian fraction of 2**64"
            if self.by_hash
            else None,
            "dedupe": self.seen is not None,
            "dedupe_key": "blake2b(sequence, digest_size=16)" if self.seen is not None else None,
            "dedupe_memory_bytes_per_unique_sequence": SeenSequences.BYTES_PER_SEQUENCE
            if self.seen is not None
            else 0,
            "skip_invalid": self.skip_invalid,
            "rare": self.rare,
            "shard_tokens": self.shard_tokens,
        }


def summary(manifest: dict, directory: str | os.PathLike | None = None) -> str:
    """A few lines saying what a prepared dataset holds (what ``performers prepare`` prints)."""
    totals = manifest["totals"]
    where = f" in {directory}" if directory is not None else ""
    lines = [
        f"prepared {totals['records']:,} records, {totals['residues']:,} residues{where} "
        f"({manifest['seconds']:.1f} s, {manifest['residues_per_second']:,} residues/s; "
        f"{totals['skipped']} skipped, {totals['duplicates_removed']} duplicates removed)"
    ]
    for name, split in manifest["splits"].items():
        lines.append(
            f"  {name:5s}: {split['records']:>12,} records {split['residues']:>15,} residues "
            f"{len(split['shards'])} shard(s)"
        )
    return "\n".join(lines)
