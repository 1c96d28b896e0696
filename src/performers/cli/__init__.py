"""The ``performers`` command line: one module per command (``add_parser`` + ``run``), each a thin
layer over a documented Python function of the library.

Commands: ``demo``, ``prepare``, ``train``, ``evaluate``, ``embed``, ``score``, ``generate``,
``finetune`` (proteins), ``convert``, ``diagnose`` (FAVOR's error on a model's own attention),
``distill`` (Hugging Face models), ``bench ...`` (measurements). The FAVOR options of every
command come from :func:`performers.cli.favor_options.add_favor_options`.

Errors: what describes the user's input (:data:`performers.cli.common.USER_ERRORS`: a missing or
unreadable file, malformed FASTA, a model directory that cannot be loaded as written, an option
the model cannot honour, a refused resume, ...) is printed as one line,
``performers CMD: error: MESSAGE``, with exit status 2; anything else is a bug and keeps its
traceback. ``performers --debug CMD ...`` (or ``PERFORMERS_DEBUG=1``) shows the traceback of
every error.

``--config FILE``: a JSON object of option values (keys as the long options, ``-`` or ``_``),
used as defaults that the command line overrides. Each value is checked against its option as
the command line would be, but by JSON type: ``true``/``false`` for flags (``"no"`` is not a
boolean), integers for integer options (``true`` is not an integer), numbers for float options,
strings for text options, one of the choices where there are choices, a list for options that
take several values, ``null`` only where the option's default is "not set". Unknown keys,
positional arguments and the command's internals (``command``, ``run``, ``config``, ...) are
refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from performers.cli import (
    bench,
    convert,
    demo,
    diagnose,
    distill,
    embed,
    evaluate,
    finetune,
    generate,
    prepare,
    score,
    train,
)
from performers.cli.common import USER_ERRORS, CommandParser, Option, UsageError, register

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = (
    demo,
    prepare,
    train,
    evaluate,
    embed,
    score,
    generate,
    finetune,
    convert,
    distill,
    diagnose,
    bench,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; ``args.run(args)`` runs the chosen one."""
    parser = CommandParser(
        prog="performers", description="Linear-time Transformers with FAVOR+ random-feature attention."
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of every error (also PERFORMERS_DEBUG=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        sub = module.add_parser(commands)
        if module is not bench:  # bench registers its own subcommands
            register(sub, module.run)
    return parser


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
        options[action.dest] = option
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
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
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
    """Re-parse with the ``--config`` file's values as defaults, so explicit options still win."""
    path = Path(args.config)
    command = args.command_parser  # the parser of the (innermost) command
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        command.error(f"--config {path}: cannot read a JSON object ({error})")
    if not isinstance(values, dict):
        command.error(f"--config {path}: expected a JSON object of option values")
    try:
        defaults = config_defaults(command, values)
    except UsageError as error:
        command.error(f"--config {path}: {error}")
    command.set_defaults(**defaults)
    return parser.parse_args(argv)


def _debug() -> bool:
    return os.environ.get("PERFORMERS_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run ``performers ARGV`` (default ``sys.argv[1:]``); returns the exit status.

    A user error (:data:`~performers.cli.common.USER_ERRORS`) is printed as one line on stderr,
    ``performers CMD: error: MESSAGE``, and returns 2; other exceptions propagate (bugs).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        args = with_config_file(parser, argv, args)
    args.argv = argv
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        return args.run(args)
    except USER_ERRORS as error:
        if args.debug or _debug():
            raise
        print(f"{args.command_parser.prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    """The error's message (an OSError's includes its file name), never empty."""
    return str(error) or type(error).__name__
