"""The software and hardware a measurement ran on, recorded next to its numbers, and the C
library allocator settings the memory measurements run under."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator

import torch

__all__ = ["WORKING_SET_ALLOCATOR", "allocations_returned_to_the_os", "allocator_settings", "environment"]

# glibc returns every allocation of 64 KiB or more to the OS (read at process start): a fresh
# process's peak resident memory is then its working set, not what the allocator keeps for reuse.
WORKING_SET_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def environment() -> dict:
    """torch and Python versions, machine, processor, CPU count and torch threads."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def allocator_settings() -> dict[str, str]:
    """The glibc allocator variables of this process (``MALLOC_MMAP_THRESHOLD_``, ...)."""
    return {name: value for name, value in sorted(os.environ.items()) if name.startswith("MALLOC_")}


@contextlib.contextmanager
def allocations_returned_to_the_os() -> Iterator[None]:
    """:data:`WORKING_SET_ALLOCATOR` in the environment of the processes spawned inside; the
    variables are restored after."""
    saved = {name: os.environ.get(name) for name in WORKING_SET_ALLOCATOR}
    os.environ.update(WORKING_SET_ALLOCATOR)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
