"""The heatmap of a saturation scan: positions × the 20 amino acids, the picture people look at
first.

One column per position, one row per amino acid (grouped by chemistry: hydrophobic, aromatic,
polar, charged, special); a diverging colormap centred at 0 — red below (less likely than the
wild type), blue above, white for the wild type itself — on one colour scale for the whole
protein, symmetric about 0. The wild-type residue of each column is marked with a black dot.
A long protein is split into panels of ``per_row`` positions stacked in one tall figure (the
figure's width stays readable; its height grows with the protein), each column labelled with
the wild-type letter and every tenth with its number.

matplotlib (the ``bench`` extra) draws it, with the Agg backend (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path

from performers.jobs.variant_scan import SaturationScan
from performers.utils import InputError, atomic_write

__all__ = ["HEATMAP_ORDER", "figure_size", "plot_saturation"]

# Rows of the heatmap: hydrophobic aliphatic, aromatic, polar, positive, negative, special.
HEATMAP_ORDER = "AVILMFWYSTNQCHKRDEGP"
# Inches per position and per amino acid, and around each panel (labels, title, colour bar).
CELL = 0.13
PANEL_MARGIN = 1.1
SIDE_MARGIN = 1.9
MIN_WIDTH = 6.0
DPI = 100


def figure_size(positions: int, per_row: int = 100) -> tuple[float, float]:
    """``(width, height)`` in inches of the heatmap of ``positions`` columns in panels of at most
    ``per_row`` (at :data:`DPI` dots per inch)."""
    panels = max(1, math.ceil(positions / per_row))
    columns = min(positions, per_row)
    width = max(MIN_WIDTH, SIDE_MARGIN + CELL * columns)
    height = panels * (CELL * len(HEATMAP_ORDER) + PANEL_MARGIN) + 0.6
    return width, height


def plot_saturation(
    scan: SaturationScan, path: str | Path, *, per_row: int = 100, title: str | None = None
) -> Path:
    """Draw ``scan`` (module docstring) into the PNG ``path`` (written atomically); returns it.

    Args:
        per_row: most positions per panel.
        title: above the first panel (default: the strategy and the positions scanned).

    Raises:
        InputError: matplotlib is not installed, or ``per_row`` is below 1.
    """
    if per_row < 1:
        raise InputError(f"per_row must be >= 1, got {per_row}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import Normalize
    except ImportError:
        raise InputError(
            "the heatmap needs matplotlib: pip install 'performers[bench]' (or matplotlib)"
        ) from None
    rows = [scan.amino_acids.index(aa) for aa in HEATMAP_ORDER]
    values = scan.scores[:, rows].T.numpy()  # (20, positions)
    limit = float(abs(values).max()) or 1.0
    norm = Normalize(vmin=-limit, vmax=limit)  # symmetric: 0 is the colormap's centre
    numbers = scan.numbers()
    panels = max(1, math.ceil(len(numbers) / per_row))
    size = figure_size(len(numbers), per_row)
    fig, axes = plt.subplots(panels, 1, figsize=size, squeeze=False, layout="constrained")
    image = None
    for panel, ax in enumerate(axes[:, 0]):
        start, end = panel * per_row, min(len(numbers), (panel + 1) * per_row)
        image = ax.imshow(
            values[:, start:end], cmap="RdBu", norm=norm, aspect="auto", interpolation="nearest",
            extent=(-0.5, end - start - 0.5, len(rows) - 0.5, -0.5),
        )  # fmt: skip
        # The wild type of each column: a dot in its row.
        marks = [
            (column, HEATMAP_ORDER.index(scan.wildtype[p - 1]))
            for column, p in enumerate(scan.positions[start:end])
            if scan.wildtype[p - 1] in HEATMAP_ORDER
        ]
        if marks:
            ax.scatter([c for c, _ in marks], [r for _, r in marks], s=6, c="black", marker="o")
        ax.set_yticks(range(len(rows)), list(HEATMAP_ORDER), fontsize=7)
        ax.set_xticks(
            range(end - start), [scan.wildtype[p - 1] for p in scan.positions[start:end]], fontsize=6
        )
        ax.tick_params(axis="x", length=0, pad=1)
        top = ax.secondary_xaxis("top")
        tens = [c for c in range(end - start) if numbers[start + c] % 10 == 0]
        if not tens or tens[0] >= 3:  # the panel's first number too, where it does not crowd
            tens.insert(0, 0)
        top.set_xticks(tens, [str(numbers[start + c]) for c in tens], fontsize=7)
        ax.set_ylabel("mutant", fontsize=8)
        # Every panel as wide as a full one: a column is the same width in all of them.
        ax.set_xlim(-0.5, (per_row if panels > 1 else end - start) - 0.5)
    axes[-1, 0].set_xlabel("position (wild-type residue below, number above)", fontsize=8)
    first, last = numbers[0], numbers[-1]
    heading = title or f"{scan.strategy} scores, positions {first}-{last} (dot: wild type)"
    axes[0, 0].set_title(heading, fontsize=9, pad=14)
    bar = fig.colorbar(image, ax=list(axes[:, 0]), fraction=0.02, pad=0.01)
    bar.set_label("score (log p(mutant) - log p(wild type))", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    plt.close(fig)
    return path
