"""The GPU suite's markdown report and plot (:mod:`performers.bench.gpu`)."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "TARGET_DIM",
    "TARGET_DTYPE",
    "TARGET_FEATURES",
    "TARGET_HEADS",
    "TARGET_LENGTH",
    "format_report",
    "plot",
    "targets",
]

# The targets of the GPU work are stated at B = 1, H = 8, D = 64, M = 256, bfloat16,
# forward+backward (the suite measures these points first).
TARGET_LENGTH, TARGET_DIM, TARGET_FEATURES, TARGET_HEADS, TARGET_DTYPE = 16384, 64, 256, 8, "bfloat16"


def _ms(value) -> str:
    return "—" if value is None else f"{value:,.2f}"


def _sorted(points: list[dict]) -> list[dict]:
    """Attention points in reading order (they are measured in order of importance)."""

    def key(p):
        s = p["spec"]
        return (s["causal"], s["heads"], s["dim"], s["features"], s["length"], s["method"])

    return sorted(points, key=key)


def _at_target_shape(spec: dict) -> bool:
    """Whether a point was measured at the targets' B, H, D, M (SDPA has no M) and dtype."""
    return (
        spec.get("batch", 1) == 1
        and spec.get("dtype", TARGET_DTYPE) == TARGET_DTYPE
        and (spec["dim"], spec["heads"]) == (TARGET_DIM, TARGET_HEADS)
        and (spec["method"] == "sdpa" or spec["features"] == TARGET_FEATURES)
    )


def _point(results: dict, method: str, causal: bool, length: int = TARGET_LENGTH) -> dict | None:
    """The measured point of ``method`` at the target configuration and ``length``, or None."""
    for p in results["attention"]:
        s = p["spec"]
        if (s["method"], s["causal"], s["length"]) == (method, causal, length) and _at_target_shape(s):
            if p.get("forward_backward_ms"):
                return p
    return None


def targets(results: dict) -> list[dict]:
    """Each target of the GPU work with the numbers behind it: ``{"target", "value", "status"}``
    where status is ``"met"``, ``"missed"`` or ``"not measured"`` (a point missing or failed)."""
    rows = []

    def speed(name: str, ours: dict | None, other: dict | None, bound: float, faster: bool) -> None:
        # faster: ours must be >= bound times faster; else ours must be within bound times the other.
        if ours is None or other is None:
            rows.append({"target": name, "value": None, "status": "not measured"})
            return
        ratio = other["forward_backward_ms"] / ours["forward_backward_ms"]
        if faster:
            value, met = f"{ratio:.2f}× faster", ratio >= bound
        else:
            value, met = f"{1 / ratio:.2f}× the time", 1 / ratio <= bound
        rows.append({"target": name, "value": value, "status": "met" if met else "missed"})

    ours_bidir, ours_causal = _point(results, "favor-triton", False), _point(results, "favor-triton", True)
    fla_causal = _point(results, "fla-chunk", True)
    speed(
        "bidirectional 16k: ≥ 3× faster than SDPA-flash",
        ours_bidir,
        _point(results, "sdpa", False),
        3.0,
        True,
    )
    speed(
        "bidirectional 16k: within 1.5× of FLA chunk_linear_attn, K = 256 (FLA's is causal: it has "
        "no bidirectional kernel)",
        ours_bidir, fla_causal, 1.5, False,
    )  # fmt: skip
    speed("causal 16k: within 1.5× of FLA chunk_linear_attn, K = 256", ours_causal, fla_causal, 1.5, False)
    for causal, ours in ((False, ours_bidir), (True, ours_causal)):
        direction = "causal" if causal else "bidirectional"
        peer = _point(results, "performer-pytorch", causal)
        speed(f"{direction} 16k: ≥ 10× faster than performer-pytorch", ours, peer, 10.0, True)
    # Memory linear in L: the peak per position at the longest length within 1.25× of that at 16k.
    for causal in (False, True):
        direction = "causal" if causal else "bidirectional"
        points = [
            p for p in results["attention"]
            if p["spec"]["method"] == "favor-triton" and p["spec"]["causal"] == causal
            and _at_target_shape(p["spec"]) and p["spec"]["length"] >= TARGET_LENGTH and p.get("peak_mib")
        ]  # fmt: skip
        longest = max(points, key=lambda p: p["spec"]["length"], default=None)
        base = next((p for p in points if p["spec"]["length"] == TARGET_LENGTH), None)
        name = f"{direction}: peak memory linear in L up to 128k"
        if longest is None or base is None or longest is base:
            rows.append({"target": name, "value": None, "status": "not measured"})
            continue
        growth = (longest["peak_mib"] / longest["spec"]["length"]) / (base["peak_mib"] / TARGET_LENGTH)
        reached = longest["spec"]["length"] >= 131072
        rows.append(
            {
                "target": name,
                "value": f"{growth:.2f}× the MiB per position of 16k at {longest['spec']['length']:,}",
                "status": "met" if growth <= 1.25 and reached else "missed",
            }
        )
    steps = {
        r["context"]: r["step_ms"]
        for r in results["decode"]
        if r["method"] == "favor-triton" and r.get("step_ms")
    }
    name = "decode step time flat from 1k to 128k of context (within 1.2×)"
    if 1024 in steps and 131072 in steps:
        growth = steps[131072] / steps[1024]
        rows.append(
            {"target": name, "value": f"{growth:.2f}×", "status": "met" if growth <= 1.2 else "missed"}
        )
    else:
        rows.append({"target": name, "value": None, "status": "not measured"})
    return rows


def _attention_rows(results: dict) -> list[str]:
    lines = [
        "| direction | L | H | D | M | method | forward ms | fwd+bwd ms | peak MiB | note |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for p in _sorted(results["attention"]):
        s = p["spec"]
        direction = "causal" if s["causal"] else "bidirectional"
        features = s["features"] if s["method"] != "sdpa" else "—"
        lines.append(
            f"| {direction} | {s['length']:,} | {s['heads']} | {s['dim']} | {features} | {s['method']} | "
            f"{_ms(p['forward_ms'])} | {_ms(p['forward_backward_ms'])} | {_ms(p['peak_mib'])} | "
            f"{p['note'] or ''} |"
        )
    return lines


def _ratios(results: dict) -> list[str]:
    """FAVOR (Triton) fwd+bwd against the others at the same (direction, L, H, D, M)."""
    index = {}
    for p in results["attention"]:
        s = p["spec"]
        index[(s["causal"], s["length"], s["heads"], s["dim"], s["features"], s["method"])] = p
    lines = [
        "| direction | L | D | M | SDPA-flash / ours | ours / FLA chunk | performer-pytorch / ours |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    sdpa_features = {key[:4]: p for key, p in index.items() if key[5] == "sdpa"}

    def ratio(ours, other, invert=False):
        if not other or not other.get("forward_backward_ms"):
            return "—"
        t = ours["forward_backward_ms"]
        return f"{(t / other['forward_backward_ms'] if invert else other['forward_backward_ms'] / t):.2f}×"

    for (causal, length, heads, dim, features, method), ours in sorted(
        index.items(), key=lambda kv: kv[0][:5]
    ):
        if method != "favor-triton" or heads != 8 or not ours["forward_backward_ms"]:
            continue

        fla = index.get((causal, length, heads, dim, features, "fla-chunk"))
        peer = index.get((causal, length, heads, dim, features, "performer-pytorch"))
        sdpa = sdpa_features.get((causal, length, heads, dim))
        direction = "causal" if causal else "bidirectional"
        lines.append(
            f"| {direction} | {length:,} | {dim} | {features} | {ratio(ours, sdpa)} | "
            f"{ratio(ours, fla, invert=True)} | {ratio(ours, peer)} |"
        )
    return lines


def _profile_rows(results: dict) -> list[str]:
    """Per profiled call, its kernels by self time on the device (the profile behind a target)."""
    lines = []
    for r in results.get("profile", []):
        direction = "causal" if r["causal"] else "bidirectional"
        shape = f"H = {r.get('heads', '—')}, D = {r.get('dim', '—')}, M = {r.get('features', '—')}"
        head = f"**{r['method']}, {direction}, L = {r['length']:,}, {shape}**"
        if not r.get("kernels"):
            lines += [f"{head}: {r.get('note') or 'nothing recorded'}", ""]
            continue
        lines += [
            f"{head}: {_ms(r['total_ms'])} ms of self time in one forward+backward call",
            "",
            "| kernel | calls | ms | share |",
            "|---|---:|---:|---:|",
            *(f"| `{k['name']}` | {k['calls']} | {_ms(k['ms'])} | {k['share']:.0%} |" for k in r["kernels"]),
            "",
        ]
    return lines


def format_report(results: dict) -> str:
    env = results["environment"]
    tests = results["tests"]
    lines = [
        "# FAVOR attention on the GPU",
        "",
        f"Command: `{results['command'] or 'performers bench gpu'}`  ",
        f"{results.get('gpu', results['device'])}; torch {env['torch']}; {results['dtype']}; "
        f"Triton kernels: {results['triton']}; suite time {results['elapsed_s']} s.",
        "",
        f'Tests (`pytest -m "cuda and not compile"`): **{tests["status"]}** — '
        f"{tests.get('summary', tests.get('reason', ''))}",
        "",
        *([] if results.get("complete", True) else ["**Partial: the suite was still running.**", ""]),
        f"## Targets (B = 1, H = {TARGET_HEADS}, D = {TARGET_DIM}, M = {TARGET_FEATURES}, {TARGET_DTYPE}, "
        "forward+backward; this run: " + results["dtype"] + ")",
        "",
        "| target | measured | status |",
        "|---|---|---|",
        *(f"| {t['target']} | {t['value'] or '—'} | {t['status']} |" for t in targets(results)),
        "",
        "## Ratios of forward+backward time (> 1× favours our Triton kernels, except in the FLA "
        "column: ours / FLA)",
        "",
        *_ratios(results),
        "",
        "## Where the time goes (profiler self time per kernel, one forward+backward call)",
        "",
        *_profile_rows(results),
        "## Every attention point (B = 1)",
        "",
        *_attention_rows(results),
        "",
        "## Decoding: one position after a context",
        "",
        "| context | method | step ms | note |",
        "|---:|---|---:|---|",
    ]
    for r in results["decode"]:
        lines.append(f"| {r['context']:,} | {r['method']} | {_ms(r.get('step_ms'))} | {r.get('note', '')} |")
    lines += [
        "",
        "## Training the protein masked LM (6 layers, d_model 512, bf16 autocast, AdamW)",
        "",
        "| L | attention | batch | tokens/s | peak MiB | note |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for r in results["training"]:
        tokens = "—" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:,.0f}"
        lines.append(
            f"| {r['length']:,} | {r['attention']} | {r['batch'] or '—'} | {tokens} | "
            f"{_ms(r.get('peak_mib'))} | {r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def _curve(results: dict, method: str, causal: bool, dim: int, features: int, field: str):
    """``(lengths, values of field)`` of one method's measured points at H = 8, ``dim`` and
    ``features`` (SDPA has no M), by length."""
    rows = sorted(
        (
            p for p in results["attention"]
            if p["spec"]["method"] == method and p["spec"]["causal"] == causal and p["spec"]["heads"] == 8
            and p["spec"]["dim"] == dim and (method == "sdpa" or p["spec"]["features"] == features)
            and p[field]
        ),
        key=lambda p: p["spec"]["length"],
    )  # fmt: skip
    return [p["spec"]["length"] for p in rows], [p[field] for p in rows]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    dim = min((p["spec"]["dim"] for p in results["attention"]), default=TARGET_DIM)
    features = max((p["spec"]["features"] for p in results["attention"]), default=TARGET_FEATURES)
    methods = sorted({p["spec"]["method"] for p in results["attention"]})
    panels = [
        (False, "forward_backward_ms", f"bidirectional fwd+bwd, D={dim}, M={features}", "ms"),
        (True, "forward_backward_ms", f"causal fwd+bwd, D={dim}, M={features}", "ms"),
        (True, "peak_mib", "causal fwd+bwd peak memory (MiB)", None),
    ]
    for ax, (causal, field, title, ylabel) in zip(axes, panels, strict=True):
        for method in methods:
            lengths, values = _curve(results, method, causal, dim, features, field)
            if lengths:
                ax.loglog(lengths, values, "o-", label=method)
        ax.set_title(title)
        ax.set_xlabel("L")
        if ylabel:
            ax.set_ylabel(ylabel)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
