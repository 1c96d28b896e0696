"""How a feature map reads a whole sequence when its positions are split among callers.

Most of FAVOR attention is local to a position; two things are not: the data-dependent
parameters of maps such as FAVOR++ (statistics of every query and key) and the per-feature key
maxima its bidirectional form moves to the queries. Under context parallelism
(:mod:`performers.distributed`) each process holds one contiguous shard of the sequence and
completes those statistics with collectives. The ops stay free of ``torch.distributed``: they
take an object with this protocol, and use plain local reductions without one.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

__all__ = ["SequenceShards"]


class SequenceShards(Protocol):
    """The shards of one sequence, as seen by the caller holding one of them."""

    @property
    def self_attention(self) -> bool:
        """Queries and keys are the same positions on every shard (their padding is shared)."""
        ...

    def sum(self, local: Tensor) -> Tensor:
        """The sum of ``local`` over the shards (same shape everywhere), differentiable."""
        ...

    def max(self, local: Tensor) -> Tensor:
        """The elementwise maximum of ``local`` over the shards (not differentiated)."""
        ...

    def first_defined(self, local: Tensor) -> Tensor:
        """Elementwise, the value of the first shard (in sequence order) where ``local`` is not
        NaN; NaN where no shard has one. Differentiable (towards the shard it was taken from)."""
        ...
