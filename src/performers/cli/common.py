"""Small helpers of the command modules, and what the command line reports as a user error."""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple

from performers.layers import ConfigError
from performers.models import ModelLoadError
from performers.proteins import FastaError, PreparedDatasetError, UnknownResidueError
from performers.training import CheckpointError, ResumeMismatchError, RunDirectoryError
from performers.utils import DirectoryLockedError

__all__ = ["USER_ERRORS", "CommandParser", "Option", "UsageError", "command_text", "register"]


class UsageError(ValueError):
    """A command's input that it cannot honour (an option value that does not fit the model or
    the data, a malformed ``--config`` value); the message names the option and what was
    expected. The command line prints it as one line and exits with status 2."""


# Errors that describe the user's input or environment, not a bug: ``performers CMD`` prints
# them as ``performers CMD: error: MESSAGE`` (no traceback) and exits with 2. Each is raised
# with a message naming the file, option or field. Anything else keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    ConfigError,
    ModelLoadError,
    FastaError,
    PreparedDatasetError,
    UnknownResidueError,
    CheckpointError,
    ResumeMismatchError,
    RunDirectoryError,
    DirectoryLockedError,
    OSError,  # a missing, unreadable or unwritable file (FileNotFoundError, PermissionError, ...)
)


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
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.options.append(Option(action, kwargs.get("action", "store")))
        return action

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
