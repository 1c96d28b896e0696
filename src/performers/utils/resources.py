"""The data shipped inside the package (``performers/data/``): the protein corpus, the FLIP
secondary-structure split and the STS Benchmark, each with its SOURCE.md and licence.

They are package data, found through :mod:`importlib.resources`, so they come with every
install — an editable checkout and a wheel (``pip install .``) alike — and nothing is ever
downloaded at run time.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["package_version", "shipped_data"]


def package_version() -> str:
    """The installed version of ``performers`` (pyproject.toml is its one source)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("performers")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def shipped_data(*parts: str) -> Path:
    """Path of a file or folder under ``performers/data/``, e.g. ``shipped_data("proteins")``.

    Raises:
        FileNotFoundError: the installed package lacks it (the message names the path).
    """
    path = Path(str(resources.files("performers").joinpath("data", *parts)))
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: shipped data file not found in the installed package; performers/data/ "
            "must be part of the installation (reinstall with `pip install .` from a full checkout)"
        )
    return path
