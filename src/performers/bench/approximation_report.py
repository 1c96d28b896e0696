"""Plots and markdown tables of ``performers bench approximation``'s sections
(:func:`performers.bench.approximation.run_sections`)."""

from __future__ import annotations

from pathlib import Path

from performers.bench.approximation import KERNEL_PAIRS_MAX, ApproximationRow, format_table
from performers.bench.results import write_results

__all__ = ["format_sections", "plot_sections", "write_sections"]


def plot_sections(results: dict, directory: str | Path) -> list[Path]:
    """PNG plots of the sections present in ``results``; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    def log_x(ax, values) -> None:
        ax.set_xscale("log")
        ticks = sorted(set(values))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    colors = {"softmax": "C0", "softmax-hyperbolic": "C1", "trig": "C2", "favor++": "C3"}
    styles = {"iid": "o", "orthogonal": "s"}

    if "kernel" in results:
        rows = results["kernel"]
        pairs = sorted({(r["r"], r["cos"]) for r in rows}, key=lambda p: p[0] ** 2 * p[1])
        fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.8), squeeze=False)
        for ax, (rad, cos) in zip(axes[0], pairs, strict=True):
            sel = [r for r in rows if (r["r"], r["cos"]) == (rad, cos)]
            for kernel in dict.fromkeys(r["kernel"] for r in sel):
                for kind in ("iid", "orthogonal"):
                    pts = [r for r in sel if r["kernel"] == kernel and r["projection"] == kind]
                    ax.errorbar(
                        [r["num_features"] for r in pts],
                        [r["mse"] for r in pts],
                        yerr=[r["mse_se"] for r in pts],
                        fmt=styles[kind],
                        color=colors.get(kernel),
                        mfc="none" if kind == "orthogonal" else None,
                        label=f"{kernel} {kind}",
                    )
                pts = [r for r in sel if r["kernel"] == kernel and r["projection"] == "iid"]
                ax.plot(
                    [r["num_features"] for r in pts],
                    [r["mse_theory_iid"] for r in pts],
                    "-",
                    color=colors.get(kernel),
                )
            log_x(ax, [r["num_features"] for r in sel])
            ax.set_yscale("log")
            ax.set_title(f"SM={sel[0]['kernel_value']:.2f}, ‖x+y‖²={sel[0]['sum_sq_norm']:.2f}", fontsize=9)
            ax.set_xlabel("M (projections)")
        axes[0][0].set_ylabel("kernel MSE (lines: iid theory)")
        axes[0][-1].legend(fontsize=6)
        fig.tight_layout()
        path = directory / "kernel_mse.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    panels = []
    if "attention" in results:
        panels.append(("random q/k (see settings)", results["attention"]))
    if "proteins" in results:
        for info in results["proteins"]["models"]:
            for layer in range(info["layers"]):
                sel = [
                    r
                    for r in results["proteins"]["rows"]
                    if r["model"] == info["model"] and r["layer"] == layer
                ]
                panels.append(
                    (f"{Path(info['model']).parent.name}/{Path(info['model']).name} layer {layer}", sel)
                )
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.8), squeeze=False)
        for ax, (title, rows) in zip(axes[0], panels, strict=True):
            for kernel in dict.fromkeys(r["kernel"] for r in rows):
                for kind in ("iid", "orthogonal"):
                    pts = [r for r in rows if r["kernel"] == kernel and r["projection"] == kind]
                    ax.errorbar(
                        [r["num_features"] for r in pts],
                        [r["attention_rel_error"] for r in pts],
                        yerr=[r["attention_rel_error_sd"] for r in pts],
                        fmt=styles[kind] + ("--" if kind == "orthogonal" else "-"),
                        color=colors.get(kernel),
                        label=f"{kernel} {kind}",
                    )
            log_x(ax, [r["num_features"] for r in rows])
            ax.set_yscale("log")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("M (projections)")
        axes[0][0].set_ylabel("attention relative error")
        axes[0][-1].legend(fontsize=6)
        fig.tight_layout()
        path = directory / "attention_error.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if "sklearn" in results:
        rows = results["sklearn"]["rows"]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for name in dict.fromkeys(r["method"] for r in rows):
            pts = [r for r in rows if r["method"] == name]
            n = [r["n_components"] for r in pts]
            axes[0].plot(n, [r["gram_rel_error"] for r in pts], "o-", label=name)
            axes[1].plot(n, [r["gram_rel_error_small"] for r in pts], "o-", label=name)
            axes[2].plot(n, [r["accuracy"] for r in pts], "o-", label=name)
        titles = (
            "Gram rel. error (all entries)",
            f"Gram rel. error (K below its {results['sklearn']['info']['small_quantile']:.0%} quantile)",
            "test accuracy, logistic regression",
        )
        for ax, title in zip(axes, titles, strict=True):
            log_x(ax, [r["n_components"] for r in rows])
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("n_components")
        axes[0].set_yscale("log")
        axes[1].set_yscale("log")
        axes[2].legend(fontsize=7)
        fig.tight_layout()
        path = directory / "sklearn_digits.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def format_sections(results: dict, settings: dict) -> str:
    """Markdown tables of the sections present in ``results``."""
    parts = []
    if "attention" in results:
        rows = [ApproximationRow(**r) for r in results["attention"]]
        parts.append(
            f"### Attention error, random q/k: L = {settings['length']}, D = {settings['dim']}, "
            f"entries N(0, {settings['input_std']}²), {settings['repeats']} draws per row\n\n"
            f"Kernel MSE over the first {KERNEL_PAIRS_MAX}×{KERNEL_PAIRS_MAX} (query, key) pairs of "
            "exp(q·k/√D); theory: Lemma 2 (iid), FAVOR++ at the A attention used.\n\n" + format_table(rows)
        )
    if "kernel" in results:
        lines = [
            "### Kernel-value MSE per pair (Monte Carlo over projections; theory = iid closed form)\n",
            "| SM(x,y) | ‖x+y‖² | kernel | projection | M | MSE ± s.e. | theory (iid) |",
            "|---:|---:|---|---|---:|---:|---:|",
        ]
        for r in results["kernel"]:
            lines.append(
                f"| {r['kernel_value']:.3f} | {r['sum_sq_norm']:.2f} | {r['kernel']} | {r['projection']} | "
                f"{r['num_features']} | {r['mse']:.3e} ± {r['mse_se']:.1e} | {r['mse_theory_iid']:.3e} |"
            )
        parts.append("\n".join(lines))
    if "reduction" in results:
        lines = [
            "### FAVOR++ vs FAVOR+: relative variance Var/SM² of one feature (closed forms)\n",
            "| d | ‖x+y‖² | A* | FAVOR+ | FAVOR++ | reduction factor |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results["reduction"]:
            lines.append(
                f"| {r['dim']} | {r['sum_sq_norm']:g} | {r['a_star']:.4f} | {r['rel_var_favor_plus']:.4g} | "
                f"{r['rel_var_favor_plus_plus']:.4g} | {r['reduction_factor']:.3g} |"
            )
        parts.append("\n".join(lines))
    if "proteins" in results:
        lines = ["### Attention error on q/k/v of trained protein models (all layers)\n"]
        for info in results["proteins"]["models"]:
            lines.append(
                f"* `{info['model']}` (trained with `{info['attention_trained_with']}` attention): "
                f"{info['layers']} layers × {info['heads']} heads, head dim {info['head_dim']}, "
                f"{info['proteins']} test proteins, {info['tokens']} tokens "
                f"(≤ {info['max_length']} per protein)"
            )
        lines += [
            "",
            "| model | layer | kernel | projection | M | attention rel. error | FAVOR++ mean A |",
            "|---|---:|---|---|---:|---:|---:|",
        ]
        for r in results["proteins"]["rows"]:
            lines.append(
                f"| {r['model']} | {r['layer']} | {r['kernel']} | {r['projection']} | {r['num_features']} | "
                f"{r['attention_rel_error']:.4f} ± {r['attention_rel_error_sd']:.4f} | "
                f"{r['favor_pp_a_mean']:.4f} |"
            )
        parts.append("\n".join(lines))
    if "sklearn" in results:
        info = results["sklearn"]["info"]
        lines = [
            "### RBF kernel approximation on scikit-learn's digits\n",
            f"{info['dataset']}; γ = {info['gamma']:.4f}; "
            f"Gram matrices on the {info['test_points']} test points; "
            f"'small' = off-diagonal entries with K ≤ {info['small_threshold']:.4f} (the "
            f"{info['small_quantile']:.0%} quantile); mean ± sd over {info['seeds']} random states; "
            "accuracy of "
            f"LogisticRegression(C=10) on the features (first state). Exact-kernel SVC(C=10): "
            f"{info['kernel_svm_accuracy']:.4f}.\n",
            "| method | n_components | Gram rel. error | Gram rel. error, small K | accuracy |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in results["sklearn"]["rows"]:
            lines.append(
                f"| {r['method']} | {r['n_components']} | "
                f"{r['gram_rel_error']:.4f} ± {r['gram_rel_error_sd']:.4f} | "
                f"{r['gram_rel_error_small']:.4f} ± {r['gram_rel_error_small_sd']:.4f} | "
                f"{r['accuracy']:.4f} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def write_sections(
    results: dict, settings: dict, tables: str, *, out: str | Path | None = None, json_path=None
) -> list[Path]:
    """Write the results of :func:`~performers.bench.approximation.run_sections` with their
    ``settings``: ``approximation.json``, ``tables.md`` (``tables``) and the plots into ``out``,
    and/or the JSON alone to ``json_path``; returns the paths written."""
    record = {"settings": settings, **results}
    written = []
    if out is not None:
        out = Path(out)
        written.append(
            write_results(out / "approximation.json", record, tables + "\n", markdown_path=out / "tables.md")
        )
        written.append(out / "tables.md")
        written += plot_sections(results, out)
    if json_path is not None:
        written.append(write_results(json_path, record))
    return written
