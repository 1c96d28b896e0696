"""Prepared datasets made on first use: FASTA files → a cached prepared directory.

``performers train --train FILE.fasta --valid FILE.fasta`` prepares the files once (see
:func:`performers.proteins.prepared.prepare`) into ``ROOT/prepared/<key>``, ``ROOT`` being
``--cache-dir`` (``root``), else ``$PERFORMERS_CACHE``, else ``~/.cache/performers``, where the
key is a SHA-256 of the files' absolute paths, sizes and modification times and of the options:
a later run on the same, unchanged files reuses it; a changed file gets a new one. Two processes
preparing the same key at once are safe: the dataset appears by an atomic rename, and the loser
of the race uses the winner's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from performers.proteins.prepared import prepare
from performers.proteins.prepared_dataset import FORMAT_VERSION, is_prepared

__all__ = ["cache_root", "prepared_cache"]


def cache_root() -> Path:
    """``$PERFORMERS_CACHE``, or ``~/.cache/performers``."""
    return Path(os.environ.get("PERFORMERS_CACHE") or Path.home() / ".cache" / "performers")


def prepared_cache(
    splits: Mapping[str, Sequence[str | os.PathLike]],
    *,
    rare: str = "keep",
    root: str | os.PathLike | None = None,
    log=print,
) -> Path:
    """The prepared dataset of ``{"train": [paths], "valid": [...], "test": [...]}``, made on first
    use under ``root`` (default :func:`cache_root`) and reused while the files are unchanged;
    ``log`` says which and where. Returns its directory.

    Raises:
        FileNotFoundError: a file does not exist.
        FastaError / ValueError: as :func:`performers.proteins.prepared.prepare`.
    """
    identity = {"format_version": FORMAT_VERSION, "rare": rare, "splits": {}}
    for split, paths in splits.items():
        entries = []
        for path in paths:
            path = Path(path).resolve()
            stat = path.stat()  # FileNotFoundError names the path
            entries.append([str(path), stat.st_size, stat.st_mtime_ns])
        identity["splits"][split] = entries
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    directory = Path(root or cache_root()) / "prepared" / key
    if is_prepared(directory):
        log(f"using the cached prepared dataset {directory} (the FASTA files are unchanged)")
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        prepare({split: list(paths) for split, paths in splits.items()}, directory, rare=rare, log=log)
    except OSError:  # FileExistsError, or a rename onto a directory that appeared meanwhile
        if not is_prepared(directory):  # not another process's finished dataset
            raise
    log(f"cached the prepared dataset in {directory} (reused while the FASTA files are unchanged)")
    return directory
