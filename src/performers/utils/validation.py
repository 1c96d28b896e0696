"""Checks of argument and configuration values, written once for the whole package.

Python's ``bool`` is a subclass of ``int``, so ``isinstance(True, int)`` holds; a count, a size or
a seed of ``True`` is nearly always a mistake, and every check here refuses it. The helpers raise
``TypeError`` for a value of the wrong type and ``ValueError`` for one out of range, with a
message that starts with the name the caller gives (``"FavorConfig.num_features"``,
``"max_new_tokens"``, ...).

:class:`ConfigError` lives here too: the saved configurations of the layers
(:class:`~performers.FavorConfig`) and of the models (:class:`~performers.PerformerConfig`) both
raise it, and both read their format numbers through :func:`check_format`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from performers.utils.errors import InputError

__all__ = [
    "ConfigError",
    "check_format",
    "is_int",
    "is_number",
    "require_choice",
    "require_float",
    "require_int",
]


class ConfigError(InputError):
    """A saved configuration that cannot be read as written: a field that changes the
    computation is missing, or the format is unknown. The message names the field (and the file
    where the caller knows it)."""


def is_int(value: Any) -> bool:
    """Whether ``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite ``int`` or ``float`` and not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``.

    Raises:
        TypeError: not an int (or a bool).
        ValueError: below ``minimum``.
    """
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def require_float(name: str, value: Any, low: float, high: float, *, high_inclusive: bool = False) -> float:
    """``value`` as a float if it is a finite number in ``[low, high)`` (``[low, high]`` with
    ``high_inclusive``).

    Raises:
        TypeError: not a finite number (or a bool).
        ValueError: outside the interval.
    """
    if not is_number(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    inside = low <= value <= high if high_inclusive else low <= value < high
    if not inside:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def require_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_format(declared: Any, known: Iterable[int], *, what: str = "configuration format") -> int:
    """A saved format number ``declared`` if this version reads it, else :class:`ConfigError`
    naming ``what`` and the formats that are read (a newer version may have written it)."""
    known = sorted(known)
    if not is_int(declared) or declared not in known:
        raise ConfigError(
            f"unknown {what} {declared!r}; this version of performers reads formats {known} "
            "(written by a newer version?)"
        )
    return declared
