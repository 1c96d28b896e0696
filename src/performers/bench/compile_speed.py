"""What ``torch.compile`` gains on FAVOR attention: eager against compiled, forward and
forward+backward, with the compile time and the recompilations across lengths reported apart.

Methods, for each direction (bidirectional, causal):

* ``eager``: :func:`performers.favor_attention` as it runs without compile (the fused paths);
* ``compiled``: ``torch.compile(favor_attention, dynamic=True)``: under compile the paths that
  loop over positions (the fused ones, causal attention, the Triton kernels) run as they do
  eagerly inside the compiled graph, so that one graph serves every length
  (docs/guides/attention.md, torch.compile);
* ``compiled-generic`` (bidirectional only): the loop-free generic path (materialized features),
  traced and compiled whole by the backend, the alternative to the above.

Timings are medians of ``repeats`` runs, the methods interleaved within each repeat (so that a
change in the machine's load shifts them alike); forward runs under ``torch.no_grad()``.
Compile time is the first call of each compiled method (forward, then forward+backward), with
the backend's caches disabled so that every run compiles from scratch; ``recompiles`` counts the
graphs compiled for ``extra_lengths`` after the first length.

Run: ``performers bench compile --out docs/results/compile.json`` (:func:`run_compile_bench`).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from performers.bench.environment import environment
from performers.bench.results import write_results
from performers.ops import favor_attention, orthogonal_projection
from performers.ops.attention import _favor_attention

__all__ = ["DIRECTIONS", "METHODS", "compile_markdown", "run_compile_bench", "write_compile_results"]

DIRECTIONS = ("bidirectional", "causal")
METHODS = ("eager", "compiled", "compiled-generic")

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _methods(causal: bool, projection: torch.Tensor, backend: str) -> dict[str, Attention]:
    """The attention functions to compare (``compiled-generic`` for bidirectional attention only:
    causal calls run eagerly under compile whatever their path)."""

    def eager(q, k, v):
        return favor_attention(q, k, v, projection, causal=causal)

    def generic(q, k, v):
        return _favor_attention(q, k, v, projection, causal=causal, path="generic")

    methods = {"eager": eager, "compiled": torch.compile(eager, backend=backend, dynamic=True)}
    if not causal:
        methods["compiled-generic"] = torch.compile(generic, backend=backend, dynamic=True)
    return methods


def _inputs(batch: int, heads: int, length: int, dim: int, seed: int) -> list[torch.Tensor]:
    # Moderate logits (unit-variance entries scaled by 1/2): the regime FAVOR+ is used in.
    g = torch.Generator().manual_seed(seed)
    return [(0.5 * torch.randn(batch, heads, length, dim, generator=g)).requires_grad_() for _ in range(3)]


def _forward(fn: Attention, inputs: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn(*inputs)
    return time.perf_counter() - start


def _forward_backward(fn: Attention, inputs: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    out = fn(*inputs)
    torch.autograd.grad(out.sum(), inputs)
    return time.perf_counter() - start


def _graphs() -> int:
    """Graphs dynamo has compiled since its counters were last cleared."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def run_compile_bench(
    *,
    length: int = 2048,
    batch: int = 1,
    heads: int = 4,
    dim: int = 64,
    num_features: int = 128,
    directions: tuple[str, ...] = DIRECTIONS,
    repeats: int = 7,
    extra_lengths: tuple[int, ...] = (),
    backend: str = "inductor",
    threads: int | None = 1,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure (see the module docstring); returns the JSON-ready record."""
    if threads:
        torch.set_num_threads(threads)
    from torch._inductor import config as inductor_config

    projection = orthogonal_projection(num_features, dim, generator=torch.Generator().manual_seed(seed))
    inputs = _inputs(batch, heads, length, dim, seed)
    rows = []
    with inductor_config.patch(force_disable_caches=True), warnings.catch_warnings():
        # (torch says that disabling the caches disables its profile-guided dynamic shapes too.)
        warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
        for direction in directions:
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            methods = _methods(direction == "causal", projection, backend)
            compile_seconds: dict[str, dict[str, float]] = {}
            for name, fn in methods.items():
                # The first calls compile (for inference, then for training); eager warms up.
                compile_seconds[name] = {
                    "forward": _forward(fn, inputs),
                    "forward_backward": _forward_backward(fn, inputs),
                }
            times: dict[str, dict[str, list[float]]] = {
                n: {"forward": [], "forward_backward": []} for n in methods
            }
            for _ in range(repeats):
                for name, fn in methods.items():
                    times[name]["forward"].append(_forward(fn, inputs))
                    times[name]["forward_backward"].append(_forward_backward(fn, inputs))
            graphs = _graphs()
            for extra in extra_lengths:
                other = _inputs(batch, heads, extra, dim, seed)
                for fn in methods.values():
                    _forward(fn, other)
                    _forward_backward(fn, other)
            recompiles = _graphs() - graphs
            for name in methods:
                row = {
                    "direction": direction,
                    "method": name,
                    "forward_ms": 1000 * statistics.median(times[name]["forward"]),
                    "forward_backward_ms": 1000 * statistics.median(times[name]["forward_backward"]),
                    # The fastest repeat: the least disturbed by other processes on a shared machine.
                    "forward_min_ms": 1000 * min(times[name]["forward"]),
                    "forward_backward_min_ms": 1000 * min(times[name]["forward_backward"]),
                    "first_forward_s": compile_seconds[name]["forward"],
                    "first_forward_backward_s": compile_seconds[name]["forward_backward"],
                }
                rows.append(row)
                log(
                    f"{direction:>13} {name:<16} forward {row['forward_ms']:7.1f} ms, forward+backward "
                    f"{row['forward_backward_ms']:7.1f} ms (first calls {row['first_forward_s']:.1f} s, "
                    f"{row['first_forward_backward_s']:.1f} s)"
                )
            rows.append({"direction": direction, "recompiles_over_extra_lengths": recompiles})
            log(f"{direction:>13} graphs compiled for the lengths {list(extra_lengths)}: {recompiles}")
    return {
        "settings": {
            "length": length,
            "batch": batch,
            "heads": heads,
            "dim": dim,
            "num_features": num_features,
            "repeats": repeats,
            "extra_lengths": list(extra_lengths),
            "backend": backend,
            "dtype": "float32",
            "device": "cpu",
        },
        "rows": rows,
    }


def compile_markdown(record: dict[str, Any], command: str) -> str:
    """The report: one table per direction, compiled against eager."""
    s = record["settings"]
    lines = [
        "# torch.compile and FAVOR attention",
        "",
        f"`{command}`",
        "",
        f"B = {s['batch']}, H = {s['heads']}, L = {s['length']}, D = {s['dim']}, M = {s['num_features']}, "
        f"float32 on the CPU, backend `{s['backend']}` (`dynamic=True`, caches disabled). Medians of "
        f"{s['repeats']} interleaved repeats, and the fastest repeat; forward under `torch.no_grad()`. "
        "First calls: the compile (or, for eager, the warm-up) of forward, then of forward+backward.",
        "",
    ]
    for direction in DIRECTIONS:
        rows = [r for r in record["rows"] if r["direction"] == direction and "method" in r]
        if not rows:
            continue
        eager = next(r for r in rows if r["method"] == "eager")
        lines += [
            f"## {direction}",
            "",
            "| method | forward ms | × eager | (fastest) | forward+backward ms | × eager | (fastest) "
            "| first forward s | first fwd+bwd s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            ratios = [r[key] / eager[key] for key in ("forward_ms", "forward_backward_ms")]
            lines.append(
                f"| {r['method']} | {r['forward_ms']:.1f} | {ratios[0]:.2f} | {r['forward_min_ms']:.1f} | "
                f"{r['forward_backward_ms']:.1f} | {ratios[1]:.2f} | {r['forward_backward_min_ms']:.1f} | "
                f"{r['first_forward_s']:.1f} | {r['first_forward_backward_s']:.1f} |"
            )
        recompiles = next(r for r in record["rows"] if r["direction"] == direction and "method" not in r)
        lines += [
            "",
            f"Graphs compiled for the further lengths {s['extra_lengths']}: "
            f"{recompiles['recompiles_over_extra_lengths']}.",
            "",
        ]
    lines.append(f"Environment: {record.get('environment', {})}")
    return "\n".join(lines) + "\n"


def write_compile_results(record: dict[str, Any], out: str | Path, command: str) -> Path:
    """``out`` (JSON) and the markdown report beside it, through the one results writer."""
    record = {**record, "command": command, "environment": environment()}
    return write_results(out, record, compile_markdown(record, command))
