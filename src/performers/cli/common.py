"""What every command module uses: the parser class, the help format, the one error mechanism,
and the table that names a run description's fields by their options.

Errors — one path. A command reports a user error (a missing or unreadable file, a bad option
value, an unsupported model, malformed data, a refused resume ...) by *raising* it, never by
printing or calling ``sys.exit``: either the library's typed error (every one subclasses
:class:`performers.utils.InputError`, a ``ValueError``) or, for what only the command line can
judge, :class:`UsageError`::

    raise UsageError(f"--out {args.out}: must end in .npz or .safetensors")

:func:`performers.cli.main` catches :data:`USER_ERRORS` and prints one line on stderr,
``performers CMD: error: MESSAGE`` (CMD the command's ``prog``, e.g. ``performers bench
speed``), and returns 2; ``--debug`` or ``PERFORMERS_DEBUG=1`` re-raise it with its traceback.
Anything else is a bug and keeps its traceback. A command line argparse cannot parse (an unknown
option, ``--steps abc``) is the same one line, from :meth:`CommandParser.error`.
:func:`option_error` turns a library ``ValueError`` about a config field (``max_steps must be
>= 1``) into a UsageError naming the option (``--steps: max_steps must be >= 1``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

from performers.training.collective import RankFailedError
from performers.utils import InputError

__all__ = [
    "USER_ERRORS",
    "CommandParser",
    "HelpFormatter",
    "Option",
    "RawHelpFormatter",
    "UsageError",
    "add_hidden_alias",
    "add_num_features_sweep",
    "command_text",
    "option_error",
    "option_names",
    "options_named",
    "register",
    "user_errors_named",
]


class UsageError(InputError):
    """A command's input that it cannot honour (an option value that does not fit the model or
    the data, options that exclude each other, a malformed ``--config`` value); the message names
    the option and what was expected. The command line prints it as one line and exits with
    status 2."""


# Errors that describe the user's input or environment, not a bug: ``performers CMD`` prints
# them as ``performers CMD: error: MESSAGE`` (no traceback) and exits with 2. InputError covers
# UsageError and every typed input error of the library (FastaError, ModelLoadError,
# CheckpointError, ResumeMismatchError, RunDirectoryError, DirectoryLockedError, ...).
USER_ERRORS: tuple[type[BaseException], ...] = (
    InputError,  # every typed input error of the library, ConfigError included
    OSError,  # a missing, unreadable or unwritable file (FileNotFoundError, PermissionError, ...)
    # Another process of a torchrun job failed: that process prints its own error (with the
    # traceback of a bug); this one says in one line that it stopped with it.
    RankFailedError,
)


def option_error(error: BaseException, options: Mapping[str, str], what: str = "") -> UsageError:
    """``error`` (a library ``ValueError``/``TypeError`` whose message starts with a config field,
    e.g. ``max_steps must be >= 1, got -3``) as a :class:`UsageError` that names the option of
    that field in ``options`` (``{field: "--steps"}``): ``--steps: max_steps must be >= 1, got
    -3``; ``what`` (e.g. ``"training options"``) prefixes a message whose field has no option."""
    message = str(error)
    field = message.split(" ", 1)[0].rstrip(":")
    for key in (field, field.rsplit(".", 1)[-1]):
        if key in options:
            return UsageError(f"{options[key]}: {message}")
    return UsageError(f"{what}: {message}" if what else message)


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` of every command: each option's default is shown, ``(default: X)``, unless its
    help already states it or it has none (None, False, a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or "%(default)" in text
            # `is`, not `in`: 0 == False, and a default of 0 (a seed) is worth showing.
            or any(action.default is none for none in (None, False, argparse.SUPPRESS))
            or not action.option_strings
            or text == argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` that keeps the description's line breaks (examples, columns)."""


class Option(NamedTuple):
    """An argument a :class:`CommandParser` defined: the ``Action`` that ``add_argument`` returned
    and the ``action=`` it was declared with (``"store"`` when none was given)."""

    action: argparse.Action
    kind: Any


class _Group:
    """An argument group of a :class:`CommandParser` that records its arguments in the parser's."""

    def __init__(self, group: Any, options: list[Option]) -> None:
        self._group, self._options = group, options

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = self._group.add_argument(*args, **kwargs)
        self._options.append(Option(action, kwargs.get("action", "store")))
        return action

    def __getattr__(self, name: str) -> Any:
        if name == "_group":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self._group, name)


class CommandParser(argparse.ArgumentParser):
    """The parser of the command line and of every command: an ``ArgumentParser`` that also
    lists the arguments it defines (:attr:`options`, groups included), with the ``action=`` each
    was declared with, so a ``--config`` file can be checked against them through argparse's
    public API. Subcommand parsers are of this class too (``add_subparsers`` makes its own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.options: list[Option] = []  # before __init__, which adds --help
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.options.append(Option(action, kwargs.get("action", "store")))
        return action

    def error(self, message: str):  # type: ignore[override]
        """A command line argparse cannot parse (an unknown option, a value of the wrong type):
        one line, ``performers CMD: error: MESSAGE``, like every user error; exit status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Any:
        return _Group(super().add_argument_group(*args, **kwargs), self.options)

    def add_mutually_exclusive_group(self, **kwargs: Any) -> Any:
        return _Group(super().add_mutually_exclusive_group(**kwargs), self.options)


def register(parser: argparse.ArgumentParser, run) -> argparse.ArgumentParser:
    """Make ``parser`` a command: ``args.run`` is ``run`` and ``args.command_parser`` the parser
    itself (``--config`` files set their values on it). Returns ``parser``."""
    parser.set_defaults(run=run, command_parser=parser)
    return parser


def command_text(args: argparse.Namespace) -> str:
    """The command line that produced ``args`` (``performers ...``), to record next to results."""
    return " ".join(["performers", *getattr(args, "argv", [])])


def option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{dest: "--option"}`` of every option of ``parser``: the first long option string shown
    in ``--help`` (a hidden alias such as ``--warmup-steps`` is never the name)."""
    names: dict[str, str] = {}
    for option in getattr(parser, "options", []):
        action = option.action
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        long = [s for s in action.option_strings if s.startswith("--")] or action.option_strings
        names.setdefault(action.dest, long[0])
    return names


def options_named(parser: argparse.ArgumentParser, fields: Mapping[str, str]) -> dict[str, str]:
    """``{key: "--option"}`` for ``fields`` = ``{key: dest}`` (e.g. ``{"training.max_steps":
    "steps"}``): the table that names a run description's fields (or a config's) by the options
    of ``parser`` that set them, derived from the parser. Keys whose dest is not an option of
    ``parser`` are left out."""
    names = option_names(parser)
    return {key: names[dest] for key, dest in fields.items() if dest in names}


@contextmanager
def user_errors_named(options: Mapping[str, str], what: str = "") -> Iterator[None]:
    """Inside: a library ``ValueError``/``TypeError`` (building a config from options) becomes a
    :class:`UsageError` naming the option (:func:`option_error`); typed input errors pass."""
    try:
        yield
    except InputError:
        raise
    except (TypeError, ValueError) as error:
        raise option_error(error, options, what) from None


def add_hidden_alias(parser, old: str, action: argparse.Action) -> None:
    """Let ``old`` (an earlier spelling) set the same value as ``action``, without showing it in
    ``--help``: one spelling per option across commands, old command lines still work."""
    kwargs = {"nargs": action.nargs, "type": action.type, "choices": action.choices}
    parser.add_argument(old, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def add_num_features_sweep(
    parser,
    default: list[int],
    help: str = "feature counts M to sweep",
    *,
    dest: str = "features",
    aliases: tuple[str, ...] = ("--features",),
) -> None:
    """``--num-features-sweep M [M ...]``: several feature counts, for the commands that sweep M
    (the single ``--num-features`` comes from
    :func:`~performers.cli.favor_options.add_favor_options`); ``aliases`` are earlier spellings,
    kept hidden."""
    action = parser.add_argument(
        "--num-features-sweep",
        dest=dest,
        type=int,
        nargs="+",
        default=default,
        metavar="M",
        help=f"{help} (default: %(default)s)",
    )
    for old in aliases:
        add_hidden_alias(parser, old, action)
