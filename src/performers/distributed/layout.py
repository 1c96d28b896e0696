"""Where the shards of a sequence lie: the group of a call, the split of a length over the
processes, a batch cut into this process's shard, and global positions."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from performers.distributed.collectives import all_gather

__all__ = ["ShardPositions", "resolve_group", "shard_bounds", "shard_of", "shard_positions"]


def resolve_group(group):
    """A process group from a ``ProcessGroup``, a one-dimensional ``DeviceMesh`` (e.g.
    ``mesh["context"]``) or None (the default group)."""
    try:
        from torch.distributed.device_mesh import DeviceMesh
    except ImportError:  # pragma: no cover - old torch
        DeviceMesh = ()
    if isinstance(group, DeviceMesh):
        if group.ndim != 1:
            names = getattr(group, "mesh_dim_names", None)
            raise ValueError(
                f"a context-parallel group must be one-dimensional: got a {group.ndim}-D DeviceMesh "
                f"(dimensions {names}); pass one dimension, e.g. mesh['context']"
            )
        return group.get_group()
    return group


def shard_bounds(length: int, world: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of shard ``rank`` when ``length`` positions are split into ``world``
    contiguous shards whose lengths differ by at most one (the first ``length % world`` one
    longer)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    if length < world:
        raise ValueError(f"a sequence of {length} positions cannot be split into {world} non-empty shards")
    base, extra = divmod(length, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_of(tensor: Tensor, group=None, *, dim: int = 1) -> Tensor:
    """This process's contiguous shard of ``tensor`` along ``dim`` (default 1: the sequence of a
    ``(B, L, ...)`` batch), split by :func:`shard_bounds` over ``group`` (or a 1-D DeviceMesh)."""
    group = resolve_group(group)
    start, stop = shard_bounds(tensor.shape[dim], dist.get_world_size(group), dist.get_rank(group))
    return tensor.narrow(dim, start, stop - start)


class ShardPositions(NamedTuple):
    """Where this process's shard sits in the whole sequence (see :func:`shard_positions`)."""

    position_ids: Tensor  # (B, L_r) positions in the whole sequence
    start: int  # index of the shard's first position
    total_length: int  # positions in the whole sequence
    next_position: Tensor  # (B,) position of a token appended after the whole sequence


def shard_positions(padding: Tensor | None, batch: int, length: int, group, *, device=None) -> ShardPositions:
    """Positions of this shard's tokens in the whole sequence, counted from each row's first real
    token as :func:`performers.models.masks.position_ids_from_padding` does on one process: the
    real tokens of the shards before this one (one all-gather of ``(B+1,)`` counts) plus this
    shard's running count.

    Args:
        padding: ``(B, L_r)`` bool (True = pad) or None.
        batch, length: ``B`` and ``L_r``.
        group: the process group (or 1-D DeviceMesh) whose ranks order the shards.
    """
    group = resolve_group(group)
    rank = dist.get_rank(group)
    real = (
        torch.ones(batch, length, dtype=torch.long, device=device) if padding is None else (~padding).long()
    )
    mine = torch.cat([real.sum(dim=1), torch.tensor([length], device=real.device)])
    table = all_gather(mine, group)  # (W, B + 1): real tokens per row, then the shard's length
    before = table[:rank, :batch].sum(dim=0)  # (B,)
    lengths = table[:, batch].tolist()
    total_real = table[:, :batch].sum(dim=0)
    return ShardPositions(
        position_ids=(before[:, None] + real.cumsum(dim=1) - 1).clamp(min=0),
        start=int(sum(lengths[:rank])),
        total_length=int(sum(lengths)),
        next_position=(total_real - 1).clamp(min=0) + 1,
    )
