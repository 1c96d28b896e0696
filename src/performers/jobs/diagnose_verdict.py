"""From measured errors to decisions: the smallest M per head and kernel, and the model's
recommendation (kernel, M, which heads need exact attention or distillation).

Rules (all on the measured mean error over projection draws, so a user can check them in the
table): a head *meets* the tolerance at ``M`` when its mean relative error is ``≤ tolerance``;
its smallest ``M`` is the first such ``M`` of the grid. The model's recommendation is the
kernel and smallest ``M`` at which *every* head meets it (ties: the lower mean error); when no
kernel gets every head there below the largest ``M``, it is the kernel for which the most heads
do, at the largest ``M``, and the others are listed for exact attention or distillation. The
recommended ``M`` therefore never grows when the tolerance is loosened.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["ErrorRow", "HeadVerdict", "Recommendation", "recommend", "verdicts"]


@dataclass
class ErrorRow:
    """The relative error of one head (or ``"all"`` heads of the layer) at one kernel and M.

    ``error``: mean over draws; ``error_sd``: their standard deviation; ``error_rms``: root mean
    square (what the theory predicts); ``theory``: the first-order iid prediction ``√(T/M)``.
    """

    layer: int
    head: int | str
    kernel: str
    num_features: int
    error: float
    error_sd: float
    error_rms: float
    theory: float

    @classmethod
    def of(cls, layer: int, head: int | str, kernel: str, m: int, errors: Tensor, theory: float) -> ErrorRow:
        values = [float(e) for e in errors]
        return cls(
            layer,
            head,
            kernel,
            m,
            statistics.fmean(values),
            statistics.stdev(values) if len(values) > 1 else 0.0,
            math.sqrt(statistics.fmean(v * v for v in values)),
            theory,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HeadVerdict:
    """One (layer, head, kernel): the smallest M meeting the tolerance, or why not.

    ``smallest_m``: None when not reachable below the largest M tried; ``theory_m``: the M at
    which the theory predicts the tolerance; ``needed_m``: the measured error at the largest M
    extrapolated as ``1/√M`` (only when not reachable); ``reason``: a sentence (idem).
    """

    layer: int
    head: int
    kernel: str
    smallest_m: int | None
    error_at_max: float
    error_sd_at_max: float
    theory_m: int | None
    needed_m: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Recommendation:
    """The model's recommendation; ``exact_or_distill`` lists ``{layer, head, error,
    best_kernel, best_error}`` of the heads that miss the tolerance with the chosen kernel at
    the largest M, and ``layers_affected`` their layers."""

    kernel: str
    num_features: int
    tolerance: float
    all_heads_meet: bool
    heads_meeting: int
    heads_total: int
    exact_or_distill: list[dict[str, Any]] = field(default_factory=list)
    layers_affected: list[int] = field(default_factory=list)
    per_kernel: dict[str, dict[str, Any]] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ceil(x: float) -> int | None:
    return None if not math.isfinite(x) else max(1, math.ceil(x))


def _reason(stats: dict[str, Any], error: float, m_max: int, needed: int | None) -> str:
    median, p90 = stats["sum_sq"]["median"], stats["sum_sq"]["p90"]
    cause = "heavy logits" if median > 1.0 else "a slowly falling error"
    variance = math.expm1(min(median, 700.0))
    trend = f"M ≈ {needed:,}" if needed is not None else "an unbounded M"
    return (
        f"{cause}: ‖q̃+k̃‖² median {median:.2f}, p90 {p90:.2f} (Lemma 2's relative variance "
        f"e^φ−1 = {variance:.3g} per feature at the median); error {error:.3f} at M = {m_max}, "
        f"the 1/√M trend needs {trend}"
    )


def verdicts(
    rows: Sequence[ErrorRow],
    layers: Sequence[dict[str, Any]],
    tolerance: float,
    feature_counts: Sequence[int],
) -> list[HeadVerdict]:
    """One :class:`HeadVerdict` per (layer, head, kernel) of ``rows`` (per-head rows only)."""
    groups: dict[tuple[int, int, str], list[ErrorRow]] = {}
    for row in rows:
        if row.head != "all":
            groups.setdefault((row.layer, int(row.head), row.kernel), []).append(row)
    m_max = max(feature_counts)
    result = []
    for (layer, head, kernel), group in groups.items():
        group.sort(key=lambda r: r.num_features)
        last = group[-1]
        smallest = next((r.num_features for r in group if r.error <= tolerance), None)
        verdict = HeadVerdict(
            layer,
            head,
            kernel,
            smallest,
            last.error,
            last.error_sd,
            _ceil(last.theory**2 * last.num_features / tolerance**2),
        )
        if smallest is None:
            verdict.needed_m = _ceil(m_max * (last.error / tolerance) ** 2)
            stats = layers[layer]["statistics"][head]
            verdict.reason = _reason(stats, last.error, m_max, verdict.needed_m)
        result.append(verdict)
    return result


def recommend(
    heads: Sequence[HeadVerdict], kernels: Sequence[str], feature_counts: Sequence[int], tolerance: float
) -> Recommendation:
    """The model's recommendation from the per-head verdicts (rules: module docstring)."""
    m_max = max(feature_counts)
    by_kernel = {k: [h for h in heads if h.kernel == k] for k in kernels}
    per_kernel: dict[str, dict[str, Any]] = {}
    for kernel, group in by_kernel.items():
        reachable = [h for h in group if h.smallest_m is not None]
        per_kernel[kernel] = {
            "m_all_heads": max(h.smallest_m for h in reachable) if len(reachable) == len(group) else None,
            "heads_meeting_at_max": len(reachable),
            "mean_error_at_max": statistics.fmean(h.error_at_max for h in group),
        }
    complete = [k for k in kernels if per_kernel[k]["m_all_heads"] is not None]
    if complete:
        kernel = min(
            complete, key=lambda k: (per_kernel[k]["m_all_heads"], per_kernel[k]["mean_error_at_max"])
        )
        m = per_kernel[kernel]["m_all_heads"]
    else:
        kernel = min(
            kernels,
            key=lambda k: (-per_kernel[k]["heads_meeting_at_max"], per_kernel[k]["mean_error_at_max"]),
        )
        m = m_max
    chosen = by_kernel[kernel]
    best = {}
    for h in heads:
        key = (h.layer, h.head)
        if key not in best or h.error_at_max < best[key].error_at_max:
            best[key] = h
    missing = [
        {
            "layer": h.layer,
            "head": h.head,
            "error": h.error_at_max,
            "best_kernel": best[(h.layer, h.head)].kernel,
            "best_error": best[(h.layer, h.head)].error_at_max,
            "reason": h.reason,
        }
        for h in chosen
        if h.smallest_m is None
    ]
    layers = sorted({d["layer"] for d in missing})
    meeting = len(chosen) - len(missing)
    if not missing:
        message = (
            f"use kernel {kernel!r} with M = {m}: every one of the {len(chosen)} heads has a relative "
            f"attention error <= {tolerance} (mean over draws)"
        )
    else:
        message = (
            f"no kernel meets the tolerance {tolerance} on every head up to M = {m_max}; "
            f"best: {kernel!r} at M = {m_max}, where {meeting} of {len(chosen)} heads meet it. "
            f"The other {len(missing)} heads (layers {', '.join(map(str, layers))}) need exact "
            "attention or distillation after conversion"
        )
    return Recommendation(
        kernel, m, tolerance, not missing, meeting, len(chosen), missing, layers, per_kernel, message
    )
