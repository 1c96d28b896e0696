"""``performers demo``: the main job — a FAVOR+ protein LM and its exact-softmax twin, trained and
compared on the shipped corpus (:func:`performers.jobs.compare`)."""

from __future__ import annotations

import argparse
import time

from performers.cli.options import (
    add_training_options,
    check_output_dir,
    compute_device,
    data_from_args,
    model_config_from_args,
    training_config_from_args,
)
from performers.jobs import DEMO_MODEL, compare

HELP = "the main job: a FAVOR+ protein LM and its exact-softmax twin, trained and compared"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("demo", help=HELP, description=HELP)
    add_training_options(parser, steps=150, out="runs/demo", favor=DEMO_MODEL.favor, device=True)
    return parser


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out)
    device = compute_device(args)
    start = time.perf_counter()
    report = compare(
        model_config_from_args(args),
        training_config_from_args(args),
        out_dir=args.out,
        corpus=data_from_args(args),
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        device=device,
    )
    print(report)
    print(
        f"wrote {args.out}/report.md, report.json, learning_curves.png in {time.perf_counter() - start:.0f}s"
    )
    return 0
