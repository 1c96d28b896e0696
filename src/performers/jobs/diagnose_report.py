"""Tables, JSON, markdown and a plot of a :class:`~performers.jobs.diagnose.DiagnosisReport`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["format_markdown", "format_summary", "plot_errors", "write_report"]


def _layer_rows(report: Any) -> dict[tuple[int, str], list]:
    groups: dict[tuple[int, str], list] = {}
    for row in report.rows:
        if row.head == "all":
            groups.setdefault((row.layer, row.kernel), []).append(row)
    for group in groups.values():
        group.sort(key=lambda r: r.num_features)
    return groups


def _smallest(rows: list, tolerance: float) -> str:
    m = next((r.num_features for r in rows if r.error <= tolerance), None)
    return str(m) if m is not None else f"> {rows[-1].num_features}"


def format_summary(report: Any) -> str:
    """The terminal table: per layer (all heads together) and kernel, the smallest M meeting the
    tolerance and the error at the largest M (measured mean ± sd, theory), then the
    recommendation."""
    tol = report.settings["tolerance"]
    lines = [
        f"{'layer':>5}  {'kernel':<19} {'smallest M':>10}  {'error at M max':>17}  {'theory':>8}  "
        f"{'‖q̃+k̃‖² median/p90':>20}"
    ]
    for (layer, kernel), rows in _layer_rows(report).items():
        last = rows[-1]
        stats = report.layers[layer]["statistics"]
        median = max(s["sum_sq"]["median"] for s in stats)
        p90 = max(s["sum_sq"]["p90"] for s in stats)
        lines.append(
            f"{layer:>5}  {kernel:<19} {_smallest(rows, tol):>10}  "
            f"{last.error:>8.4f} ± {last.error_sd:.4f}  {last.theory:>8.4f}  {median:>9.2f} / {p90:.2f}"
        )
    rec = report.recommendation
    lines.append("")
    lines.append(f"recommendation (tolerance {tol}): {rec.message}")
    for item in rec.exact_or_distill[:12]:
        lines.append(
            f"  layer {item['layer']} head {item['head']}: error {item['error']:.3f} "
            f"(best: {item['best_kernel']} {item['best_error']:.3f}) — {item['reason']}"
        )
    if len(rec.exact_or_distill) > 12:
        lines.append(f"  ... {len(rec.exact_or_distill) - 12} more heads (see the JSON / markdown)")
    return "\n".join(lines)


def format_markdown(report: Any, command: str | None = None) -> str:
    """The markdown report: settings, recommendation, per-layer error vs M, per-head verdicts."""
    s = report.settings
    rec = report.recommendation
    out = ["# performers diagnose", ""]
    if command:
        out += [f"Command: `{command}`", ""]
    out += [
        f"Model: `{s.get('model')}` ({s.get('model_kind')}), data: {s.get('data_source') or s.get('data')}, "
        f"{s.get('sequences')} sequences, {s.get('tokens')} tokens. Kernels {', '.join(s['kernels'])}; "
        f"M = {', '.join(map(str, s['feature_counts']))}; {s['draws']} {s['projection']} projection draws "
        f"per M; tolerance {s['tolerance']} (relative error of a head's attention output, mean over draws).",
        "",
        f"**Recommendation:** {rec.message}.",
        "",
        "| kernel | smallest M, every head | heads meeting at M max | mean head error at M max |",
        "|---|---:|---:|---:|",
    ]
    for kernel, k in rec.per_kernel.items():
        m_all = k["m_all_heads"] if k["m_all_heads"] is not None else "not reachable"
        out.append(
            f"| {kernel} | {m_all} | {k['heads_meeting_at_max']} / {rec.heads_total} | "
            f"{k['mean_error_at_max']:.4f} |"
        )
    out += ["", "## Error vs M per layer (all heads), measured mean ± sd | theory (iid, first order)", ""]
    ms = s["feature_counts"]
    out.append("| layer | kernel | " + " | ".join(f"M = {m}" for m in ms) + " |")
    out.append("|---|---|" + "---:|" * len(ms))
    for (layer, kernel), rows in _layer_rows(report).items():
        cells = [f"{r.error:.3f} ± {r.error_sd:.3f} \\| {r.theory:.3f}" for r in rows]
        out.append(f"| {layer} | {kernel} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Heads: logit statistics and smallest M",
        "",
        "‖q̃+k̃‖² over (real query, visible key) pairs, q̃ = q·√scale; ‖q̃‖‖k̃‖ = scale·‖q‖‖k‖; "
        "logit sd: spread of a query's logits over its keys. Smallest M per kernel (`>` = not "
        "reachable, then the 1/√M extrapolation).",
        "",
        "| layer | head | ‖q̃+k̃‖² median / p90 / max | ‖q̃‖‖k̃‖ median / max | logit sd | FAVOR++ A | "
        + " | ".join(s["kernels"])
        + " |",
        "|---:|---:|---|---|---:|---:|" + "---|" * len(s["kernels"]),
    ]
    verdicts = {(h.layer, h.head, h.kernel): h for h in report.heads}
    for info in report.layers:
        for st in info["statistics"]:
            cells = []
            for kernel in s["kernels"]:
                h = verdicts[(info["layer"], st["head"], kernel)]
                cells.append(str(h.smallest_m) if h.smallest_m else f"> {max(ms)} (≈ {h.needed_m:,})")
            q = st["sum_sq"]
            n = st["norm_product"]
            out.append(
                f"| {info['layer']} | {st['head']} | {q['median']:.2f} / {q['p90']:.2f} / {q['max']:.2f} | "
                f"{n['median']:.2f} / {n['max']:.2f} | {st['logit_sd']:.2f} | {st['favor_pp_a']:.3f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(out) + "\n"


def plot_errors(report: Any, path: Path) -> Path | None:
    """Error vs M per layer (all heads): measured mean (solid, ± sd band) and theory (dashed),
    one colour per kernel, one panel per layer. None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = _layer_rows(report)
    layers = sorted({layer for layer, _ in groups})
    cols = min(3, len(layers))
    rows_n = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.3 * rows_n), squeeze=False)
    colours = {}
    for (layer, kernel), rows in groups.items():
        ax = axes[layers.index(layer) // cols][layers.index(layer) % cols]
        ms = [r.num_features for r in rows]
        mean = [r.error for r in rows]
        sd = [r.error_sd for r in rows]
        (line,) = ax.plot(ms, mean, marker="o", ms=3, label=kernel, color=colours.get(kernel))
        colours[kernel] = line.get_color()
        ax.fill_between(
            ms,
            [m - d for m, d in zip(mean, sd, strict=True)],
            [m + d for m, d in zip(mean, sd, strict=True)],
            color=line.get_color(),
            alpha=0.15,
        )
        ax.plot(ms, [r.theory for r in rows], ls="--", color=line.get_color())
        ax.axhline(report.settings["tolerance"], color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("M")
        ax.set_ylabel("relative error")
    for extra in range(len(layers), rows_n * cols):
        axes[extra // cols][extra % cols].axis("off")
    axes[0][0].legend(fontsize=7, title="solid: measured, dashed: theory", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    report: Any, out_dir: str | Path, *, name: str = "diagnose", command: str | None = None
) -> list[Path]:
    """Write ``NAME.json``, ``NAME.md`` and (with matplotlib) ``NAME.png`` under ``out_dir``;
    returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = report.to_dict()
    if command:
        payload = {"command": command, **payload}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    md_path = out / f"{name}.md"
    md_path.write_text(format_markdown(report, command), encoding="utf-8")
    written = [json_path, md_path]
    png = plot_errors(report, out / f"{name}.png")
    if png is not None:
        written.append(png)
    return written
