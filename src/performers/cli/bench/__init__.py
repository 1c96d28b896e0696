"""``performers bench ...``: the reproducible measurements, one module per command."""

from __future__ import annotations

import argparse

from performers.cli.bench import (
    approximation,
    compat,
    compile_speed,
    context_parallel,
    embed_score,
    esm_fidelity,
    esm_long,
    gb1_zero_shot,
    generate,
    gpu,
    loader,
    packed_jobs,
    packed_ops,
    packing,
    paper,
    pll,
    prepare,
    proteins,
    speed,
)
from performers.cli.common import register

HELP = "reproducible measurements"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help=HELP, description=HELP)
    bench = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    modules = (
        approximation,
        generate,
        speed,
        compile_speed,
        compat,
        embed_score,
        esm_long,
        esm_fidelity,
        prepare,
        loader,
        gb1_zero_shot,
        context_parallel,
        gpu,
        packing,
        pll,
        packed_ops,
        packed_jobs,
    )
    for module in modules:
        register(module.add_parser(bench), module.run)
    proteins.add_parsers(bench)
    paper.add_parsers(bench)
    return parser
