"""``performers bench generate``: decoding speed of the FAVOR+ recurrent state against exact
attention with a KV cache (:mod:`performers.bench.generate`)."""

from __future__ import annotations

import argparse
import time

import torch

from performers.bench.generate import format_table, measure, plot, write_json
from performers.cli.favor_options import add_favor_options, favor_config_from_args

HELP = "tokens/s of FAVOR+ recurrent decoding vs exact + KV cache"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help=HELP, description=HELP)
    p.add_argument(
        "--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 65536], help="context lengths"
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=["favor", "exact"],
        choices=["favor", "exact"],
        help="FAVOR+ recurrent state and/or exact attention with a KV cache",
    )
    p.add_argument("--new-tokens", type=int, default=32, help="timed decoding steps per point (default 32)")
    p.add_argument(
        "--warmup",
        type=int,
        default=16,
        help="untimed decoding steps first, per point (default 16: fewer leave the first point slow)",
    )
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument(
        "--cache",
        choices=["synthetic", "prefill"],
        default="synthetic",
        help="synthetic: random caches of the right shape; prefill: a real prompt pass",
    )
    p.add_argument("--vocab-size", type=int, default=1000, help="vocabulary of the random model")
    p.add_argument("--d-model", type=int, default=512, help="model width")
    p.add_argument("--layers", type=int, default=6, help="Transformer blocks")
    p.add_argument("--heads", type=int, default=8, help="attention heads")
    p.add_argument("--d-ff", type=int, default=1024, help="feed-forward width")
    add_favor_options(p)
    p.add_argument(
        "--dtype",
        choices=["float32", "float64", "bfloat16", "float16"],
        default="float32",
        help="model dtype",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random model and caches")
    p.add_argument(
        "--out", default="docs/results/generate.json", help="JSON output (a .png is written next to it)"
    )
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    return p


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    favor = favor_config_from_args(args)
    sizes = {
        "vocab_size": args.vocab_size,
        "d_model": args.d_model,
        "num_layers": args.layers,
        "num_heads": args.heads,
        "d_ff": args.d_ff,
    }
    settings = {
        "contexts": list(args.contexts),
        "backends": list(args.backends),
        "new_tokens": args.new_tokens,
        "warmup": args.warmup,
        "batch": args.batch,
        "cache": args.cache,
        "seed": args.seed,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        **sizes,
        "num_features": favor.num_features,
        "kernel": favor.kernel,
        "favor": favor.to_dict(),
    }
    start = time.perf_counter()
    rows = measure(
        contexts=tuple(args.contexts),
        backends=tuple(args.backends),
        new_tokens=args.new_tokens,
        warmup=args.warmup,
        batch=args.batch,
        cache=args.cache,
        seed=args.seed,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        favor=favor,
        **sizes,
    )
    print(
        f"Greedy decoding, {args.layers} layers, d_model {args.d_model}, {args.heads} heads, "
        f"M = {favor.num_features}, batch {args.batch}, {args.dtype} on {args.device}, "
        f"{torch.get_num_threads()} threads, {args.cache} cache; median of {args.new_tokens} steps "
        f"after {args.warmup} warm-up steps"
    )
    print(format_table(rows))
    out = write_json(rows, args.out, settings)
    print(f"wrote {out}")
    if not args.no_plot:
        png = plot(rows, out.with_suffix(".png"))
        print(f"wrote {png}" if png else "matplotlib not installed: no plot")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0
