"""What the processes of a context-parallel call must agree on, checked with one small
all-gather before any other collective: a mismatch — or inputs one process rejects — raises on
every process instead of leaving the others waiting in a collective it never enters."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from performers.distributed.collectives import all_gather

__all__ = ["ShardLayout", "agree_on_call", "call_row"]

_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)

# The fields every process must share, in the order they are gathered, with how to say them.
_SHARED = (
    ("batch", "batch size B"),
    ("heads", "heads H"),
    ("dim", "head size D"),
    ("value_dim", "value size Dv"),
    ("features", "projection rows M"),
    ("causal", "causal"),
    ("kernel", "kernel"),
    ("dtype", "dtype"),
    ("scale", "scale"),
    ("projection", "projection values"),
    ("initial_state", "initial_state given"),
    ("return_state", "return_state"),
)


@dataclass(frozen=True)
class ShardLayout:
    """Where each process's shard lies: ``query_lengths`` / ``key_lengths`` per group rank,
    ``self_attention`` (every shard has ``Lq == Lk``), ``key_start`` of this shard."""

    query_lengths: tuple[int, ...]
    key_lengths: tuple[int, ...]
    rank: int
    self_attention: bool

    @property
    def key_start(self) -> int:
        return sum(self.key_lengths[: self.rank])

    @property
    def total_keys(self) -> int:
        return sum(self.key_lengths)


def _float_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _projection_digest(projection: Tensor | None) -> int:
    # Equal draws give equal digests; a differently seeded draw differs (a weighted sum of the
    # values in float64 is compared bit for bit).
    if projection is None:
        return -1
    values = projection.detach().to(torch.float64).flatten()
    weights = torch.arange(1, values.numel() + 1, dtype=torch.float64, device=values.device)
    return _float_bits(float((values * weights.sin()).sum()))


def call_row(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor | None,
    *,
    kernel_name: str,
    causal: bool,
    scale: float,
    initial_state: bool,
    return_state: bool,
    shard_offset: int | None,
) -> list[int]:
    """This process's description of its call: the shared fields, then its query and key
    lengths and its ``shard_offset`` (-1: not given)."""
    mine = {
        "batch": q.shape[0],
        "heads": q.shape[1],
        "dim": q.shape[-1],
        "value_dim": v.shape[-1],
        "features": -1 if projection is None else projection.shape[0],
        "causal": int(causal),
        "kernel": zlib.crc32(kernel_name.encode()),
        "dtype": _DTYPES.index(q.dtype) if q.dtype in _DTYPES else 99,
        "scale": _float_bits(scale),
        "projection": _projection_digest(projection),
        "initial_state": int(initial_state),
        "return_state": int(return_state),
    }
    return [mine[name] for name, _ in _SHARED] + [
        q.shape[2],
        k.shape[2],
        -1 if shard_offset is None else shard_offset,
    ]


def agree_on_call(row: list[int] | None, error: Exception | None, *, group, rank: int, device) -> ShardLayout:
    """Gather every process's :func:`call_row` (None with the ``error`` its input checks raised);
    raise on every process if any process's checks failed or the processes disagree."""
    width = len(_SHARED) + 3
    mine = [0, *row] if error is None else [1] + [-1] * width
    table = all_gather(torch.tensor(mine, dtype=torch.int64, device=device), group).cpu().tolist()
    failed = [r for r, values in enumerate(table) if values[0]]
    if error is not None:
        raise error
    if failed:
        raise ValueError(
            f"context-parallel favor_attention: rank {failed[0]} rejected its inputs (its own error says "
            "why); no process ran the attention"
        )
    table = [values[1:] for values in table]
    for index, (name, words) in enumerate(_SHARED):
        values = [r[index] for r in table]
        if len(set(values)) > 1:
            bad = next(i for i, value in enumerate(values) if value != values[0])
            if name in ("kernel", "dtype", "scale", "projection", "causal", "initial_state", "return_state"):
                detail = f"rank {bad} differs from rank 0"
            else:
                detail = f"rank 0 has {values[0]}, rank {bad} has {values[bad]}"
            raise ValueError(
                f"context-parallel favor_attention: the processes of the group disagree on the {words} "
                f"({detail}); every shard of one sequence needs the same shapes, options and projection"
            )
    n = len(_SHARED)
    query_lengths = tuple(r[n] for r in table)
    key_lengths = tuple(r[n + 1] for r in table)
    offsets = [r[n + 2] for r in table]
    if any(o >= 0 for o in offsets):
        if any(o < 0 for o in offsets):
            raise ValueError("context-parallel favor_attention: shard_offset is given on some processes only")
        for r in range(1, len(offsets)):
            expected = offsets[r - 1] + key_lengths[r - 1]
            if offsets[r] != expected:
                raise ValueError(
                    "context-parallel favor_attention: the shards are not contiguous in group-rank "
                    f"order: rank {r} starts at position {offsets[r]}, but rank {r - 1} holds "
                    f"positions {offsets[r - 1]}..{expected - 1}, so rank {r} must start at {expected}"
                )
    return ShardLayout(
        query_lengths, key_lengths, rank, all(a == b for a, b in zip(query_lengths, key_lengths, strict=True))
    )
