"""The GPU suite's markdown report and plot (:mod:`performers.bench.gpu`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["format_report", "plot"]


def _ms(value) -> str:
    return "—" if value is None else f"{value:,.2f}"


def _attention_rows(results: dict) -> list[str]:
    lines = [
        "| direction | L | H | D | M | method | forward ms | fwd+bwd ms | peak MiB | note |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for p in results["attention"]:
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

    for (causal, length, heads, dim, features, method), ours in sorted(index.items()):
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
        f"Tests (`tests/test_triton.py`): **{tests['status']}** — "
        f"{tests.get('summary', tests.get('reason', ''))}",
        "",
        "## Ratios of forward+backward time (> 1× favours our Triton kernels, except in the FLA "
        "column: ours / FLA)",
        "",
        *_ratios(results),
        "",
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
            f"| {r['length']:,} | {r['attention']} | {r['batch']} | {tokens} | "
            f"{_ms(r.get('peak_mib'))} | {r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    dim = min(p["spec"]["dim"] for p in results["attention"])
    features = max(p["spec"]["features"] for p in results["attention"])
    for ax, causal in zip(axes[:2], (False, True), strict=True):
        methods = sorted({p["spec"]["method"] for p in results["attention"]})
        for method in methods:
            rows = [
                p
                for p in results["attention"]
                if p["spec"]["method"] == method and p["spec"]["causal"] == causal and p["spec"]["heads"] == 8
                and p["spec"]["dim"] == dim and (method == "sdpa" or p["spec"]["features"] == features)
                and p["forward_backward_ms"]
            ]  # fmt: skip
            if rows:
                ax.loglog(
                    [p["spec"]["length"] for p in rows],
                    [p["forward_backward_ms"] for p in rows],
                    "o-",
                    label=method,
                )
        ax.set_title(f"{'causal' if causal else 'bidirectional'} fwd+bwd, D={dim}, M={features}")
        ax.set_xlabel("L")
        ax.set_ylabel("ms")
        if ax.lines:
            ax.legend(fontsize=7)
    ax = axes[2]
    for method in sorted({p["spec"]["method"] for p in results["attention"]}):
        rows = [
            p for p in results["attention"]
            if p["spec"]["method"] == method and p["spec"]["causal"] and p["spec"]["dim"] == dim
            and p["spec"]["heads"] == 8 and (method == "sdpa" or p["spec"]["features"] == features)
            and p["peak_mib"]
        ]  # fmt: skip
        if rows:
            ax.loglog([p["spec"]["length"] for p in rows], [p["peak_mib"] for p in rows], "o-", label=method)
    ax.set_title("causal fwd+bwd peak memory (MiB)")
    ax.set_xlabel("L")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
