"""Helpers with no knowledge of attention or models: memory measurement, atomic files,
directory locks, the base of the library's input errors (:class:`InputError`), value checks
(:mod:`~performers.utils.validation`), seed derivation, label conventions and the location of
the data shipped with the package.

This is the bottom of the package: it imports nothing else from ``performers``.
"""

from performers.utils.errors import InputError
from performers.utils.files import (
    DiskWriteError,
    append_line,
    atomic_directory,
    atomic_write,
    load_safetensors,
    sha256,
    write_csv,
)
from performers.utils.labels import IGNORE_INDEX
from performers.utils.locking import DirectoryLock, DirectoryLockedError
from performers.utils.memory import peak_rss_reset, rss_kib
from performers.utils.resources import package_version, shipped_data
from performers.utils.seeding import derive_seed
from performers.utils.validation import ConfigError, is_int, is_number

__all__ = [
    "IGNORE_INDEX",
    "ConfigError",
    "DirectoryLock",
    "DirectoryLockedError",
    "DiskWriteError",
    "InputError",
    "append_line",
    "atomic_directory",
    "atomic_write",
    "derive_seed",
    "is_int",
    "is_number",
    "load_safetensors",
    "package_version",
    "peak_rss_reset",
    "rss_kib",
    "sha256",
    "shipped_data",
    "write_csv",
]
