"""Time and peak memory of attention vs sequence length: FAVOR+ against exact attention,
identity attention ("OPT", the paper's upper bound), a plain FAVOR+ formulation (eager and
``torch.compile``-d) and the ``performer-pytorch`` library when it is installed.

Every (method, L) point runs in fresh subprocesses — one for time, one for memory — so
that no point inherits another's allocator state or threads. Time is the median of
``repeats`` runs after a warm-up; memory is the growth of the process's peak resident set
during one forward+backward, measured with ``/proc/self/clear_refs`` (peak reset) and glibc
told to return every allocation of 64 KiB or more to the OS (``MALLOC_MMAP_THRESHOLD_``), so
the peak is the real working set, not allocator reuse.

Run: ``performers bench speed --out docs/results/speed`` (:func:`run_speed`; options in
``performers.cli.bench.speed``, the report in :mod:`performers.bench.speed_report`, the points'
types in :mod:`performers.bench.speed_points`); the subprocesses run ``python -m
performers.bench.speed --worker SPEC`` (this module's entry point).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from performers.bench.environment import WORKING_SET_ALLOCATOR
from performers.bench.results import write_results
from performers.bench.speed_points import CAUSAL, METHODS, Point, Spec, points_from_json
from performers.bench.speed_report import markdown, plot, point_key
from performers.utils import peak_rss_reset, rss_kib

__all__ = ["CAUSAL", "METHODS", "Point", "Spec", "matmul_peak_gflops", "measure", "run_point", "run_speed"]

# The paper's Figure 3 setting: a stack of 6 pre-LN blocks, d_model 512, 8 heads, d_ff 2048,
# bidirectional, vocabulary 256, forward+backward of the whole model.
MODEL_SIZE = {"num_layers": 6, "d_model": 512, "num_heads": 8, "d_ff": 2048, "vocab_size": 256}


# ----------------------------------------------------------------------------- methods


def plain_favor(q, k, v, w):
    """FAVOR+ as a skilled user writes it in a few lines (the baseline ``plain``)."""
    s = q.shape[-1] ** -0.25
    m = w.shape[0]

    def features(x, is_query):
        u = (x * s) @ w.T - (x * s).pow(2).sum(-1, keepdim=True) / 2
        shift = u.amax(-1, keepdim=True) if is_query else u.amax((-2, -1), keepdim=True)
        return torch.exp(u - shift.detach()) / math.sqrt(m)

    qf, kf = features(q, True), features(k, False)
    kv = kf.transpose(-2, -1) @ v
    normalizer = qf @ kf.sum(-2).unsqueeze(-1)
    return (qf @ kv) / normalizer


def _build(spec: Spec, generator: torch.Generator) -> Callable[..., torch.Tensor]:
    from performers.ops import favor_attention, orthogonal_projection

    dtype = getattr(torch, spec.dtype)
    w = orthogonal_projection(spec.num_features, spec.dim, generator=generator, dtype=dtype)
    method = spec.method
    if method in ("favor", "favor-causal"):
        causal = method == "favor-causal"
        options = {"kernel": spec.kernel, "chunk_size": spec.chunk_size, "block_size": spec.block_size}
        return lambda q, k, v: favor_attention(q, k, v, w, is_causal=causal, **options)
    if method in ("exact", "exact-causal"):
        causal = method == "exact-causal"
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if method == "favor-compiled":
        compiled_favor = torch.compile(favor_attention)
        return lambda q, k, v: compiled_favor(q, k, v, w, kernel=spec.kernel)
    if method == "identity":
        return lambda q, k, v: v * 1.0
    if method == "plain":
        return lambda q, k, v: plain_favor(q, k, v, w)
    if method == "plain-compiled":
        compiled = torch.compile(plain_favor)
        return lambda q, k, v: compiled(q, k, v, w)
    if method in ("peer", "peer-causal"):
        from performer_pytorch import FastAttention  # optional: pip install performers[bench]

        module = FastAttention(
            dim_heads=spec.dim, nb_features=spec.num_features, causal=method == "peer-causal"
        )
        return lambda q, k, v: module(q, k, v)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _build_model_step(spec: Spec) -> Callable[[], None]:
    """Forward+backward of the 6-layer model with the given attention backend."""
    from performers.layers import FavorConfig
    from performers.models import PerformerConfig, PerformerModel

    backend = spec.method.removeprefix("model-")
    config = PerformerConfig(
        **MODEL_SIZE,
        max_position_embeddings=spec.length,
        dropout=0.0,
        attention=backend,
        favor=FavorConfig(
            num_features=spec.num_features,
            kernel=spec.kernel,
            chunk_size=spec.chunk_size,
            block_size=spec.block_size,
        ),
    )
    model = PerformerModel(config).to(getattr(torch, spec.dtype))
    ids = torch.randint(
        0, MODEL_SIZE["vocab_size"], (spec.batch, spec.length), generator=torch.Generator().manual_seed(0)
    )

    def step(backward: bool) -> None:
        hidden = model(ids).last_hidden_state
        if backward:
            hidden.sum().backward()
            model.zero_grad(set_to_none=True)

    return step


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(spec: Spec, generator: torch.Generator, requires_grad: bool):
    dtype = getattr(torch, spec.dtype)
    shape = (spec.batch, spec.heads, spec.length, spec.dim)
    return [
        torch.randn(shape, generator=generator, dtype=dtype).requires_grad_(requires_grad) for _ in range(3)
    ]


def _floor(spec: Spec, generator: torch.Generator) -> tuple[float, float]:
    """Time of FAVOR+'s primitives at these shapes, run back to back.

    Forward: the two projections ``(B·H·L, D)×(D, M)``, the two feature ``exp``s over
    ``(B·H·L, M)`` and the two attention products ``K'ᵀV`` and ``Q'(K'ᵀV)``. Backward adds
    the six matmuls of the gradients (two per product) and one multiply per feature map.
    """
    dtype = getattr(torch, spec.dtype)
    rows = spec.batch * spec.heads * spec.length
    x = torch.randn(rows, spec.dim, generator=generator, dtype=dtype)
    w = torch.randn(spec.num_features, spec.dim, generator=generator, dtype=dtype)
    feats = torch.rand(
        spec.batch * spec.heads, spec.length, spec.num_features, generator=generator, dtype=dtype
    )
    v = torch.randn(spec.batch * spec.heads, spec.length, spec.dim, generator=generator, dtype=dtype)
    summary = torch.randn(
        spec.batch * spec.heads, spec.num_features, spec.dim, generator=generator, dtype=dtype
    )

    def forward():
        for _ in range(2):
            torch.matmul(x, w.T)
            torch.exp(feats)
        torch.matmul(feats.transpose(-2, -1), v)
        torch.matmul(feats, summary)

    def backward():
        torch.matmul(feats, summary)  # ∂Q'
        torch.matmul(feats.transpose(-2, -1), v)  # ∂(K'ᵀV)
        torch.matmul(v, summary.transpose(-2, -1))  # ∂K'
        torch.matmul(feats, summary)  # ∂V
        for _ in range(2):
            feats * feats  # ∂u = ∂φ ⊙ φ
            torch.matmul(feats.reshape(rows, -1), w)  # ∂x

    forward()
    backward()
    f = _median_time(forward, spec.repeats)
    b = _median_time(backward, spec.repeats)
    return f, f + b


def _autocast(spec: Spec) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.autocast)


def run_point(spec: Spec) -> Point:
    """Measure one point in this process (called in a fresh subprocess by :func:`measure`)."""
    torch.set_num_threads(spec.threads)
    generator = torch.Generator().manual_seed(0)
    point = Point(spec)
    if spec.method.startswith("model-"):
        model_step = _build_model_step(spec)

        def forward_backward():
            with _autocast(spec):
                model_step(True)

        def forward():
            with torch.no_grad(), _autocast(spec):
                model_step(False)

    else:
        fn = _build(spec, generator)
        q, k, v = _inputs(spec, generator, requires_grad=True)

        def forward_backward():
            with _autocast(spec):
                out = fn(q, k, v)
            out.backward(torch.ones_like(out))
            q.grad = k.grad = v.grad = None

        def forward():
            with torch.no_grad(), _autocast(spec):
                fn(q, k, v)

    start = time.perf_counter()
    forward_backward()  # warm-up (and compilation for compiled methods)
    point.first_call_s = time.perf_counter() - start
    forward_backward()
    if spec.measure == "memory":
        base = peak_rss_reset()
        forward_backward()
        point.peak_extra_mib = (rss_kib("VmHWM") - base) / 1024
        return point

    forward()
    point.forward_s = _median_time(forward, spec.repeats)
    point.forward_backward_s = _median_time(forward_backward, spec.repeats)
    if spec.method in ("favor", "plain", "plain-compiled"):
        point.floor_forward_s, point.floor_forward_backward_s = _floor(spec, generator)
    return point


def _subprocess(spec: Spec, timeout: float) -> Point:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec.threads)
    if spec.measure == "memory":
        env.update(WORKING_SET_ALLOCATOR)
    cmd = [sys.executable, "-m", "performers.bench.speed", "--worker", json.dumps(asdict(spec))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return Point(spec, error=f"timeout after {timeout:.0f}s")
    if proc.returncode != 0:
        return Point(spec, error=(proc.stderr.strip().splitlines() or ["failed"])[-1][:300])
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["spec"] = spec
    return Point(**data)


def measure(
    methods: list[str],
    lengths: list[int],
    *,
    base: Spec,
    timeout: float = 600.0,
    max_seconds: float = 20.0,
    log: Callable[[str], None] = print,
) -> list[Point]:
    """All (method, L) points; a method stops growing L once one fwd+bwd exceeds ``max_seconds``."""
    points = []
    for method in methods:
        for length in sorted(lengths):
            spec = Spec(**{**asdict(base), "method": method, "length": length, "measure": "time"})
            point = _subprocess(spec, timeout)
            if point.error is None:
                memory = _subprocess(Spec(**{**asdict(spec), "measure": "memory", "repeats": 1}), timeout)
                point.peak_extra_mib = memory.peak_extra_mib
                point.error = memory.error
            points.append(point)
            log(_describe(point))
            if point.error is not None or (point.forward_backward_s or 0) > max_seconds:
                break
    return points


def _describe(p: Point) -> str:
    if p.error:
        return f"{p.spec.method:>15} L={p.spec.length:>6}: {p.error}"
    return (
        f"{p.spec.method:>15} L={p.spec.length:>6}: fwd {p.forward_s:.4f}s"
        f"  fwd+bwd {p.forward_backward_s:.4f}s"
        f"  peak +{p.peak_extra_mib:.0f} MiB  first call {p.first_call_s:.2f}s"
    )


# ----------------------------------------------------------------------------- reports


def matmul_peak_gflops(threads: int, size: int = 2048, dtype: str = "float32") -> float:
    """Measured GEMM throughput of this machine in ``dtype`` (square ``size`` matrices)."""
    torch.set_num_threads(threads)
    a, b = (torch.randn(size, size).to(getattr(torch, dtype)) for _ in range(2))
    a @ b
    return 2 * size**3 / _median_time(lambda: a @ b, 5) / 1e9


def run_speed(
    methods: list[str],
    lengths: list[int],
    *,
    base: Spec,
    out_dir: str | Path,
    command: str,
    max_seconds: float = 20.0,
    merge: bool = False,
    peak_size: int = 2048,
    log=print,
) -> list[Point]:
    """Measure every (method, L), write ``speed.json``, ``speed.md`` and the plots to ``out_dir``.

    ``base`` holds everything but the method and length; the peer methods are skipped when
    performer-pytorch is not installed. ``merge`` adds these points to an existing
    ``speed.json`` (replacing the same method, L and precision; other precisions become their
    own columns, e.g. ``favor (bfloat16)``); ``command`` is recorded with the results. The
    machine's GEMM peak (float32 and bfloat16, the reports' reference) is measured on square
    matrices of ``peak_size`` (a CPU without bfloat16 instructions takes about a minute for one
    bfloat16 product at 2048).
    """
    methods = list(methods)
    if any(m.startswith("peer") for m in methods):
        try:
            import performer_pytorch  # noqa: F401
        except ImportError:
            log("performer-pytorch not installed (pip install 'performers[bench]'): skipping the peer")
            methods = [m for m in methods if not m.startswith("peer")]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = measure(methods, lengths, base=base, max_seconds=max_seconds, log=log)
    peak = {
        dtype: matmul_peak_gflops(base.threads, size=peak_size, dtype=dtype)
        for dtype in ("float32", "bfloat16")
    }
    commands = [command]
    previous = out_dir / "speed.json"
    if merge and previous.exists():
        old = json.loads(previous.read_text())
        fresh = {point_key(p) for p in points}
        old_points = points_from_json(old["points"])
        kept = [p for p in old_points if point_key(p) not in fresh]
        points = kept + points
        commands = old.get("commands", [old.get("command", "")]) + commands
    payload = {
        "commands": commands,
        "matmul_peak_gflops": peak,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "points": [{**asdict(p), "spec": asdict(p.spec)} for p in points],
    }
    write_results(out_dir / "speed.json", payload, markdown(points, peak, " && ".join(commands)))
    for path in plot(points, out_dir):
        log(f"wrote {path}")
    log(f"wrote {out_dir / 'speed.json'} and {out_dir / 'speed.md'}")
    return points


def _worker(spec_json: str) -> int:
    """Measure one point in this (fresh) process and print it as JSON (see :func:`measure`)."""
    point = run_point(Spec(**json.loads(spec_json)))
    data = asdict(point)
    data.pop("spec")
    print(json.dumps(data))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit("usage: python -m performers.bench.speed --worker SPEC_JSON (run by performers bench speed)")
    sys.exit(_worker(sys.argv[2]))
