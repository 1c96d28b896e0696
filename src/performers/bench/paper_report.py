"""Markdown tables and plots of attention comparisons (:mod:`performers.bench.attention_sweep`)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from performers.bench.attention_sweep import SweepRun, read_curve

__all__ = ["format_metric", "plot_curves", "plot_image_grid", "summary_table"]

LABELS = {
    "accuracy": "accuracy (%)",
    "bits_per_character": "bits/char",
    "bits_per_dimension": "bits/dim",
}


def format_metric(metric: str, mean: float, sd: float, evaluated: int) -> str:
    if evaluated == 0 or not math.isfinite(mean):
        return "— (no finite result)"
    scale = 100.0 if metric == "accuracy" else 1.0
    digits = 2 if metric == "accuracy" else 3
    text = f"{scale * mean:.{digits}f}"
    if evaluated > 1:
        text += f" ± {scale * sd:.{digits}f}"
    return text


def summary_table(rows: list[dict], *, memory: bool = False) -> list[str]:
    """Markdown lines: one row per (budget, variant) of :func:`summarize_runs` output."""
    if not rows:
        return []
    metric = rows[0]["metric"]
    header = (
        f"| attention | budget | {LABELS.get(metric, metric)} (mean ± sd over seeds) | steps | steps/s "
        "| train tokens/s |"
        + (" peak extra memory |" if memory else "")
        + " diverged / NaN runs | grad-norm spikes |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        failed = f" ({row['failed']} failed)" if row["failed"] else ""
        lines.append(
            f"| {row['variant']} | {row['budget']} | "
            f"{format_metric(metric, row['mean'], row['sd'], row['evaluated'])} | {row['steps']:.0f} "
            f"| {row['steps_per_second']:.2f} | {row['tokens_per_second']:,.0f} |"
            + (f" {row['peak_extra_mib']:,.0f} MiB |" if memory else "")
            + f" {row['diverged']}/{row['seeds']} · {row['nonfinite_runs']}/{row['seeds']}{failed} "
            f"| {row['grad_norm_spikes']} |"
        )
    return lines


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_curves(runs: list[SweepRun], metric: str, path: Path, title: str) -> Path | None:
    """Training loss and validation ``metric`` against steps, mean over seeds, one line per variant."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    variants = list(dict.fromkeys(r.variant for r in runs))
    colors = plt.cm.tab20.colors if len(variants) > 10 else plt.cm.tab10.colors  # one per variant
    for index, variant in enumerate(variants):
        color = colors[(2 * index) % 20 + (2 * index) // 20] if len(variants) > 10 else colors[index % 10]
        curves = [read_curve(r.directory) for r in runs if r.variant == variant]
        curves = [c for c in curves if c]
        if not curves:
            continue
        steps = min(len(c) for c in curves)
        loss = [statistics.fmean(c[i]["loss"] for c in curves) for i in range(steps)]
        left.plot(range(1, steps + 1), loss, label=variant, alpha=0.85, color=color)
        key = f"valid_{metric}"
        evals = [[(r["step"], r[key]) for r in c if key in r] for c in curves]
        points = min(len(e) for e in evals)
        if points:
            xs = [evals[0][i][0] for i in range(points)]
            scale = 100.0 if metric == "accuracy" else 1.0
            ys = [scale * statistics.fmean(e[i][1] for e in evals) for i in range(points)]
            right.plot(xs, ys, marker="o", label=variant, color=color)
    left.set(xlabel="step", ylabel="training loss", title=f"{title}: training loss (mean over seeds)")
    # Held-out data: validation proteins / text; for pixels the first test images (curves only;
    # nothing is selected on them).
    right.set(xlabel="step", ylabel=LABELS.get(metric, metric), title=f"{title}: held-out (mean over seeds)")
    if metric != "accuracy":
        left.set_yscale("log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_image_grid(images: dict[str, list], path: Path) -> Path | None:
    """One row per model of 28×28 uint8 images (lists of tensors), labelled by the row's name."""
    plt = _pyplot()
    if plt is None or not images:
        return None
    columns = max(len(v) for v in images.values())
    fig, axes = plt.subplots(len(images), columns, figsize=(columns * 0.8, len(images) * 0.95), squeeze=False)
    for row, (name, pictures) in enumerate(images.items()):
        for col in range(columns):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(pictures):
                ax.imshow(pictures[col].numpy(), cmap="gray", vmin=0, vmax=255)
        axes[row][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
