"""An exclusive lock on a directory, held by one process at a time (a run's output directory).

The lock is ``fcntl.flock`` on ``<directory>/.lock``: the kernel releases it when its holder
ends, however it ends (``kill -9`` included), so a lock can never outlive its run. The file
records the holder (pid, host, start time) for the message a second process gets, and is
emptied on a clean release: a lock taken over a non-empty file is the lock of a run that was
killed (*stale*), which :class:`DirectoryLock` reports as such.

Within one process the lock is re-entrant (a command may lock its output directory around the
training loop, which locks it again). ``flock`` works on local file systems and on NFS
(Linux emulates it with POSIX locks there); on a platform without ``fcntl`` no lock is taken.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from performers.utils.errors import InputError

__all__ = ["LOCK_NAME", "DirectoryLock", "DirectoryLockedError"]

LOCK_NAME = ".lock"
# A killed run's loader workers (forked: they share its open lock file) may hold the lock for a
# few seconds after it died; wait this long for them before giving up.
ORPHAN_GRACE_SECONDS = 15.0

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]


class DirectoryLockedError(InputError):
    """Another process holds the directory's lock; the message names its pid and host."""

    def __init__(self, directory: Path, holder: dict[str, Any], note: str = "") -> None:
        self.directory, self.holder = directory, holder
        who = describe_holder(holder) + note
        super().__init__(
            f"{directory}: in use by another run ({who}); wait for it to end or choose another directory"
        )


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host h since 2024-01-01T00:00:00`` (or what the lock file tells of it)."""
    if not holder:
        return "holder unknown: it is just starting"
    since = f" since {holder['started']}" if holder.get("started") else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


class _Held:
    """A lock this process holds: its open file and how many times it was entered."""

    def __init__(self, fd: int) -> None:
        self.fd, self.count = fd, 1


_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder recorded in the lock file ({} when empty or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    if not text:
        return {}
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "note": "unreadable lock file"}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())


def _gone(holder: dict[str, Any]) -> bool:
    """Whether the recorded holder is a process of this host that no longer exists."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


class DirectoryLock:
    """``with DirectoryLock(directory):`` — hold ``directory``'s lock for the block.

    Raises :class:`DirectoryLockedError` at once when another process holds it (after a short
    grace period when the recorded holder is a dead process of this host whose children still
    hold it). After entering, ``stale`` is the record of a killed run whose lock was taken
    over (``{}`` otherwise).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.stale: dict[str, Any] = {}

    def acquire(self) -> None:
        """Take the lock (see the class docstring)."""
        if fcntl is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        key = str(self.directory.resolve())
        with _GUARD:
            held = _HELD.get(key)
            if held is not None:
                held.count += 1
                return
            fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                self._lock(fd)
                self.stale = _read_holder(fd)
                _write_holder(fd)
            except BaseException:
                os.close(fd)
                raise
            _HELD[key] = _Held(fd)

    def _lock(self, fd: int) -> None:
        deadline = None
        while not _try_flock(fd):
            holder = _read_holder(fd)
            if not _gone(holder):
                raise DirectoryLockedError(self.directory, holder)
            deadline = deadline or time.monotonic() + ORPHAN_GRACE_SECONDS
            if time.monotonic() > deadline:
                raise DirectoryLockedError(
                    self.directory, holder, note=", which ended: its child processes still hold the lock"
                )
            time.sleep(0.2)

    def release(self) -> None:
        """Leave the lock; the last exit of this process empties the file and unlocks it."""
        if fcntl is None:
            return
        key = str(self.directory.resolve())
        with _GUARD:
            held = _HELD.get(key)
            if held is None:
                return
            held.count -= 1
            if held.count:
                return
            del _HELD[key]
            try:
                os.ftruncate(held.fd, 0)  # an empty file: released cleanly (not stale)
                fcntl.flock(held.fd, fcntl.LOCK_UN)
            finally:
                os.close(held.fd)

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
