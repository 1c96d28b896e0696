"""Small helpers of the command modules."""

from __future__ import annotations

import argparse

__all__ = ["command_text", "register"]


def register(parser: argparse.ArgumentParser, run) -> argparse.ArgumentParser:
    """Make ``parser`` a command: ``args.run`` is ``run`` and ``args.command_parser`` the parser
    itself (``--config`` files set their values on it). Returns ``parser``."""
    parser.set_defaults(run=run, command_parser=parser)
    return parser


def command_text(args: argparse.Namespace) -> str:
    """The command line that produced ``args`` (``performers ...``), to record next to results."""
    return " ".join(["performers", *getattr(args, "argv", [])])
