"""Context parallelism measured: memory per process, step time and bytes communicated when one
sequence is split over 1, 2 and 4 processes, and the longest sequence a small model trains on
within a memory budget.

Two measurements, each point in freshly spawned processes (gloo, ``torch.multiprocessing``):

* ``op`` — one forward+backward of :func:`performers.distributed.favor_attention` on a sequence
  of ``L`` positions (``B, H, D, M`` as given), each process holding its contiguous shard;
  ``world = 1`` also runs the plain single-process :func:`performers.favor_attention`, the
  baseline a user without context parallelism has. Per process: the growth of the peak
  resident set from before its inputs were made to the end of the first forward+backward
  (inputs, activations and gradients: everything this process pays for its shard; glibc told
  to return allocations of 64 KiB or more to the OS, so the peak is the working set); the
  step time (median of ``repeats`` forward+backward after that one, between barriers); and
  the bytes every collective of the call carried (:func:`performers.distributed.record_communication`),
  next to the formula and to what ring attention would send for exact attention.
* ``longest`` — a causal Performer LM of 2 layers trained one step (forward, loss, backward)
  on one sequence of ``L`` tokens; the total memory is the sum over processes of their peak
  resident set (absolute: the Python and torch runtime included). ``L`` doubles while the
  total, predicted linearly from the last point, stays within the budget.

The processes share this machine's cores (``threads`` each, default ``cpus // world``), so the
times say what a process count costs *here*; memory per process is the claim.

Run::

    performers bench context-parallel --out docs/results/distributed.json

(writes ``distributed.json``, ``distributed.md`` and ``distributed.png``).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from performers import distributed
from performers.bench.environment import allocations_returned_to_the_os, environment
from performers.bench.results import write_results
from performers.layers import FavorConfig
from performers.models import PerformerConfig, PerformerForCausalLM
from performers.ops import favor_attention, orthogonal_projection
from performers.utils import atomic_write, derive_seed, peak_rss_reset, rss_kib

__all__ = ["Point", "Spec", "format_report", "longest_sequence", "measure", "run_context_parallel"]


@dataclass(frozen=True)
class Spec:
    """One point: ``kind`` (``"op"`` or ``"longest"``), sequence ``length``, processes ``world``,
    ``causal``, ``single`` (world 1 only: the plain single-process op instead of the
    distributed one) and the sizes."""

    kind: str = "op"
    length: int = 131072
    world: int = 1
    causal: bool = False
    single: bool = False
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    features: int = 256
    d_model: int = 256  # longest: model width (heads · head_dim must equal it)
    d_ff: int = 1024
    layers: int = 2
    threads: int = 0  # per process; 0: cpus // world
    repeats: int = 2
    seed: int = 0


@dataclass
class Point:
    spec: Spec
    peak_mib: list[float] = field(default_factory=list)  # per rank
    step_seconds: float | None = None
    forward_bytes: int | None = None  # per process, what its collectives carried
    backward_bytes: int | None = None
    forward_ring_bytes: float | None = None  # sent per process by ring algorithms
    backward_ring_bytes: float | None = None
    calls: list[dict] = field(default_factory=list)
    error: str | None = None

    @property
    def peak_per_rank(self) -> float | None:
        return max(self.peak_mib) if self.peak_mib else None


def _threads(spec: Spec) -> int:
    return spec.threads or max(1, (os.cpu_count() or 1) // spec.world)


def _op_step(spec: Spec, rank: int):
    start, stop = distributed.shard_bounds(spec.length, spec.world, rank)
    g = torch.Generator().manual_seed(derive_seed(spec.seed, rank))
    shape = (spec.batch, spec.heads, stop - start, spec.head_dim)
    q, k, v = (torch.randn(shape, generator=g).requires_grad_(True) for _ in range(3))
    w = orthogonal_projection(
        spec.features, spec.head_dim, generator=torch.Generator().manual_seed(spec.seed)
    )
    grad = torch.randn(shape, generator=g)

    def step() -> None:
        if spec.single:
            out = favor_attention(q, k, v, w, is_causal=spec.causal)
        else:
            out = distributed.favor_attention(q, k, v, w, is_causal=spec.causal)
        out.backward(grad)
        for t in (q, k, v):
            t.grad = None

    return step


def _model_step(spec: Spec, rank: int):
    torch.manual_seed(spec.seed)  # the same weights on every process
    config = PerformerConfig(
        vocab_size=32,
        d_model=spec.d_model,
        num_layers=spec.layers,
        num_heads=spec.heads,
        d_ff=spec.d_ff,
        dropout=0.0,
        position="rotary",
        favor=FavorConfig(spec.features),
    )
    model = PerformerForCausalLM(config)
    start, stop = distributed.shard_bounds(spec.length, spec.world, rank)
    g = torch.Generator().manual_seed(derive_seed(spec.seed, 1))
    tokens = torch.randint(1, 32, (spec.batch, spec.length + 1), generator=g)
    ids, labels = tokens[:, start:stop].clone(), tokens[:, start + 1 : stop + 1].clone()
    del tokens
    group = dist.group.WORLD if spec.world > 1 else None

    def step() -> None:
        logits = model(ids, context_group=group).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def _worker(rank: int, spec: Spec, store: str, out_dir: str) -> None:
    torch.set_num_threads(_threads(spec))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=spec.world)
    result: dict = {}
    try:
        base = peak_rss_reset()
        step = _op_step(spec, rank) if spec.kind == "op" else _model_step(spec, rank)
        with distributed.record_communication() as calls:
            step()
        if spec.kind == "op":
            result["peak_mib"] = (rss_kib("VmHWM") - base) / 1024
        else:
            result["peak_mib"] = rss_kib("VmHWM") / 1024  # absolute: the budget counts everything
        result["calls"] = [asdict(c) | {"ring_bytes": c.ring_bytes} for c in calls]
        times = []
        for _ in range(spec.repeats if spec.kind == "op" else 0):
            dist.barrier()
            begin = time.perf_counter()
            step()
            dist.barrier()
            times.append(time.perf_counter() - begin)
        result["times"] = times
    except Exception as error:  # reported, not raised: the coordinator records it
        result["error"] = f"{type(error).__name__}: {error}"[:300]
    Path(out_dir, f"{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def measure(spec: Spec) -> Point:
    """Run one point in ``spec.world`` fresh processes (see the module docstring)."""
    point = Point(spec)
    try:
        with allocations_returned_to_the_os(), tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_worker, args=(spec, f"{tmp}/store", tmp), nprocs=spec.world, join=True)
            ranks = [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(spec.world)]
    except Exception as error:  # a process killed (e.g. out of memory)
        point.error = f"{type(error).__name__}: {error}"[:300]
        return point
    errors = [r["error"] for r in ranks if "error" in r]
    if errors:
        point.error = errors[0]
        return point
    point.peak_mib = [r["peak_mib"] for r in ranks]
    times = [max(ts) for ts in zip(*(r["times"] for r in ranks), strict=True)]
    point.step_seconds = statistics.median(times) if times else None
    point.calls = ranks[0]["calls"]
    for direction, backward in (("forward", False), ("backward", True)):
        calls = [c for c in point.calls if c["backward"] is backward]
        setattr(point, f"{direction}_bytes", sum(c["bytes"] for c in calls))
        setattr(point, f"{direction}_ring_bytes", sum(c["ring_bytes"] for c in calls))
    return point


def summary_bytes(spec: Spec, element: int = 4) -> int:
    """The formula: one summary ``B·H·M·(D+1)`` values (positive features: ``M' = M``)."""
    return spec.batch * spec.heads * spec.features * (spec.head_dim + 1) * element


def ring_attention_bytes(spec: Spec, element: int = 4) -> tuple[float, float]:
    """What each process sends with ring attention (exact softmax; Liu et al. 2023) for the same
    sequence: forward, its ``K, V`` shard passed on ``W-1`` times; backward, the shards again and
    their gradient accumulators (twice the forward)."""
    shard = spec.batch * spec.heads * (spec.length / spec.world) * 2 * spec.head_dim * element
    return (spec.world - 1) * shard, 2 * (spec.world - 1) * shard


def longest_sequence(
    base: Spec, *, budget_gib: float, start: int, max_length: int | None = None, log=print
) -> list[Point]:
    """Double ``L`` from ``start`` (up to ``max_length``) while the total memory, predicted by a
    line through the last two points (through 0 after the first), fits ``budget_gib``, then try
    once the longest ``L`` that line puts within 95% of the budget; returns the points measured
    (the longest that fits is the answer). Nothing is run that is predicted not to fit: this
    machine's memory is the budget's neighbour."""
    points: list[Point] = []
    totals: list[float] = []
    length = start
    while max_length is None or length <= max_length:
        point = measure(replace(base, length=length))
        points.append(point)
        total = sum(point.peak_mib) / 1024 if point.peak_mib else None
        log(f"longest world={base.world} L={length}: {total and f'{total:.2f} GiB'} {point.error or ''}")
        if point.error or total is None or total > budget_gib:
            break
        totals.append(total)
        if len(totals) == 1:
            predicted = 2 * total
        else:
            slope = (totals[-1] - totals[-2]) / (length - length // 2)
            predicted = total + slope * length
        if predicted > budget_gib:
            break
        length *= 2
    if len(totals) >= 2 and not points[-1].error:
        # One refinement: the longest L the line predicts within 95% of the budget, rounded
        # down to a multiple of 4096 per process, if it is longer than the last fitting point.
        fitted = [p.spec.length for p in points if p.peak_mib and sum(p.peak_mib) / 1024 <= budget_gib]
        last = fitted[-1]
        i = [p.spec.length for p in points].index(last)
        low = points[i - 1].spec.length
        slope = (totals[i] - totals[i - 1]) / (last - low)
        step = 4096 * base.world
        target = int((last + (0.95 * budget_gib - totals[i]) / slope) // step * step) if slope > 0 else 0
        if target > last and (max_length is None or target <= max_length):
            point = measure(replace(base, length=target))
            points.append(point)
            total = sum(point.peak_mib) / 1024 if point.peak_mib else None
            log(f"longest world={base.world} L={target}: {total and f'{total:.2f} GiB'} {point.error or ''}")
    return points


def _point_dict(point: Point) -> dict:
    out = asdict(point)
    out["peak_per_rank_mib"] = point.peak_per_rank
    return out


def format_report(results: dict) -> str:
    """The markdown report of :func:`run_context_parallel`'s results."""
    env = results["environment"]
    lines = [
        "# Context parallelism: one sequence over several processes",
        "",
        f"Command: `{results['command']}`  ",
        f"torch {env['torch']}, {env['cpus']} CPUs ({env['processor'] or env['machine']}); gloo; "
        "the processes share these cores.",
        "",
    ]
    ops = [Point(Spec(**p["spec"]), **{k: p[k] for k in ("peak_mib", "step_seconds", "forward_bytes",
           "backward_bytes", "forward_ring_bytes", "backward_ring_bytes", "calls", "error")})
           for p in results["op"]]  # fmt: skip
    if ops:
        s = ops[0].spec
        lines += [
            f"## One forward+backward of FAVOR+ attention, L = {s.length:,} (B={s.batch}, H={s.heads}, "
            f"D={s.head_dim}, M={s.features}, float32)",
            "",
            "Peak memory per process: growth of the peak resident set from before the inputs to the end "
            "of the forward+backward (inputs, activations, gradients). Ratio: against the plain "
            "single-process op.",
            "",
            "| attention | processes | implementation | peak memory per process | ratio | step time | "
            "sent per process fwd / bwd (ring) |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for causal in (False, True):
            rows = [p for p in ops if p.spec.causal == causal]
            baseline = next((p.peak_per_rank for p in rows if p.spec.single and p.peak_mib), None)
            for p in rows:
                kind = "causal" if causal else "bidirectional"
                impl = "single-process op" if p.spec.single else "distributed op"
                if p.error:
                    lines.append(f"| {kind} | {p.spec.world} | {impl} | failed: {p.error} | | | |")
                    continue
                ratio = f"{p.peak_per_rank / baseline:.2f}×" if baseline else "—"
                sent = "—" if p.spec.world == 1 else (
                    f"{p.forward_ring_bytes / 1024:,.0f} / {p.backward_ring_bytes / 1024:,.0f} KiB"
                )  # fmt: skip
                lines.append(
                    f"| {kind} | {p.spec.world} | {impl} | {p.peak_per_rank:,.0f} MiB | {ratio} | "
                    f"{p.step_seconds:.2f} s | {sent} |"
                )
        lines += ["", "## Bytes per layer per call", ""]
        lines += [
            "Per process and attention call, from `record_communication` (payload = the tensor each "
            "process contributes to a collective; ring = what it sends with ring algorithms). Formula: "
            "one summary of B·H·M·(D+1) float32 values "
            f"= {summary_bytes(s):,} bytes, independent of L. Ring attention (exact softmax) at the same "
            "L sends each K,V shard around the ring in forward, and again with gradients in backward.",
            "",
            "| attention | processes | collectives fwd (payload) | collectives bwd (payload) | formula | "
            "ring sent fwd + bwd | ring attention fwd + bwd |",
            "|---|---:|---|---|---:|---:|---:|",
        ]
        for p in ops:
            if p.spec.world == 1 or p.error:
                continue
            fwd = ", ".join(f"{c['kind']} {c['bytes']:,}" for c in p.calls if not c["backward"])
            bwd = ", ".join(f"{c['kind']} {c['bytes']:,}" for c in p.calls if c["backward"])
            ring_fwd, ring_bwd = ring_attention_bytes(p.spec)
            sent = (p.forward_ring_bytes + p.backward_ring_bytes) / 2**20
            lines.append(
                f"| {'causal' if p.spec.causal else 'bidirectional'} | {p.spec.world} | {fwd} | {bwd} | "
                f"{summary_bytes(p.spec):,} | {sent:.2f} MiB | {(ring_fwd + ring_bwd) / 2**20:,.0f} MiB |"
            )
    if results.get("longest"):
        first = Spec(**results["longest"][0]["spec"])
        lines += [
            "",
            f"## Longest sequence within {results['budget_gib']:g} GiB in total",
            "",
            f"A causal Performer LM, {first.layers} layers, d_model {first.d_model}, {first.heads} heads, "
            f"d_ff {first.d_ff}, M = {first.features}, rotary positions; one training step (forward, "
            "cross-entropy, backward) on one sequence. Total = sum over processes of their peak "
            "resident set (runtime included).",
            "",
            "| processes | L | total memory | per process | fits |",
            "|---:|---:|---:|---:|---|",
        ]
        for p in results["longest"]:
            spec = Spec(**p["spec"])
            if p["error"]:
                lines.append(f"| {spec.world} | {spec.length:,} | failed: {p['error']} | | no |")
                continue
            total = sum(p["peak_mib"]) / 1024
            fits = "yes" if total <= results["budget_gib"] else "no"
            per_process = max(p["peak_mib"]) / 1024
            lines.append(
                f"| {spec.world} | {spec.length:,} | {total:.2f} GiB | {per_process:.2f} GiB | {fits} |"
            )
        for world, best in results.get("longest_fit", {}).items():
            lines.append(f"\nLongest that fits with {world} process(es): **L = {best:,}**." if best else "")
        lines += [
            "",
            "The processes of one machine share its memory and each holds its own runtime, so more "
            "processes here do not fit a longer sequence in the same total; what shrinks is the "
            "memory of each process (the per-process column), which is what lets processes on "
            "separate devices or machines hold a proportionally longer sequence.",
        ]
    return "\n".join(lines) + "\n"


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for causal, marker in ((False, "o"), (True, "s")):
        rows = [p for p in results["op"] if p["spec"]["causal"] == causal and not p["spec"]["single"]]
        rows = [p for p in rows if p["peak_mib"]]
        ax.plot(
            [p["spec"]["world"] for p in rows],
            [max(p["peak_mib"]) for p in rows],
            marker=marker,
            label="causal" if causal else "bidirectional",
        )
    ax.set_xlabel("processes")
    ax.set_ylabel("peak memory per process (MiB)")
    ax.set_xticks([1, 2, 4])
    ax.set_title("FAVOR+ fwd+bwd, one sequence split over processes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def run_context_parallel(
    base: Spec,
    worlds: list[int],
    *,
    out: str | Path,
    longest: Spec | None = None,
    longest_worlds: list[int] = (),
    budget_gib: float = 20.0,
    longest_start: int = 16384,
    longest_max: int | None = None,
    command: str = "",
    log=print,
) -> dict:
    """Measure the ``op`` points (both directions, every world; world 1 also the plain op) and,
    with ``longest``, the longest sequence per world; write JSON, markdown and a plot."""
    results: dict = {"command": command, "environment": environment(), "budget_gib": budget_gib, "op": []}
    for causal in (False, True):
        specs = [replace(base, causal=causal, world=1, single=True)]
        specs += [replace(base, causal=causal, world=w) for w in worlds]
        for spec in specs:
            point = measure(spec)
            log(
                f"op causal={causal} world={spec.world} single={spec.single}: "
                f"{point.error or f'{point.peak_per_rank:,.0f} MiB/process, {point.step_seconds:.2f} s'}"
            )
            results["op"].append(_point_dict(point))
    if longest is not None:
        results["longest"], results["longest_fit"] = [], {}
        for world in longest_worlds:
            points = longest_sequence(
                replace(longest, world=world),
                budget_gib=budget_gib,
                start=longest_start,
                max_length=longest_max,
                log=log,
            )
            results["longest"] += [_point_dict(p) for p in points]
            fits = [p.spec.length for p in points if p.peak_mib and sum(p.peak_mib) / 1024 <= budget_gib]
            results["longest_fit"][str(world)] = max(fits) if fits else None
    out = write_results(out, results, format_report(results))
    atomic_write(out.with_suffix(".png"), lambda tmp: _plot(results, tmp))
    return results
