"""The ``performers`` command line: one module per command (``add_parser`` + ``run``), each a thin
layer over a documented Python function of the library.

Commands: ``demo``, ``prepare``, ``train``, ``evaluate``, ``embed``, ``score``, ``generate``,
``finetune`` (proteins), ``convert``,
``distill`` (Hugging Face models), ``bench ...`` (measurements). The FAVOR options of every
command come from :func:`performers.cli.favor_options.add_favor_options`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from performers.cli import (
    bench,
    convert,
    demo,
    distill,
    embed,
    evaluate,
    finetune,
    generate,
    prepare,
    score,
    train,
)
from performers.cli.common import register

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = (demo, prepare, train, evaluate, embed, score, generate, finetune, convert, distill, bench)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; ``args.run(args)`` runs the chosen one."""
    parser = argparse.ArgumentParser(
        prog="performers", description="Linear-time Transformers with FAVOR+ random-feature attention."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        sub = module.add_parser(commands)
        if module is not bench:  # bench registers its own subcommands
            register(sub, module.run)
    return parser


def with_config_file(parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace):
    """Re-parse with the ``--config`` file's values as defaults, so explicit options still win."""
    path = Path(args.config)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"--config {path}: cannot read a JSON object ({error})")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a JSON object of option values")
    values = {key.replace("-", "_"): value for key, value in values.items()}
    options = {k for k in vars(args) if not k.startswith("_")} - {"run", "command_parser", "command", "bench"}
    unknown = sorted(set(values) - options)
    if unknown:
        parser.error(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    args.command_parser.set_defaults(**values)  # the parser of the (innermost) command
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run ``performers ARGV`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        args = with_config_file(parser, argv, args)
    args.argv = argv
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return args.run(args)
