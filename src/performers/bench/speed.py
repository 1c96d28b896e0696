"""Time and peak memory of attention vs sequence length: FAVOR+ against exact attention,
identity attention ("OPT", the paper's upper bound), a plain FAVOR+ formulation (eager and
``torch.compile``-d) and the ``performer-pytorch`` library when it is installed.

Every (method, L) point runs in fresh subprocesses — one for time, one for memory — so
that no point inherits another's allocator state or threads. Time is the median of
``repeats`` runs after a warm-up; memory is the growth of the process's peak resident set
during one forward+backward, measured with ``/proc/self/clear_refs`` (peak reset) and glibc
told to return every allocation of 64 KiB or more to the OS (``MALLOC_MMAP_THRESHOLD_``), so
the peak is the real working set, not allocator reuse.

Run: ``performers bench speed --out docs/results/speed`` (options in ``performers.cli.bench.speed``);
the subprocesses run ``python -m performers.bench.speed --worker SPEC`` (this module's entry point).
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from performers.utils import peak_rss_reset, rss_kib

__all__ = ["METHODS", "Point", "Spec", "markdown", "measure", "plot", "report_only", "run_point", "run_speed"]

METHODS = (
    "favor",
    "favor-causal",
    "exact",
    "exact-causal",
    "identity",
    "plain",
    "plain-compiled",
    "peer",
    "peer-causal",
    "favor-compiled",
    "model-favor",
    "model-exact",
    "model-identity",
)
CAUSAL = {"favor-causal", "exact-causal", "peer-causal"}
# The paper's Figure 3 setting: a stack of 6 pre-LN blocks, d_model 512, 8 heads, d_ff 2048,
# bidirectional, vocabulary 256, forward+backward of the whole model.
MODEL_SIZE = {"num_layers": 6, "d_model": 512, "num_heads": 8, "d_ff": 2048, "vocab_size": 256}


@dataclass
class Spec:
    method: str
    length: int
    batch: int = 1
    heads: int = 8
    dim: int = 64
    num_features: int = 256
    dtype: str = "float32"
    threads: int = 2
    repeats: int = 5
    kernel: str = "softmax"
    measure: str = "time"  # or "memory"
    chunk_size: int = 64  # causal FAVOR
    block_size: int | None = None  # fused bidirectional FAVOR (None: sized for the cache)


@dataclass
class Point:
    spec: Spec
    forward_s: float | None = None
    forward_backward_s: float | None = None
    peak_extra_mib: float | None = None
    first_call_s: float | None = None
    floor_forward_s: float | None = None
    floor_forward_backward_s: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


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
        return lambda q, k, v: favor_attention(q, k, v, w, causal=causal, **options)
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


def run_point(spec: Spec) -> Point:
    """Measure one point in this process (called in a fresh subprocess by :func:`measure`)."""
    torch.set_num_threads(spec.threads)
    generator = torch.Generator().manual_seed(0)
    point = Point(spec)
    if spec.method.startswith("model-"):
        model_step = _build_model_step(spec)

        def forward_backward():
            model_step(True)

        def forward():
            with torch.no_grad():
                model_step(False)

    else:
        fn = _build(spec, generator)
        q, k, v = _inputs(spec, generator, requires_grad=True)

        def forward_backward():
            out = fn(q, k, v)
            out.backward(torch.ones_like(out))
            q.grad = k.grad = v.grad = None

        def forward():
            with torch.no_grad():
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
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
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


def matmul_peak_gflops(threads: int, size: int = 2048) -> float:
    """Measured float32 GEMM throughput of this machine (square ``size`` matrices)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    return 2 * size**3 / _median_time(lambda: a @ b, 5) / 1e9


def favor_flops(spec: Spec, backward: bool) -> float:
    """Matmul FLOPs of bidirectional FAVOR+: 4 products forward, 6 more backward."""
    one = 2.0 * spec.batch * spec.heads * spec.length * spec.dim * spec.num_features
    return one * (10 if backward else 4)


def crossover(points: list[Point], ours: str, theirs: str) -> int | None:
    """Smallest L from which ``ours`` is faster (fwd+bwd) than ``theirs`` at every measured L."""
    mine = {p.spec.length: p.forward_backward_s for p in points if p.spec.method == ours and not p.error}
    other = {p.spec.length: p.forward_backward_s for p in points if p.spec.method == theirs and not p.error}
    common = sorted(set(mine) & set(other))
    result = None
    for length in reversed(common):
        if mine[length] < other[length]:
            result = length
        else:
            break
    return result


def markdown(points: list[Point], peak: float, command: str) -> str:
    lengths = sorted({p.spec.length for p in points})
    methods = [m for m in METHODS if any(p.spec.method == m for p in points) and not m.startswith("model-")]
    by = {(p.spec.method, p.spec.length): p for p in points}
    spec = points[0].spec
    lines = [
        "# Attention speed and memory vs sequence length",
        "",
        f"Command: `{command}`",
        "",
        f"B={spec.batch}, H={spec.heads}, D={spec.dim}, M={spec.num_features}, {spec.dtype}, "
        f"{spec.threads} threads, forward+backward w.r.t. q, k, v (median of {spec.repeats}); "
        f"peak = growth of peak RSS in one forward+backward. Measured GEMM peak: {peak:.0f} GFLOP/s.",
        "",
    ]
    for title, key, fmt in (
        ("Forward+backward time (s)", "forward_backward_s", ".3f"),
        ("Forward time (s)", "forward_s", ".3f"),
        ("Peak extra memory, forward+backward (MiB)", "peak_extra_mib", ".0f"),
    ):
        lines += [f"## {title}", "", "| L | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
        for length in lengths:
            cells = []
            for m in methods:
                p = by.get((m, length))
                value = None if p is None or p.error else getattr(p, key)
                cells.append("—" if value is None else format(value, fmt))
            lines.append(f"| {length} | " + " | ".join(cells) + " |")
        lines.append("")
    favor = [p for p in points if p.spec.method == "favor" and not p.error]
    if favor:
        lines += [
            "",
            "## FAVOR+ (bidirectional) against its primitive floor",
            "",
            "Floor: the matmuls and exps of its shapes run back to back (see `_floor`).",
            "",
            "| L | fwd | floor fwd | fwd+bwd | floor fwd+bwd | GFLOP/s fwd+bwd | % of GEMM peak |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in favor:
            gflops = favor_flops(p.spec, True) / p.forward_backward_s / 1e9
            lines.append(
                f"| {p.spec.length} | {p.forward_s:.3f} | {p.floor_forward_s:.3f} | "
                f"{p.forward_backward_s:.3f} | {p.floor_forward_backward_s:.3f} | "
                f"{gflops:.0f} | {100 * gflops / peak:.0f}% |"
            )
    models = {
        name: {p.spec.length: p for p in points if p.spec.method == f"model-{name}" and not p.error}
        for name in ("favor", "exact", "identity")
    }
    if models["favor"] and models["identity"]:
        lines += [
            "",
            '## Full model: FAVOR+ against exact attention and identity attention ("OPT")',
            "",
            "6 blocks, d_model 512, 8 heads, d_ff 2048 (the paper's Figure 3 size), vocabulary 256,",
            "forward+backward of the whole model, B = 1.",
            "",
            "| L | FAVOR+ (s) | exact (s) | OPT (s) | FAVOR+ / OPT | FAVOR+ MiB | exact MiB | OPT MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]

        def cell(name: str, length: int, key: str, fmt: str) -> str:
            p = models[name].get(length)
            value = None if p is None else getattr(p, key)
            return "—" if value is None else format(value, fmt)

        for length in sorted(set(models["favor"]) & set(models["identity"])):
            ratio = models["favor"][length].forward_backward_s / models["identity"][length].forward_backward_s
            lines.append(
                f"| {length} | {cell('favor', length, 'forward_backward_s', '.2f')} | "
                f"{cell('exact', length, 'forward_backward_s', '.2f')} | "
                f"{cell('identity', length, 'forward_backward_s', '.2f')} | {ratio:.2f} | "
                f"{cell('favor', length, 'peak_extra_mib', '.0f')} | "
                f"{cell('exact', length, 'peak_extra_mib', '.0f')} | "
                f"{cell('identity', length, 'peak_extra_mib', '.0f')} |"
            )
    lines += ["", "## Crossover", ""]
    for ours, theirs in (
        ("favor", "exact"),
        ("favor-causal", "exact-causal"),
        ("model-favor", "model-exact"),
    ):
        c = crossover(points, ours, theirs)
        if c is not None:
            lines.append(
                f"- `{ours}` is faster than `{theirs}` (fwd+bwd) from L = {c} on, at every measured length."
            )
        elif any(p.spec.method == ours for p in points) and any(p.spec.method == theirs for p in points):
            lines.append(
                f"- `{ours}` is not faster than `{theirs}` at the longest lengths measured for both."
            )
    return "\n".join(lines) + "\n"


def plot(points: list[Point], out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for key, label, name in (
        ("forward_backward_s", "forward+backward time (s)", "speed_time.png"),
        ("peak_extra_mib", "peak extra memory (MiB)", "speed_memory.png"),
    ):
        series = {
            method: [
                p for p in points if p.spec.method == method and not p.error and (getattr(p, key) or 0) > 0
            ]
            for method in METHODS
            if not method.startswith("model-")  # whole-model times: see the markdown table
        }
        if not any(series.values()):
            continue
        fig, ax = plt.subplots(figsize=(7, 5))
        for method, pts in series.items():
            if pts:
                style = "--" if method in CAUSAL else "-"
                ax.plot(
                    [p.spec.length for p in pts],
                    [getattr(p, key) for p in pts],
                    style,
                    marker="o",
                    label=method,
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def report_only(out_dir: str | Path) -> list[Path]:
    """Rewrite ``out_dir/speed.md`` and the plots from ``out_dir/speed.json``; returns the plots."""
    out_dir = Path(out_dir)
    data = json.loads((out_dir / "speed.json").read_text())
    points = [Point(**{**p, "spec": Spec(**p["spec"])}) for p in data["points"]]
    commands = data.get("commands", [data.get("command", "")])
    (out_dir / "speed.md").write_text(markdown(points, data["matmul_peak_gflops"], " && ".join(commands)))
    return plot(points, out_dir)


def run_speed(
    methods: list[str],
    lengths: list[int],
    *,
    base: Spec,
    out_dir: str | Path,
    command: str,
    max_seconds: float = 20.0,
    merge: bool = False,
    log=print,
) -> list[Point]:
    """Measure every (method, L), write ``speed.json``, ``speed.md`` and the plots to ``out_dir``.

    ``base`` holds everything but the method and length; the peer methods are skipped when
    performer-pytorch is not installed. ``merge`` adds these points to an existing
    ``speed.json`` (replacing the same method and L); ``command`` is recorded with the results.
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
    peak = matmul_peak_gflops(base.threads)
    commands = [command]
    previous = out_dir / "speed.json"
    if merge and previous.exists():
        old = json.loads(previous.read_text())
        fresh = {(p.spec.method, p.spec.length) for p in points}
        kept = [
            Point(**{**p, "spec": Spec(**p["spec"])})
            for p in old["points"]
            if (p["spec"]["method"], p["spec"]["length"]) not in fresh
        ]
        points = kept + points
        commands = old.get("commands", [old.get("command", "")]) + commands
    payload = {
        "commands": commands,
        "matmul_peak_gflops": peak,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "points": [{**asdict(p), "spec": asdict(p.spec)} for p in points],
    }
    (out_dir / "speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / "speed.md").write_text(markdown(points, peak, " && ".join(commands)))
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
