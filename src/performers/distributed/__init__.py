"""Context parallelism: one sequence split into contiguous shards over the processes of a group.

* :func:`favor_attention` — :func:`performers.favor_attention` on this process's shard; the
  shards exchange ``O(M·D)`` summaries per call (an all-reduce bidirectionally, an all-gather of
  prefix states causally), whatever the sequence length.
* :func:`shard_of`, :func:`shard_bounds`, :func:`shard_positions` — cutting a batch into this
  process's shard, and the positions of its tokens in the whole sequence.
* :func:`record_communication` — what the collectives sent (:class:`CollectiveCall`).

Models run context-parallel when given a group (``model(..., context_group=group)``, see
:mod:`performers.models`); ``performers train --context-parallel N`` does it under torchrun.
"""

from performers.distributed.attention import favor_attention
from performers.distributed.collectives import CollectiveCall, record_communication
from performers.distributed.layout import (
    ShardPositions,
    resolve_group,
    shard_bounds,
    shard_of,
    shard_positions,
)

__all__ = [
    "CollectiveCall",
    "ShardPositions",
    "favor_attention",
    "record_communication",
    "resolve_group",
    "shard_bounds",
    "shard_of",
    "shard_positions",
]
