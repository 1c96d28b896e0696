"""How well each softmax estimator approximates exact attention, next to the paper's theory.

For random queries and keys, every estimator (positive, hyperbolic, trigonometric, FAVOR++; iid
and orthogonal projections) is drawn ``repeats`` times per feature count ``M`` and compared with
exact softmax attention. Two numbers per row:

* the relative Frobenius error of the attention output, ``‖out − exact‖ / ‖exact‖``;
* the mean squared error of the kernel entries ``φ(q̃_i)ᵀφ(k̃_j)`` against ``exp(q̃_iᵀk̃_j)``
  (over the first ``KERNEL_PAIRS_MAX`` queries and keys), beside the closed form for iid
  features averaged over the same pairs (Lemma 2; for FAVOR++ the GERF variance at the ``A``
  attention used; orthogonal features should come out below it, Theorem 2).

Further sections (``performers bench approximation --sections ...``, see :func:`run_sections`):
``kernel`` (kernel-value MSE vs ``M`` for chosen pairs, Monte Carlo next to theory),
``reduction`` (FAVOR++'s variance reduction over FAVOR+), ``proteins`` (attention error on q/k/v
captured from every layer of trained protein models) and ``sklearn`` (RBF kernel approximation
on scikit-learn's digits: Gram-matrix error and downstream accuracy against ``RBFSampler`` and
``Nystroem``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from performers.bench.approximation_sklearn import sklearn_digits
from performers.bench.results import write_results
from performers.ops import (
    KERNELS,
    exact_attention,
    favor_attention,
    feature_map,
    make_projection,
    orthogonal_projection,
    theory,
)

THEORY: dict[str, Callable[..., Tensor]] = {
    "softmax": theory.mse_positive,
    "softmax-hyperbolic": theory.mse_hyperbolic,
    "trig": theory.mse_trigonometric,
    "favor++": theory.mse_optimal_positive,
}
DEFAULT_KERNELS = tuple(THEORY)
KERNEL_PAIRS_MAX = 512
SECTIONS = ("attention", "kernel", "reduction", "proteins", "sklearn")


def _theory_mse(kernel: str, x: Tensor, y: Tensor, m: int, params: Tensor | None) -> Tensor:
    if kernel == "favor++":
        return theory.mse_optimal_positive(x, y, m, params)
    return THEORY[kernel](x, y, m)


def _kernel_params(kernel: str, qs: Tensor, ks: Tensor) -> Tensor | None:
    """The data-dependent parameters attention uses (FAVOR++'s ``A``) for ``(L, D)`` inputs."""
    hook = KERNELS[kernel].parameters
    return None if hook is None else hook(qs[None, None], ks[None, None])[0, 0]


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
    kernels: Sequence[str] = DEFAULT_KERNELS,
) -> list[ApproximationRow]:
    """Run the comparison; inputs are ``N(0, input_std²)`` of shape ``(1, 1, length, dim)``."""
    for kernel in kernels:
        if kernel not in THEORY:
            raise ValueError(f"kernel {kernel!r} has no MSE formula here; choose from {', '.join(THEORY)}")
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64
    q = input_std * torch.randn(1, 1, length, dim, generator=gen, dtype=dt)
    k = input_std * torch.randn(1, 1, length, dim, generator=gen, dtype=dt)
    v = torch.randn(1, 1, length, dim, generator=gen, dtype=dt)
    exact = exact_attention(q, k, v)
    s = dim**-0.25
    qs, ks = q[0, 0] * s, k[0, 0] * s
    # Kernel entries over a subsample of pairs (all pairs at L = 4096 would be 16M entries).
    sub_q, sub_k = qs[:KERNEL_PAIRS_MAX], ks[:KERNEL_PAIRS_MAX]
    true_kernel = torch.exp(sub_q @ sub_k.T)
    pairs_x, pairs_y = sub_q[:, None, :], sub_k[None, :, :]

    # The same projections for every kernel (paired comparison).
    draws = {
        (kind, m): [make_projection(m, dim, kind=kind, generator=gen, dtype=dt) for _ in range(repeats)]
        for kind in ("iid", "orthogonal")
        for m in feature_counts
    }
    rows = []
    for kernel in kernels:
        params = _kernel_params(kernel, qs, ks)  # the A of the whole sequence, as attention uses
        theory_by_m = {
            m: _theory_mse(kernel, pairs_x, pairs_y, m, params).mean().item() for m in feature_counts
        }
        for kind in ("iid", "orthogonal"):
            for m in feature_counts:
                errors, mses = [], []
                for w in draws[(kind, m)]:
                    out = favor_attention(q, k, v, w, kernel=kernel)
                    errors.append(((out - exact).norm() / exact.norm()).item())
                    estimate = feature_map(sub_q, w, kernel, params) @ feature_map(sub_k, w, kernel, params).T
                    mses.append((estimate - true_kernel).pow(2).mean().item())
                rows.append(
                    ApproximationRow(
                        kernel=kernel,
                        projection=kind,
                        num_features=m,
                        attention_rel_error=statistics.fmean(errors),
                        attention_rel_error_sd=statistics.stdev(errors) if len(errors) > 1 else 0.0,
                        kernel_mse=statistics.fmean(mses),
                        kernel_mse_theory_iid=theory_by_m[m],
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
    """Write the rows of :func:`measure` with their ``settings`` to ``path`` (JSON, with the
    environment)."""
    write_results(path, {"settings": settings, "rows": [asdict(r) for r in rows]})


# ---------------------------------------------------------------------------------------------
# Kernel-value MSE vs M for single pairs (Monte Carlo over projections, next to theory)

# (‖x‖ = ‖y‖ = r, cos of the angle): kernel values SM = exp(r² cos) from 0.13 to 3.1.
KERNEL_PAIRS = ((1.5, -0.9), (0.5, 0.5), (1.0, 0.0), (1.0, 0.8), (1.5, 0.5))


def _pair(r: float, cos: float, dim: int) -> tuple[Tensor, Tensor]:
    x = torch.zeros(dim, dtype=torch.float64)
    y = torch.zeros(dim, dtype=torch.float64)
    x[0] = r
    y[0], y[1] = r * cos, r * math.sqrt(max(0.0, 1 - cos * cos))
    return x, y


def _batched_projections(reps: int, m: int, dim: int, kind: str, gen: torch.Generator) -> Tensor:
    """``reps`` independent projections ``(reps, m, dim)``; orthogonal ones from independent blocks."""
    if kind == "iid":
        return torch.randn(reps, m, dim, generator=gen, dtype=torch.float64)
    blocks = -(-m // dim)
    w = orthogonal_projection(reps * blocks * dim, dim, generator=gen, dtype=torch.float64)
    return w.reshape(reps, blocks * dim, dim)[:, :m]


def kernel_mse_sweep(
    *,
    dim: int = 16,
    feature_counts: Sequence[int] = (4, 16, 64, 256),
    repeats: int = 4000,
    kernels: Sequence[str] = DEFAULT_KERNELS,
    seed: int = 0,
) -> list[dict]:
    """Monte Carlo MSE of ``φ(x)ᵀφ(y)`` against ``exp(xᵀy)`` for the pairs of ``KERNEL_PAIRS``.

    FAVOR++ uses the pair's own optimum ``A*(‖x+y‖²)``. Each row has the measured MSE, its
    standard error over the ``repeats`` draws and the iid closed form. All kernels use the same
    draws of the projections (a paired comparison).
    """
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for r, cos in KERNEL_PAIRS:
        x, y = _pair(r, cos, dim)
        sm = theory.softmax_kernel_value(x, y).item()
        phi = ((x + y) ** 2).sum().item()
        a_star = theory.optimal_positive_parameter(phi, dim)
        for kind in ("iid", "orthogonal"):
            for m in feature_counts:
                w = _batched_projections(repeats, m, dim, kind, gen)  # shared by the kernels
                for kernel in kernels:
                    params = a_star if kernel == "favor++" else None
                    p = None if params is None else params.expand(repeats)
                    est = (
                        feature_map(x[None, None], w, kernel, p) * feature_map(y[None, None], w, kernel, p)
                    ).sum(-1)
                    sq = (est[:, 0] - sm) ** 2
                    rows.append(
                        {
                            "r": r,
                            "cos": cos,
                            "kernel_value": sm,
                            "sum_sq_norm": phi,
                            "kernel": kernel,
                            "projection": kind,
                            "num_features": m,
                            "mse": sq.mean().item(),
                            "mse_se": sq.std().item() / math.sqrt(repeats),
                            "mse_theory_iid": _theory_mse(kernel, x, y, m, params).item(),
                        }
                    )
    return rows


def variance_reduction(dim: int = 64, sum_sq_norms: Sequence[float] = (1.0, 4.0, 16.0)) -> list[dict]:
    """FAVOR++ vs FAVOR+ (one feature, iid): relative variances ``Var/SM²`` and their ratio.

    ``Var⁺/SM² = e^φ − 1`` (Lemma 2) and ``Var⁺⁺/SM² = ((1−4A)²/(1−8A))^{d/2} e^{φ/(1−8A)} − 1``
    at ``A = A*(φ)`` (CRT); both are independent of how ``φ = ‖x+y‖²`` splits into ``x``, ``y``.
    """
    rows = []
    for phi in sum_sq_norms:
        phi_t = torch.tensor(phi, dtype=torch.float64)
        a = theory.optimal_positive_parameter(phi_t, dim)
        plus = math.expm1(phi)
        plus_plus = (theory.gerf_second_moment_ratio(phi_t, a, dim) - 1).item()
        rows.append(
            {
                "dim": dim,
                "sum_sq_norm": phi,
                "a_star": a.item(),
                "rel_var_favor_plus": plus,
                "rel_var_favor_plus_plus": plus_plus,
                "reduction_factor": plus / plus_plus,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Attention error on q/k/v captured from trained protein models


def capture_protein_qkv(
    model_dir: str | Path,
    *,
    num_proteins: int = 16,
    max_length: int | None = None,
    split: str = "test",
    sequences: Sequence[str] | None = None,
) -> tuple[list[tuple[Tensor, Tensor, Tensor]], Tensor, dict]:
    """Run a trained protein model on ``num_proteins`` proteins of ``split`` and capture every layer's q/k/v.

    ``sequences`` replaces the corpus's proteins (amino-acid strings) when given.

    Returns ``(layers, key_padding_mask, info)``: per layer ``(q, k, v)`` of shape ``(B, H, L, D)``
    (float64, as fed to the attention after any rotary embedding), the ``(B, L)`` padding mask
    (True = padded) and ``info`` (config summary, tokens).
    """
    from performers.layers import FavorAttention
    from performers.models import from_pretrained
    from performers.proteins import (
        CausalLMCollator,
        ProteinSequences,
        ProteinTokenizer,
        default_corpus,
        read_split,
    )

    # q/k/v do not depend on the backend: run the FAVOR module (also for exact-trained models)
    # so that its pre-hook sees them.
    model = from_pretrained(model_dir, attention="favor").eval()
    config = model.config
    length = min(max_length or config.max_position_embeddings, config.max_position_embeddings)
    tokenizer_path = Path(model_dir) / "tokenizer.json"
    tokenizer = ProteinTokenizer.load(tokenizer_path) if tokenizer_path.exists() else ProteinTokenizer()
    proteins = list(sequences if sequences is not None else read_split(default_corpus(), split))[
        :num_proteins
    ]
    dataset = ProteinSequences(proteins, tokenizer, length)  # [cls, residues..., eos], cropped
    batch = CausalLMCollator(tokenizer)([dataset[i] for i in range(len(dataset))])  # padded
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]

    captured: list[tuple[Tensor, Tensor, Tensor]] = []

    def hook(_module, args, _kwargs):
        q, k, v = args[:3]
        captured.append(tuple(t.detach().to(torch.float64) for t in (q, k, v)))

    handles = [
        m.register_forward_pre_hook(hook, with_kwargs=True)
        for m in model.modules()
        if isinstance(m, FavorAttention)
    ]
    if not handles:
        raise ValueError(f"{model_dir}: the model has no FAVOR attention module to capture q/k from")
    try:
        with torch.no_grad():
            model(input_ids, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()
    mask = attention_mask == 0
    trained_with = json.loads((Path(model_dir) / "config.json").read_text()).get("attention", "favor")
    info = {
        "model": str(model_dir),
        "attention_trained_with": trained_with,
        "layers": len(captured),
        "heads": config.num_heads,
        "head_dim": captured[0][0].shape[-1],
        "proteins": len(proteins),
        "tokens": int((~mask).sum()),
        "max_length": length,
    }
    return captured, mask, info


def protein_attention_errors(
    model_dirs: Sequence[str | Path],
    *,
    feature_counts: Sequence[int] = (16, 64, 256),
    repeats: int = 4,
    kernels: Sequence[str] = DEFAULT_KERNELS,
    num_proteins: int = 16,
    seed: int = 0,
    sequences: Sequence[str] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Relative error of each estimator's attention output vs exact softmax, per model and layer.

    The error is over real (non-padded) query positions; padded keys are masked in both.
    Returns ``(rows, model_infos)``.
    """
    gen = torch.Generator().manual_seed(seed)
    rows, infos = [], []
    for model_dir in model_dirs:
        layers, mask, info = capture_protein_qkv(model_dir, num_proteins=num_proteins, sequences=sequences)
        infos.append(info)
        keep = ~mask[:, None, :, None]
        for layer, (q, k, v) in enumerate(layers):
            exact = exact_attention(q, k, v, key_padding_mask=mask)
            reference = (exact * keep).norm()
            dim = q.shape[-1]
            s = dim**-0.25
            a = KERNELS["favor++"].parameters(q * s, k * s, key_padding_mask=mask)
            draws = {
                (kind, m): [
                    make_projection(m, dim, kind=kind, generator=gen, dtype=torch.float64)
                    for _ in range(repeats)
                ]
                for kind in ("iid", "orthogonal")
                for m in feature_counts
            }
            for kernel in kernels:
                for kind in ("iid", "orthogonal"):
                    for m in feature_counts:
                        errors = []
                        for w in draws[(kind, m)]:
                            out = favor_attention(q, k, v, w, kernel=kernel, key_padding_mask=mask)
                            errors.append((((out - exact) * keep).norm() / reference).item())
                        rows.append(
                            {
                                "model": info["model"],
                                "layer": layer,
                                "kernel": kernel,
                                "projection": kind,
                                "num_features": m,
                                "attention_rel_error": statistics.fmean(errors),
                                "attention_rel_error_sd": statistics.stdev(errors)
                                if len(errors) > 1
                                else 0.0,
                                "favor_pp_a_mean": a.mean().item(),
                            }
                        )
    return rows, infos


# ---------------------------------------------------------------------------------------------
# All sections: JSON, plots and the markdown results file


def run_sections(
    sections: Sequence[str],
    *,
    length: int,
    dim: int,
    feature_counts: Sequence[int],
    repeats: int,
    input_std: float,
    seed: int,
    kernels: Sequence[str] = DEFAULT_KERNELS,
    models: Sequence[str | Path] = (),
    num_proteins: int = 16,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the chosen ``SECTIONS`` and return their results (JSON-ready); plots and tables:
    :mod:`performers.bench.approximation_report`."""
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    results: dict = {}
    if "attention" in sections:
        log(f"attention: L={length}, D={dim}, M={list(feature_counts)}, {repeats} draws")
        rows = measure(
            length=length,
            dim=dim,
            feature_counts=tuple(feature_counts),
            repeats=repeats,
            input_std=input_std,
            seed=seed,
            kernels=kernels,
        )
        results["attention"] = [asdict(r) for r in rows]
    if "kernel" in sections:
        log("kernel: Monte Carlo kernel-value MSE per pair")
        results["kernel"] = kernel_mse_sweep(kernels=kernels, seed=seed)
    if "reduction" in sections:
        results["reduction"] = variance_reduction()
    if "proteins" in sections:
        if not models:
            raise ValueError("section 'proteins' needs --model PATH (a trained protein model directory)")
        log(f"proteins: q/k/v of every layer of {', '.join(str(m) for m in models)}")
        rows, infos = protein_attention_errors(
            models,
            feature_counts=feature_counts,
            repeats=repeats,
            kernels=kernels,
            num_proteins=num_proteins,
            seed=seed,
        )
        results["proteins"] = {"models": infos, "rows": rows}
    if "sklearn" in sections:
        log("sklearn: digits, Gram error and accuracy")
        rows, info = sklearn_digits()
        results["sklearn"] = {"info": info, "rows": rows}
    return results
