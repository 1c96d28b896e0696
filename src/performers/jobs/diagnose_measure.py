"""Measured FAVOR attention error, and the logit statistics that drive it, for captured q/k/v.

One :class:`CapturedAttention` holds what an attention layer saw on a batch: its queries, keys
and values, which positions are padding, whether it is causal and its softmax scale. The
measurement runs :func:`performers.favor_attention` on them with fresh random projections and
compares with exact softmax attention, over real (non-padded) query positions only; padded keys
are masked in both, so padding never enters a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from performers.ops import exact_attention, favor_attention, make_projection

__all__ = ["CapturedAttention", "logit_statistics", "measure_errors"]

# Feature-tensor elements (batch × heads × length × features) computed at once: the batch is
# split into chunks so that M = 1024 on a few hundred sequences fits in memory.
_CHUNK_ELEMENTS = 8_000_000


@dataclass
class CapturedAttention:
    """What one attention layer saw on a batch.

    Attributes:
        q, k: ``(B, H, L, D)`` queries and keys as fed to attention (after any rotary embedding),
            float64.
        v: ``(B, H, L, Dv)``.
        padding: ``(B, L)`` bool, True = padded position (neither a query nor a key).
        causal: query ``i`` sees keys ``j ≤ i``.
        scale: the softmax temperature of ``exp(scale·qᵀk)``.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    padding: Tensor
    causal: bool
    scale: float

    @property
    def scaled(self) -> tuple[Tensor, Tensor]:
        """``(q̃, k̃) = (q·√scale, k·√scale)``: the inputs of the feature maps."""
        root = self.scale**0.5
        return self.q * root, self.k * root


def _head_sums(out: Tensor, exact: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """``(Σ ‖out − exact‖², Σ ‖exact‖²)`` per head over kept queries: ``(B, H, L, Dv)`` → ``(H,)``."""
    mask = keep[:, None, :, None].to(out.dtype)
    diff = ((out - exact) * mask).pow(2).sum(dim=(0, 2, 3))
    return diff, (exact * mask).pow(2).sum(dim=(0, 2, 3))


def measure_errors(
    layer: CapturedAttention,
    *,
    kernels: Sequence[str],
    feature_counts: Sequence[int],
    draws: int,
    projection: str = "orthogonal",
    generator: torch.Generator,
) -> dict[tuple[str, int], tuple[Tensor, Tensor]]:
    """Squared error ``‖ô − o‖²`` of each head's attention output per draw, and ``‖o‖²``, summed
    over real queries (their ratio's square root is the relative error).

    The same ``draws`` projections per ``M`` serve every kernel (a paired comparison).

    Returns:
        ``{(kernel, M): (squared errors (draws, H), squared norms (H,))}``, float64.
    """
    q, k, v, padding = layer.q, layer.k, layer.v, layer.padding
    batch, heads, length, dim = q.shape
    keep = ~padding
    options = {"causal": layer.causal, "scale": layer.scale}
    exact = exact_attention(q, k, v, key_padding_mask=padding, **options)
    results: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
    for m in feature_counts:
        projections = [
            make_projection(m, dim, kind=projection, generator=generator, dtype=q.dtype) for _ in range(draws)
        ]
        # Hyperbolic features are 2M wide: size chunks for the widest.
        chunk = max(1, _CHUNK_ELEMENTS // (heads * length * 2 * m))
        for kernel in kernels:
            errors = torch.zeros(draws, heads, dtype=torch.float64)
            den = torch.zeros(heads, dtype=torch.float64)
            for r, w in enumerate(projections):
                den.zero_()
                for s in range(0, batch, chunk):
                    part = slice(s, s + chunk)
                    out = favor_attention(
                        q[part], k[part], v[part], w, kernel=kernel, key_padding_mask=padding[part], **options
                    )
                    d, e = _head_sums(out.double(), exact[part].double(), keep[part])
                    errors[r] += d
                    den += e
            results[(kernel, m)] = (errors, den)
    return results


def _quantiles(values: Tensor) -> dict[str, float]:
    values = values.double().flatten()
    if values.numel() == 0:
        return {"median": float("nan"), "p90": float("nan"), "max": float("nan")}
    # torch.quantile is limited to 16M elements; sort-based quantiles have no limit.
    ordered = values.sort().values
    n = ordered.numel()
    return {
        "median": float(ordered[(n - 1) // 2]),
        "p90": float(ordered[min(n - 1, int(0.9 * (n - 1)))]),
        "max": float(ordered[-1]),
    }


def logit_statistics(layer: CapturedAttention, queries: Tensor) -> list[dict]:
    """Per head, over the pairs (chosen real query ``i``, visible real key ``j``):

    * ``sum_sq``: quantiles of ``‖q̃_i + k̃_j‖²``, the exponent of Lemma 2's variance
      ``e^{‖q̃+k̃‖²} − 1``;
    * ``norm_product``: quantiles of ``‖q̃_i‖·‖k̃_j‖ = scale·‖q_i‖·‖k_j‖``, the largest logit the
      pair could have;
    * ``logit_sd``: the mean over queries of the standard deviation of ``q̃_iᵀk̃_j`` over keys
      (how peaked the attention is).

    ``queries``: ``(B, L)`` bool, the query positions used (real tokens).
    """
    qs, ks = layer.scaled
    keep = ~layer.padding
    batch, heads, length, _ = qs.shape
    positions = torch.arange(length)
    rows = []
    for h in range(heads):
        sums, norms, sds = [], [], []
        for b in range(batch):
            i = queries[b].nonzero().flatten()
            if i.numel() == 0:
                continue
            visible = keep[b][None, :].expand(i.numel(), length)
            if layer.causal:
                visible = visible & (positions[None, :] <= i[:, None])
            q_i, k_b = qs[b, h, i], ks[b, h]
            pair = (q_i[:, None, :] + k_b[None]).pow(2).sum(-1)
            norm = q_i.norm(dim=-1)[:, None] * k_b.norm(dim=-1)[None, :]
            logits = q_i @ k_b.T
            sums.append(pair[visible])
            norms.append(norm[visible])
            count = visible.sum(-1).clamp_min(1)
            mean = (logits * visible).sum(-1) / count
            var = (((logits - mean[:, None]) * visible).pow(2)).sum(-1) / count
            sds.append(var.sqrt())
        rows.append(
            {
                "head": h,
                "sum_sq": _quantiles(torch.cat(sums) if sums else torch.empty(0)),
                "norm_product": _quantiles(torch.cat(norms) if norms else torch.empty(0)),
                "logit_sd": float(torch.cat(sds).mean()) if sds else float("nan"),
            }
        )
    return rows
