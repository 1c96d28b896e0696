"""The base class of the library's input errors.

:class:`InputError` is a ``ValueError`` that describes the caller's input or environment (a
malformed file, a model directory that cannot be loaded as written, a refused resume, a
directory held by another run ...), not a bug. Every typed error of the library that is about
its input subclasses it (``FastaError``, ``ModelLoadError``, ``CheckpointError``,
``ResumeMismatchError``, ...), so a caller catches them all with one ``except InputError`` —
the command line prints them as one line, ``performers CMD: error: MESSAGE``, with exit status 2.
They stay ``ValueError`` subclasses: ``except ValueError`` keeps catching them.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """An error in the caller's input or environment (the message names the file, field or
    option and what was expected); the base of the library's typed input errors."""
