"""How well each softmax estimator approximates exact attention, next to the paper's theory.

For random queries and keys, every estimator (positive, hyperbolic, trigonometric; iid and
orthogonal projections) is drawn ``repeats`` times per feature count ``M`` and compared with
exact softmax attention. Two numbers per row:

* the relative Frobenius error of the attention output, ``‖out − exact‖ / ‖exact‖``;
* the mean squared error of the kernel entries ``φ(q̃_i)ᵀφ(k̃_j)`` against ``exp(q̃_iᵀk̃_j)``,
  beside Lemma 2's closed form for iid features averaged over the same pairs (orthogonal
  features should come out below it, Theorem 2).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from performers.ops import theory
from performers.ops.attention import favor_attention
from performers.ops.exact import exact_attention
from performers.ops.features import feature_map
from performers.ops.projections import make_projection

THEORY = {
    "softmax": theory.mse_positive,
    "softmax-hyperbolic": theory.mse_hyperbolic,
    "trig": theory.mse_trigonometric,
}


@dataclass
class ApproximationRow:
    kernel: str
    projection: str
    num_features: int
    attention_rel_error: float
    attention_rel_error_sd: float
    kernel_mse: float
    kernel_mse_theory_iid: float


def measure(
    *,
    length: int = 256,
    dim: int = 16,
    feature_counts: tuple[int, ...] = (16, 64, 256),
    repeats: int = 8,
    input_std: float = 0.5,
    seed: int = 0,
) -> list[ApproximationRow]:
    """Run the comparison; inputs are ``N(0, input_std²)`` of shape ``(1, 1, length, dim)``."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64
    q = input_std * torch.randn(1, 1, length, dim, generator=gen, dtype=dt)
    k = input_std * torch.randn(1, 1, length, dim, generator=gen, dtype=dt)
    v = torch.randn(1, 1, length, dim, generator=gen, dtype=dt)
    exact = exact_attention(q, k, v)
    s = dim**-0.25
    qs, ks = q[0, 0] * s, k[0, 0] * s
    true_kernel = torch.exp(qs @ ks.T)
    pairs_x, pairs_y = qs[:, None, :], ks[None, :, :]

    rows = []
    for kernel, mse_fn in THEORY.items():
        for kind in ("iid", "orthogonal"):
            for m in feature_counts:
                errors, mses = [], []
                for _ in range(repeats):
                    w = make_projection(m, dim, kind=kind, generator=gen, dtype=dt)
                    out = favor_attention(q, k, v, w, kernel=kernel)
                    errors.append(((out - exact).norm() / exact.norm()).item())
                    estimate = feature_map(qs, w, kernel) @ feature_map(ks, w, kernel).T
                    mses.append((estimate - true_kernel).pow(2).mean().item())
                rows.append(
                    ApproximationRow(
                        kernel=kernel,
                        projection=kind,
                        num_features=m,
                        attention_rel_error=statistics.fmean(errors),
                        attention_rel_error_sd=statistics.stdev(errors) if len(errors) > 1 else 0.0,
                        kernel_mse=statistics.fmean(mses),
                        kernel_mse_theory_iid=mse_fn(pairs_x, pairs_y, m).mean().item(),
                    )
                )
    return rows


def format_table(rows: list[ApproximationRow]) -> str:
    header = (
        "| kernel | projection | M | attention rel. error | kernel MSE | kernel MSE, theory (iid) |\n"
        "|---|---|---:|---:|---:|---:|"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"| {r.kernel} | {r.projection} | {r.num_features} | "
            f"{r.attention_rel_error:.4f} ± {r.attention_rel_error_sd:.4f} | "
            f"{r.kernel_mse:.3e} | {r.kernel_mse_theory_iid:.3e} |"
        )
    return "\n".join(lines)


def write_json(rows: list[ApproximationRow], path: str | Path, settings: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"settings": settings, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(payload, indent=2) + "\n")
