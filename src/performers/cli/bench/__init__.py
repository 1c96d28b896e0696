"""``performers bench ...``: the reproducible measurements, one module per command."""

from __future__ import annotations

import argparse

from performers.cli.bench import (
    approximation,
    compat,
    embed_score,
    generate,
    loader,
    prepare,
    proteins,
    speed,
    zero_shot,
)
from performers.cli.common import register

HELP = "reproducible measurements"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help=HELP, description=HELP)
    bench = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for module in (approximation, generate, speed, compat, embed_score, prepare, loader, zero_shot):
        register(module.add_parser(bench), module.run)
    proteins.add_parsers(bench)
    return parser
