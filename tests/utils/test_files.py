"""A write the file system refuses (full disk, quota, size limit, read-only directory) through
the atomic writers and :func:`append_line`: the destination keeps its bytes, no temporary file is
left, and the error is a :class:`DiskWriteError` naming the path, the bytes needed and free."""

from __future__ import annotations

import errno
import os
import pickle
import resource
import signal
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from performers.utils import DiskWriteError, append_line, atomic_directory, atomic_write
from performers.utils.files import disk_write_errors

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def free_bytes(monkeypatch):
    """The free space every DiskWriteError reports: 12345 bytes (whatever the real disk has)."""
    monkeypatch.setattr("shutil.disk_usage", lambda path: Usage(10**9, 10**9 - 12345, 12345))
    return 12345


def fail_after(data: bytes):
    """A ``write(tmp)`` that writes ``data`` and then hits a full disk."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        raise ENOSPC

    return write


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_names_path_and_bytes(tmp_path, free_bytes):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old contents")
    with pytest.raises(DiskWriteError) as caught:
        atomic_write(path, fail_after(b"x" * 100), size=4096)
    error = caught.value
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]  # no temporary left
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert (error.path, error.needed, error.free) == (path, 4096, free_bytes)
    assert str(error).startswith(f"{path}: cannot be written (No space left on device)")
    assert "4,096 bytes" in str(error) and "12,345 bytes are free" in str(error)
    # Without a size, what was written before the failure is the lower bound reported.
    with pytest.raises(DiskWriteError, match="about 100 bytes"):
        atomic_write(path, fail_after(b"x" * 100))
    assert pickle.loads(pickle.dumps(error)).needed == 4096  # crosses process boundaries intact


def test_atomic_directory_on_a_full_disk_removes_its_temporary_directory(tmp_path, free_bytes):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "a.txt").write_text("earlier")
    with pytest.raises(DiskWriteError, match=f"^{out}: .*about 7 bytes"):
        with atomic_directory(out, replace=True) as tmp:
            (tmp / "a.txt").write_text("partial")
            raise ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert [p.name for p in out.iterdir()] == ["a.txt"] and (out / "a.txt").read_text() == "earlier"


def test_other_errors_pass_unchanged(tmp_path):
    # Not a refused write, or a refused *read* of a file elsewhere (an input next to the output).
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "x", lambda tmp: open(tmp_path / "missing").read())
    elsewhere = PermissionError(errno.EACCES, "Permission denied", "/some/input.fasta")
    with pytest.raises(PermissionError) as caught:
        with disk_write_errors(tmp_path / "out", 1, within=tmp_path):
            raise elsewhere
    assert caught.value is elsewhere
    assert sorted(tmp_path.iterdir()) == []


def test_a_rust_io_error_is_recognised_by_its_errno(tmp_path, free_bytes):
    # safetensors reports I/O errors as SafetensorError("... (os error 27)").
    class SafetensorError(Exception):
        pass

    with pytest.raises(DiskWriteError, match="File too large") as caught:
        with disk_write_errors(tmp_path / "m.safetensors", 10):
            raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")
    assert caught.value.errno == errno.EFBIG
    with pytest.raises(SafetensorError):
        with disk_write_errors(tmp_path / "m.safetensors", 10):
            raise SafetensorError("Error while serializing: invalid dtype")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_directory_is_a_disk_write_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "f").write_text("kept")
    folder.chmod(0o555)
    try:
        with pytest.raises(DiskWriteError, match="Permission denied"):
            atomic_write(folder / "f", lambda tmp: tmp.write_text("new"))
        with pytest.raises(DiskWriteError, match=f"{folder / 'g'}: "):
            append_line(folder / "g", "{}")
    finally:
        folder.chmod(0o755)
    assert sorted(p.name for p in folder.iterdir()) == ["f"] and (folder / "f").read_text() == "kept"


@pytest.fixture
def file_size_limit():
    """``limit(n)``: this process may write files up to ``n`` bytes (RLIMIT_FSIZE, with SIGXFSZ
    ignored so that a write past it fails with EFBIG instead of killing the process); restored
    after the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    yield lambda n: resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


def test_a_metrics_line_past_a_real_file_size_limit_leaves_no_torn_line(tmp_path, file_size_limit):
    path = tmp_path / "metrics.jsonl"
    append_line(path, '{"step": 1}')
    before = path.read_bytes()
    line = '{"step": 2, "loss": 1.2345678}'
    file_size_limit(len(before) + 10)  # the kernel takes 10 bytes of the line, then refuses
    try:
        with pytest.raises(DiskWriteError) as caught:
            append_line(path, line)
    finally:
        file_size_limit(resource.RLIM_INFINITY)
    assert caught.value.errno == errno.EFBIG and caught.value.needed == len(line) + 1
    assert str(caught.value).startswith(f"{path}: cannot be written (File too large)")
    assert path.read_bytes() == before
    append_line(path, line)  # space again: the file goes on where it was
    assert path.read_text().splitlines() == ['{"step": 1}', line]
