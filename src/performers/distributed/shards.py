"""One sequence split into contiguous shards, one per process of a group, in group-rank order.

:class:`ContextShards` is what the ops' feature stage sees of the other shards
(:class:`performers.ops.shards.SequenceShards`): sums, maxima and "first shard that has it" over
the group, and the start of this shard's key stabilizer offsets.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from performers.distributed.collectives import all_gather, all_reduce_max, all_reduce_sum, first_defined

__all__ = ["ContextShards"]


class ContextShards:
    """The shards of one sequence held by the processes of ``group`` (sequence order = rank order).

    Args:
        group: the process group (None: the default group).
        causal: unidirectional attention (offsets and statistics follow the prefix).
        self_attention: queries and keys are the same positions on every shard.
        initial_offset: ``(B, H)`` log offset of a state preceding the whole sequence (causal).

    After :meth:`key_offset_start` has run, :attr:`prefix_offset` and :attr:`end_offset` hold
    the raw (``-inf`` where no key yet) key maximum before and after this shard.
    """

    def __init__(
        self, group=None, *, causal: bool, self_attention: bool, initial_offset: Tensor | None = None
    ) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.causal = causal
        self._self_attention = self_attention
        self.initial_offset = initial_offset
        self.prefix_offset: Tensor | None = None
        self.end_offset: Tensor | None = None

    @property
    def self_attention(self) -> bool:
        return self._self_attention

    def sum(self, local: Tensor) -> Tensor:
        return all_reduce_sum(local, self.group)

    def max(self, local: Tensor) -> Tensor:
        return all_reduce_max(local, self.group)

    def first_defined(self, local: Tensor) -> Tensor:
        return first_defined(local, self.group)

    def key_offset_start(self, local_max: Tensor) -> Tensor:
        """The offset this shard's keys start from, given their maximum ``(B, H)``.

        Bidirectional: the maximum over every shard (all-reduce). Causal: the running maximum
        of the shards before this one (and of the initial state), from one all-gather of the
        ``(B, H)`` maxima; no later shard enters it.
        """
        local_max = local_max.detach()
        if not self.causal:
            self.prefix_offset = self.end_offset = self.max(local_max)
            return self.prefix_offset
        maxima = all_gather(local_max, self.group)  # (W, B, H)
        prefix = local_max.new_full(local_max.shape, -math.inf)
        if self.initial_offset is not None:
            prefix = self.initial_offset.detach().to(local_max.dtype)
        if self.rank > 0:
            prefix = torch.maximum(prefix, maxima[: self.rank].amax(dim=0))
        self.prefix_offset = prefix
        self.end_offset = torch.maximum(prefix, local_max)
        return prefix
