"""Atomic, durable file writes and safe tensor reads.

* A file is written to a temporary name next to its destination, flushed to disk and moved into
  place with ``os.replace`` (atomic on POSIX and Windows): a crash leaves the old file or the new
  one, never a partial file. A directory (a checkpoint, a prepared dataset) is assembled in a
  temporary directory and renamed into place the same way.
* Temporary files and directories are created private (``tempfile`` uses mode 0600 / 0700);
  before the rename they get the permissions a plain ``open`` / ``mkdir`` would have given under
  the user's umask, so a shared model directory stays readable by colleagues.
* A write the file system refuses — no space (``ENOSPC``), quota (``EDQUOT``), a file size
  limit (``EFBIG``, e.g. ``ulimit -f``), a read-only or unwritable directory (``EROFS``,
  ``EACCES``, ``EPERM``) — removes its temporary file or directory, leaves the destination as
  it was, and raises :class:`DiskWriteError` (an ``OSError``) naming the destination, the bytes
  the write needed and the bytes free there. :func:`append_line` gives an appended line the same
  guarantee: the file is cut back to its earlier bytes.
* Tensors are read from safetensors only: loading never unpickles, so a file cannot run code.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from torch import Tensor

__all__ = [
    "WRITE_ERRNOS",
    "DiskWriteError",
    "append_line",
    "atomic_directory",
    "atomic_write",
    "disk_write_errors",
    "existing_ancestor",
    "load_safetensors",
    "sha256",
    "write_csv",
]

# The errors of a write the file system refuses for lack of room or permission (not a bug, not
# a missing input): they become a DiskWriteError.
WRITE_ERRNOS = frozenset(
    code
    for code in (
        errno.ENOSPC,
        getattr(errno, "EDQUOT", None),  # absent on Windows
        errno.EFBIG,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
    )
    if code is not None
)
# Libraries written in Rust (safetensors) report an I/O error as their own exception type whose
# message ends with Rust's "(os error N)": the errno is read back from it.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class DiskWriteError(OSError):
    """A file or directory that could not be written: no space, quota, a file size limit, a
    read-only or unwritable place (:data:`WRITE_ERRNOS`). Whatever was there before is intact and
    the partial write was removed.

    Attributes:
        path: the destination that was not written.
        needed: the bytes the write needed (at least; None when unknown).
        free: the bytes free on the destination's file system (None when unknown).
        errno, strerror: those of the underlying error.
        writer: None when this process made the write; else the process of a distributed job
            that did (``"rank 0"``), whose failure this process stops with.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        code: int,
        reason: str,
        needed: int | None,
        free: int | None,
        writer: str | None = None,
    ):
        super().__init__(code, reason, str(path))
        self.path, self.needed, self.free, self.writer = Path(path), needed, free, writer

    def __str__(self) -> str:
        need = f"about {self.needed:,} bytes" if self.needed is not None else "an unknown number of bytes"
        free = f"{self.free:,} bytes are free there" if self.free is not None else "free space unknown"
        what = (
            f"{self.path}: cannot be written"
            if self.writer is None
            else f"{self.writer} could not write {self.path}"
        )
        return (
            f"{what} ({self.strerror}): it needs {need}, {free}; "
            "earlier files are intact and the partial write was removed"
        )

    def __reduce__(self):  # pickled across processes (DataLoader workers, multiprocessing)
        return type(self), (self.path, self.errno, self.strerror, self.needed, self.free, self.writer)


def _write_errno(error: BaseException) -> int | None:
    """The errno of ``error`` when it is a refused write (:data:`WRITE_ERRNOS`), else None."""
    if isinstance(error, OSError):
        code = error.errno
    else:
        match = _RUST_OS_ERROR.search(str(error))
        code = int(match.group(1)) if match else None
    return code if code in WRITE_ERRNOS else None


def _is_within(error: BaseException, within) -> bool:
    """Whether ``error`` is about a file under ``within`` (or names no file: a write error)."""
    name = getattr(error, "filename", None)
    if within is None or not isinstance(name, (str, os.PathLike)):
        return True
    places = within if isinstance(within, tuple) else (within,)
    file = Path(os.path.abspath(name))
    return any(file.is_relative_to(os.path.abspath(place)) for place in places)


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    try:
        return shutil.disk_usage(existing_ancestor(path)).free
    except OSError:
        return None


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` if it exists, else its nearest existing parent (where it would be created)."""
    place = Path(os.path.abspath(path))
    while not place.exists() and place.parent != place:
        place = place.parent
    return place


def _bytes_under(path: Path) -> int:
    """Bytes of the file ``path`` or of every file under the directory ``path`` (0 if gone)."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except OSError:
        return 0


@contextlib.contextmanager
def disk_write_errors(
    path: str | os.PathLike,
    needed: int | Callable[[], int | None] | None = None,
    *,
    within: str | os.PathLike | tuple[str | os.PathLike, ...] | None = None,
) -> Iterator[None]:
    """Inside: a refused write (:data:`WRITE_ERRNOS`, from Python or from safetensors) becomes a
    :class:`DiskWriteError` naming ``path``, ``needed`` bytes (a number, or a function called
    only on failure) and the free bytes. The caller removes its own partial files.

    ``within``: where the writes go (a path or a tuple of them); an error naming a file elsewhere
    (an unreadable input read inside the block) passes unchanged."""
    try:
        yield
    except DiskWriteError:
        raise
    except Exception as error:
        code = _write_errno(error)
        if code is None or not _is_within(error, within):
            raise
        reason = error.strerror if isinstance(error, OSError) and error.strerror else os.strerror(code)
        size = needed() if callable(needed) else needed
        raise DiskWriteError(path, code, reason, size, _free_bytes(Path(path))) from error


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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, size: int | None = None) -> None:
    """Run ``write(tmp)`` on a temporary file next to ``path``, fsync it, move it onto ``path``.

    The file gets mode ``0o666 & ~umask`` (what ``open(path, "w")`` gives); if ``write`` raises,
    ``path`` is untouched and the temporary file is removed. ``size``: the bytes the file will
    have, for the message of a refused write (default: what was written before it failed).

    Raises:
        DiskWriteError: the file system refused the write (no space, quota, size limit,
            read-only or unwritable directory).
    """
    path = Path(path)
    tmp: Path | None = None
    written = 0

    def needed() -> int:
        return size if size is not None else written

    with disk_write_errors(path, needed, within=path.parent):
        try:
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            tmp = Path(tmp_name)
            write(tmp)
            _fsync_file(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            if tmp is not None:
                written = _bytes_under(tmp)
                tmp.unlink(missing_ok=True)
            raise
    _fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, *, replace: bool = False, size: int | None = None
) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it to ``path`` when the block exits.

    Usage::

        with atomic_directory(out) as tmp:
            (tmp / "meta.json").write_text(...)

    Every file written inside is fsynced before the rename. If the block raises, the temporary
    directory is removed and ``path`` is untouched. An existing ``path`` is an error unless
    ``replace`` (then it is removed just before the rename). ``size``: the bytes the directory
    will hold, for the message of a refused write (default: what was written before it failed).

    Raises:
        DiskWriteError: the file system refused a write inside (or the directory itself).
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(f"{path}: already exists")
    written = 0

    def needed() -> int:
        return size if size is not None else written

    with disk_write_errors(path, needed, within=path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    # Only errors about files in the new directory (or its destination) are refused writes: the
    # block may read inputs that sit next to it.
    with disk_write_errors(path, needed, within=(tmp, path)):
        try:
            yield tmp
            _finish_directory(tmp, path, replace)
        except BaseException:
            written = _bytes_under(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _fsync_directory(path.parent)


def _finish_directory(tmp: Path, path: Path, replace: bool) -> None:
    """Fsync and chmod what ``tmp`` holds, then rename it to ``path`` (see :func:`atomic_directory`)."""
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


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` (a newline added) to the text file ``path`` and flush it.

    A refused write cuts the file back to the bytes it had, so no torn line is left.

    Raises:
        DiskWriteError: the file system refused the write (no space, quota, size limit,
            read-only directory).
    """
    path = Path(path)
    data = memoryview((line + "\n").encode())
    with disk_write_errors(path, len(data), within=path.parent):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            before = os.fstat(fd).st_size
            try:
                while data:  # unbuffered: nothing is left in a buffer to be written on close
                    data = data[os.write(fd, data) :]
            except BaseException:
                with contextlib.suppress(OSError):  # the append's own error is the one to report
                    os.ftruncate(fd, before)
                raise
        finally:
            os.close(fd)


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
