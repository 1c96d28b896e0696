"""The ``performers`` command line: one module per command (``add_parser`` + ``run``), each a thin
layer that parses, calls a documented function of a package below and prints.

Commands: ``demo``, ``prepare``, ``train``, ``evaluate``, ``embed``, ``score``, ``generate``,
``finetune``, ``predict`` (proteins), ``convert``, ``diagnose`` (FAVOR's error on a model's own attention),
``distill`` (Hugging Face models), ``bench ...`` (measurements). Commands never import each
other: what two share lives in :mod:`performers.cli.options` (option groups, model and FASTA
loading), :mod:`performers.cli.favor_options` (the FAVOR options, declared once) and
:mod:`performers.cli.common` (parser, help format, errors); ``--config FILE`` is
:mod:`performers.cli.config_file`.

Errors, one path (:mod:`performers.cli.common`): a command raises; a user error
(:data:`~performers.cli.common.USER_ERRORS`: a missing or unreadable file, malformed FASTA, a
model directory that cannot be loaded as written, an unsupported model family, an option the
model cannot honour, a refused resume, ...) is printed as one line on stderr,
``performers CMD: error: MESSAGE``, with exit status 2 and no traceback; anything else is a bug
and keeps its traceback. ``performers --debug CMD ...`` (or ``PERFORMERS_DEBUG=1``) shows the
traceback of every error. A run stopped by SIGTERM, SIGINT or SIGUSR1
(:class:`~performers.training.Preempted`: ``train``, ``finetune``, ``distill``) prints where its
checkpoint is and the command that resumes it, and exits with the signal's documented status
(:data:`~performers.training.EXIT_STATUS`: 0 for SIGUSR1, 128 + N otherwise). A command line
that cannot be parsed (an unknown option, a value that is not a number) gives the same one line
and status 2.

Adding a command: a module ``performers/cli/NAME.py`` with ``HELP``, ``add_parser(subparsers)``
(options from the helpers above; ``--help`` shows each default) and ``run(args) -> int`` that
calls one documented function of :mod:`performers.jobs` (or below) and prints; it raises
:class:`~performers.cli.common.UsageError` (or lets the library's typed errors through) for what
the user must fix. Add it to :data:`COMMANDS` and to the ``cli-commands`` import-linter contract.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

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
    predict,
    prepare,
    score,
    train,
)
from performers.cli.common import USER_ERRORS, CommandParser, register
from performers.cli.config_file import with_config_file
from performers.training import Preempted

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
    predict,
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


def _debug(args: argparse.Namespace | None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("PERFORMERS_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run ``performers ARGV`` (default ``sys.argv[1:]``); returns the exit status.

    A user error (:data:`~performers.cli.common.USER_ERRORS`) is printed as one line on stderr,
    ``performers CMD: error: MESSAGE``, and returns 2 (``--debug``: raised with its traceback);
    other exceptions propagate (bugs). A run stopped by a signal returns its status
    (:attr:`~performers.training.Preempted.exit_status`) after one line on how to resume.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's own parser: "performers CMD: error: ..."
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if getattr(args, "config", None):
            args = with_config_file(parser, argv, args)
        args.argv = argv
        torch.set_num_threads(max(1, torch.get_num_threads()))
        return args.run(args)
    except USER_ERRORS as error:
        if _debug(args):
            raise
        print(f"{args.command_parser.prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Preempted as stopped:
        if os.environ.get("RANK", "0") == "0":  # one line per job, not one per process
            resume = _resume_command(argv)
            print(f"{args.command_parser.prog}: {stopped}; resume with: {resume}", file=sys.stderr)
        return stopped.exit_status


def _resume_command(argv: list[str]) -> str:
    """``argv`` as the command that continues its run: ``--resume`` instead of ``--overwrite``."""
    kept = [a for a in argv if a != "--overwrite"]
    return shlex.join(["performers", *kept, *([] if "--resume" in kept else ["--resume"])])


def _one_line(error: BaseException) -> str:
    """The error's message on one line (an OSError's includes its file name), never empty."""
    text = str(error)
    if "\n" in text:
        text = " ".join(text.split())
    return text or type(error).__name__
