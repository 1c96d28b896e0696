"""The points of ``performers bench speed``: what a point measures (:class:`Spec`), what it
measured (:class:`Point`) and the methods it knows. The measurement is
:mod:`performers.bench.speed`, the report :mod:`performers.bench.speed_report`; both read these."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CAUSAL", "METHODS", "Point", "Spec", "points_from_json"]

METHODS = (
    "favor",
    "favor-causal",
    "exact",
    "exact-causal",
    "identity",
    "plain",
    "plain-compiled",
    "peer",
    "peer-causal",
    "favor-compiled",
    "model-favor",
    "model-exact",
    "model-identity",
)
CAUSAL = {"favor-causal", "exact-causal", "peer-causal"}


@dataclass
class Spec:
    method: str
    length: int
    batch: int = 1
    heads: int = 8
    dim: int = 64
    num_features: int = 256
    dtype: str = "float32"
    autocast: bool = False  # float32 inputs under torch.autocast("cpu", torch.bfloat16)
    threads: int = 2
    repeats: int = 5
    kernel: str = "softmax"
    measure: str = "time"  # or "memory"
    chunk_size: int = 64  # causal FAVOR
    block_size: int | None = None  # fused bidirectional FAVOR (None: sized for the cache)


@dataclass
class Point:
    spec: Spec
    forward_s: float | None = None
    forward_backward_s: float | None = None
    peak_extra_mib: float | None = None
    first_call_s: float | None = None
    floor_forward_s: float | None = None
    floor_forward_backward_s: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def points_from_json(points: list[dict]) -> list[Point]:
    """The points of a ``speed.json`` (its ``"points"``)."""
    return [Point(**{**p, "spec": Spec(**p["spec"])}) for p in points]
