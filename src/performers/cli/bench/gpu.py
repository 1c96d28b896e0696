"""``performers bench gpu``: the CUDA tests and FAVOR attention's speed and memory on one GPU
against SDPA-flash, flash-linear-attention and performer-pytorch (:mod:`performers.bench.gpu`)."""

from __future__ import annotations

import argparse
import shlex
import sys

from performers.cli.common import UsageError, add_num_features_sweep

HELP = "GPU suite: CUDA tests, Triton kernels vs SDPA/FLA/performer-pytorch, decoding, training"


def add_parser(subparsers) -> argparse.ArgumentParser:
    from performers.bench.gpu import METHODS

    p = subparsers.add_parser("gpu", help=HELP, description=HELP)
    p.add_argument("--out", default="docs/results/gpu", help="directory for gpu.json, gpu.md, gpu.png")
    p.add_argument("--device", default="cuda", help="cuda, or cpu (small sizes, for testing)")
    p.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[1024, 4096, 16384, 65536, 131072],
        help="sequence lengths L",
    )
    p.add_argument("--dims", type=int, nargs="+", default=[64, 128], help="head dimensions D")
    add_num_features_sweep(p, [128, 256], help="random features M")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="what to measure")
    p.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="input dtype"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per point (median)")
    p.add_argument(
        "--decode-contexts",
        type=int,
        nargs="*",
        default=[1024, 16384, 131072],
        help="contexts of the decode points",
    )
    p.add_argument(
        "--training-lengths",
        type=int,
        nargs="*",
        default=[1024, 8192],
        help="L of the training-throughput points",
    )
    p.add_argument("--wide-heads-length", type=int, default=4096, help="L of the H=32 points (0: none)")
    p.add_argument(
        "--profile-methods",
        nargs="*",
        choices=METHODS,
        default=["favor-triton", "fla-chunk"],
        help="methods profiled kernel by kernel (one forward+backward call each direction)",
    )
    p.add_argument("--profile-length", type=int, default=16384, help="L of the profiled calls")
    p.add_argument("--tests", default="tests", help="the tests directory of a checkout ('' to skip)")
    p.add_argument(
        "--budget",
        type=float,
        default=450.0,
        help="seconds from the start, tests included; the points not reached by then are skipped",
    )
    p.add_argument("--tests-timeout", type=float, default=240.0, help="seconds for the cuda tests")
    return p


def run(args: argparse.Namespace) -> None:
    from performers.bench.gpu import run_gpu_suite

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError("no CUDA device (use --device cpu for a small check)")
    run_gpu_suite(
        args.out,
        device=args.device,
        lengths=args.lengths,
        dims=args.dims,
        features=args.features,
        methods=args.methods,
        dtype=args.dtype,
        repeats=args.repeats,
        decode_contexts=args.decode_contexts,
        training_lengths=args.training_lengths,
        tests=args.tests or None,
        budget_s=args.budget,
        tests_timeout_s=args.tests_timeout,
        wide_heads_length=args.wide_heads_length or None,
        profile_methods=args.profile_methods,
        profile_length=args.profile_length,
        command="performers " + shlex.join(sys.argv[1:]),
    )
