"""``--config FILE`` of every command that takes it: the file's values, checked against the
command's parser, become its defaults.

``--config FILE``: a JSON object of option values (keys as the long options, ``-`` or ``_``),
used as defaults that the command line overrides. Each value is checked against its option as
the command line would be, but by JSON type: ``true``/``false`` for flags (``"no"`` is not a
boolean), integers for integer options (``true`` is not an integer), numbers for float options,
strings for text options, one of the choices where there are choices, a list for options that
take several values, ``null`` only where the option's default is "not set". Unknown keys,
positional arguments and the command's internals (``command``, ``run``, ``config``, ...) are
refused.

A malformed file is a :class:`~performers.cli.common.UsageError` naming the file and the key
(``performers CMD: error: --config FILE: KEY: expected ...``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from performers.cli.common import Option, UsageError
from performers.utils.validation import is_int

__all__ = ["config_defaults", "config_options", "with_config_file"]


# How each declared ``action=`` takes a config value; any other (help, version, store_const,
# a custom Action) cannot be set from a file.
_FLAGS = ("store_true", "store_false", argparse.BooleanOptionalAction)
_VALUES = ("store", "append", "extend")


def config_options(parser: argparse.ArgumentParser) -> dict[str, Option]:
    """The options of ``parser`` (a :class:`~performers.cli.common.CommandParser`) a ``--config``
    file may name, by key: each option's ``dest`` and its long names (``max-length`` and
    ``max_length`` alike). Positional arguments and ``--config`` itself are not among them."""
    options: dict[str, Option] = {}
    for option in getattr(parser, "options", []):
        action = option.action
        if not action.option_strings or action.dest in ("config", "help"):
            continue
        options.setdefault(action.dest, option)  # a hidden alias (same dest) does not replace it
        for name in action.option_strings:
            if name.startswith("--"):
                options[name[2:].replace("-", "_")] = option
    return options


def _positionals(parser: argparse.ArgumentParser) -> set[str]:
    return {o.action.dest for o in getattr(parser, "options", []) if not o.action.option_strings}


def _expected(action: argparse.Action) -> str:
    """What one value of ``action`` must be, in JSON terms."""
    if action.choices is not None:
        return "one of " + ", ".join(json.dumps(c) for c in action.choices)
    if action.type is int:
        return "an integer"
    if action.type is float:
        return "a number"
    if action.type in (None, str):
        return "a string"
    return "a value the command line accepts"


def _config_scalar(action: argparse.Action, key: str, value: Any) -> Any:
    """One value for ``action``, checked by JSON type (never coerced: ``true`` is not 1)."""
    wrong = UsageError(f"{key}: expected {_expected(action)}, got {json.dumps(value)}")
    if value is None:
        if action.default is None:
            return None  # the option's own "not set"
        raise wrong
    if isinstance(value, (bool, list, dict)):
        raise wrong
    if action.type is int:
        if not isinstance(value, int):
            raise wrong
    elif action.type is float:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong
        value = float(value)
    elif action.type in (None, str):
        if not isinstance(value, str):
            raise wrong
    else:  # a parsing function of the command line (e.g. "0 means none"): give it the text
        try:
            value = action.type(str(value))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
            raise UsageError(f"{key}: {error} (got {json.dumps(value)})") from None
    if action.choices is not None and value not in action.choices:
        raise wrong
    return value


def _config_value(option: Option, key: str, value: Any) -> Any:
    """``value`` checked against ``option`` as the command line would check it, or UsageError."""
    action = option.action
    if option.kind in _FLAGS:
        if not isinstance(value, bool):
            raise UsageError(f"{key}: expected true or false (a JSON boolean), got {json.dumps(value)}")
        return value
    if option.kind == "count":
        if not is_int(value) or value < 0:
            raise UsageError(f"{key}: expected a count (an integer >= 0), got {json.dumps(value)}")
        return value
    if option.kind not in _VALUES:
        raise UsageError(f"{key}: cannot be set from a config file")
    several = option.kind != "store" or action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if not several:
        return _config_scalar(action, key, value)
    if not isinstance(value, list):
        raise UsageError(
            f"{key}: expected a list of values ({_expected(action)} each), got {json.dumps(value)}"
        )
    if action.nargs == "+" and not value:
        raise UsageError(f"{key}: expected at least one value, got []")
    return [_config_scalar(action, key, item) for item in value]


def config_defaults(parser: argparse.ArgumentParser, values: dict[str, Any]) -> dict[str, Any]:
    """``{dest: value}`` of a ``--config`` object for the command ``parser``, each value checked
    against its option (see the module docstring).

    Raises:
        UsageError: an unknown key, a positional argument or an internal key, or a value of the
            wrong JSON type or outside the choices (naming the key and what was expected).
    """
    options = config_options(parser)
    unknown = sorted(key for key in values if key.replace("-", "_") not in options)
    if unknown:
        positional = [k for k in unknown if k.replace("-", "_") in _positionals(parser)]
        if positional:
            raise UsageError(f"{', '.join(positional)}: a positional argument; give it on the command line")
        raise UsageError(f"unknown option(s) {', '.join(unknown)} (options of this command: see --help)")
    defaults: dict[str, Any] = {}
    for key, value in values.items():
        option = options[key.replace("-", "_")]
        dest = option.action.dest
        if dest in defaults:
            raise UsageError(f"{key}: option {dest!r} is given twice")
        defaults[dest] = _config_value(option, key, value)
    return defaults


def with_config_file(parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace):
    """Re-parse with the ``--config`` file's values as defaults, so explicit options still win.

    Raises:
        UsageError: the file cannot be read as a JSON object, or a key or value is refused
            (:func:`config_defaults`), naming the file.
    """
    path = Path(args.config)
    command = args.command_parser  # the parser of the (innermost) command
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--config {path}: cannot read a JSON object ({error})") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: expected a JSON object of option values")
    try:
        defaults = config_defaults(command, values)
    except UsageError as error:
        raise UsageError(f"--config {path}: {error}") from None
    command.set_defaults(**defaults)
    return parser.parse_args(argv)
