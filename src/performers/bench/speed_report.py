"""The report of ``performers bench speed`` (measured by :func:`performers.bench.speed.run_speed`):
the markdown table with crossovers and achieved GFLOP/s, and the plots; :func:`report_only`
rewrites both from a ``speed.json``."""

from __future__ import annotations

import json
from pathlib import Path

from performers.bench.results import write_markdown
from performers.bench.speed_points import CAUSAL, METHODS, Point, Spec, points_from_json

__all__ = ["crossover", "favor_flops", "markdown", "plot", "point_key", "precision", "report_only"]


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


def _peaks(peak: float | dict) -> dict[str, float]:
    """GEMM peaks by dtype (results written before peaks were per dtype hold one float32 number)."""
    return peak if isinstance(peak, dict) else {"float32": peak}


def precision(spec: Spec) -> str:
    """How a point computes: its dtype, or ``"autocast bfloat16"`` (float32 inputs under autocast)."""
    return "autocast bfloat16" if spec.autocast else spec.dtype


def _series(points: list[Point]) -> list[tuple[str, str, str]]:
    """``(label, method, precision)`` of every attention series, in method order; the label is
    the method at the first point's precision and ``method (precision)`` at any other."""
    base = precision(points[0].spec)
    found = {(p.spec.method, precision(p.spec)) for p in points if not p.spec.method.startswith("model-")}
    result = []
    for method in METHODS:
        for prec in sorted((q for m, q in found if m == method), key=lambda q: (q != base, q)):
            result.append((method if prec == base else f"{method} ({prec})", method, prec))
    return result


def point_key(p: Point) -> tuple[str, int, str]:
    return p.spec.method, p.spec.length, precision(p.spec)


def markdown(points: list[Point], peak: float | dict, command: str) -> str:
    lengths = sorted({p.spec.length for p in points})
    series = _series(points)
    methods = [label for label, _, _ in series]
    by = {point_key(p): p for p in points}
    spec = points[0].spec
    lines = [
        "# Attention speed and memory vs sequence length",
        "",
        f"Command: `{command}`",
        "",
        f"B={spec.batch}, H={spec.heads}, D={spec.dim}, M={spec.num_features}, {precision(spec)}, "
        f"{spec.threads} threads, forward+backward w.r.t. q, k, v (median of {spec.repeats}); "
        f"peak = growth of peak RSS in one forward+backward. Measured GEMM peak: "
        + ", ".join(f"{value:.0f} GFLOP/s in {dtype}" for dtype, value in _peaks(peak).items())
        + ".",
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
            for _, method, prec in series:
                p = by.get((method, length, prec))
                value = None if p is None or p.error else getattr(p, key)
                cells.append("—" if value is None else format(value, fmt))
            lines.append(f"| {length} | " + " | ".join(cells) + " |")
        lines.append("")
    favor = [p for p in points if p.spec.method == "favor" and not p.error]
    peaks = _peaks(peak)
    if favor:
        lines += [
            "",
            "## FAVOR+ (bidirectional) against its primitive floor",
            "",
            "Floor: the matmuls and exps of its shapes run back to back (see `_floor`).",
            "",
            "| L | precision | fwd | floor fwd | fwd+bwd | floor fwd+bwd | GFLOP/s fwd+bwd "
            "| % of GEMM peak |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for p in sorted(favor, key=lambda p: (precision(p.spec), p.spec.length)):
            gflops = favor_flops(p.spec, True) / p.forward_backward_s / 1e9
            # Against the peak of the point's product dtype (float32 when that was not measured).
            product_dtype = "bfloat16" if p.spec.autocast else p.spec.dtype
            own_peak = peaks.get(product_dtype, peaks["float32"])
            lines.append(
                f"| {p.spec.length} | {precision(p.spec)} | {p.forward_s:.3f} | {p.floor_forward_s:.3f} | "
                f"{p.forward_backward_s:.3f} | {p.floor_forward_backward_s:.3f} | "
                f"{gflops:.0f} | {100 * gflops / own_peak:.0f}% |"
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
    pairs = (("favor", "exact"), ("favor-causal", "exact-causal"), ("model-favor", "model-exact"))
    precisions = sorted({precision(p.spec) for p in points})
    for ours, theirs, prec in ((o, t, prec) for o, t in pairs for prec in precisions):
        same = [p for p in points if precision(p.spec) == prec]
        c = crossover(same, ours, theirs)
        if prec != precision(spec):
            ours, theirs = f"{ours} ({prec})", f"{theirs} ({prec})"
        if c is not None:
            lines.append(
                f"- `{ours}` is faster than `{theirs}` (fwd+bwd) from L = {c} on, at every measured length."
            )
        elif any(p.spec.method == ours.split(" (")[0] for p in same) and any(
            p.spec.method == theirs.split(" (")[0] for p in same
        ):
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
        # Whole-model times are not plotted: see the markdown table.
        series = {
            label: [
                p
                for p in points
                if (p.spec.method, precision(p.spec)) == (method, prec)
                and not p.error
                and (getattr(p, key) or 0) > 0
            ]
            for label, method, prec in _series(points)
        }
        if not any(series.values()):
            continue
        fig, ax = plt.subplots(figsize=(7, 5))
        for method, pts in series.items():
            if pts:
                style = "--" if method.split(" (")[0] in CAUSAL else "-"
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
    points = points_from_json(data["points"])
    commands = data.get("commands", [data.get("command", "")])
    write_markdown(out_dir / "speed.md", markdown(points, data["matmul_peak_gflops"], " && ".join(commands)))
    return plot(points, out_dir)
