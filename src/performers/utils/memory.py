"""Small helpers shared by the benchmarks and the training job."""

from __future__ import annotations

from pathlib import Path

__all__ = ["peak_rss_reset", "rss_kib"]


def rss_kib(key: str = "VmRSS") -> int:
    """A ``/proc/self/status`` memory field in KiB (``VmRSS`` now, ``VmHWM`` the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_rss_reset() -> int:
    """Reset the peak resident set (Linux ``clear_refs``) and return the current RSS in KiB.

    After this, ``rss_kib("VmHWM") - returned`` is the growth of the peak since the call.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return rss_kib("VmRSS")
