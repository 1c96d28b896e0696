"""Atomic, durable file writes and safe tensor reads.

* A file is written to a temporary name next to its destination, flushed to disk and moved into
  place with ``os.replace`` (atomic on POSIX and Windows): a crash leaves the old file or the new
  one, never a partial file. A directory (a checkpoint, a prepared dataset) is assembled in a
  temporary directory and renamed into place the same way.
* Temporary files and directories are created private (``tempfile`` uses mode 0600 / 0700);
  before the rename they get the permissions a plain ``open`` / ``mkdir`` would have given under
  the user's umask, so a shared model directory stays readable by colleagues.
* Tensors are read from safetensors only: loading never unpickles, so a file cannot run code.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from torch import Tensor

__all__ = ["atomic_directory", "atomic_write", "load_safetensors", "sha256", "write_csv"]


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once (process-wide, not thread-safe,
    # as every reader of the umask is).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX only)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary file next to ``path``, fsync it, move it onto ``path``.

    The file gets mode ``0o666 & ~umask`` (what ``open(path, "w")`` gives); if ``write`` raises,
    ``path`` is untouched and the temporary file is removed.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it to ``path`` when the block exits.

    Usage::

        with atomic_directory(out) as tmp:
            (tmp / "meta.json").write_text(...)

    Every file written inside is fsynced before the rename. If the block raises, the temporary
    directory is removed and ``path`` is untouched. An existing ``path`` is an error unless
    ``replace`` (then it is removed just before the rename).
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(f"{path}: already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    try:
        yield tmp
        mode = 0o666 & ~_umask()
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_file(file)
                os.chmod(file, mode)
            elif file.is_dir():
                os.chmod(file, 0o777 & ~_umask())
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            if not replace:  # appeared meanwhile (another process): keep it, ours is dropped
                raise FileExistsError(f"{path}: already exists")
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_directory(path.parent)


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the metadata of a safetensors file.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is unreadable (corrupt, truncated, not safetensors); the message
            names it.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:  # safetensors raises its own error types (and OSError for short reads)
        raise ValueError(f"{path}: cannot read the safetensors file (corrupt or truncated?): {err}") from err
    return tensors, metadata


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write ``rows`` (dicts with the same keys) as CSV with a header, atomically; floats at full
    precision. Returns the path.

    Raises:
        ValueError: there is no row.
    """
    path = Path(path)
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path
