"""What the training loop needs from a data set: examples made one at a time from their own
random streams, and a way to pad them into a batch.

The trainer knows nothing of proteins or text. A data set for it implements
:class:`ExampleSource`; :mod:`performers.proteins.data` provides the protein ones.

Every random choice of an example (a crop, a mask) is drawn from generators that are a pure
function of ``(seed, epoch, slot in the global batch)`` (:class:`RandomStreams`), so

* a resumed run sees exactly the examples the uninterrupted run would have seen, with nothing
  stored, and
* the batch is the same whatever the number of processes sharing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from performers.utils import derive_seed

__all__ = ["ExampleSource", "RandomStreams"]


class RandomStreams:
    """The independent generators of one example: ``streams(k)`` for ``k = 0, 1, ...``.

    Stream ``k`` of the example in slot ``slot`` of epoch ``epoch`` under ``seed`` is seeded
    with ``derive_seed(seed, STREAMS·epoch + k, slot)``.
    """

    STREAMS = 2  # streams per example (a crop and a mask)

    def __init__(self, seed: int, epoch: int, slot: int) -> None:
        self.seed, self.epoch, self.slot = seed, epoch, slot

    def __call__(self, stream: int) -> torch.Generator:
        if not 0 <= stream < self.STREAMS:
            raise ValueError(f"stream must be in [0, {self.STREAMS}), got {stream}")
        seed = derive_seed(self.seed, self.STREAMS * self.epoch + stream, self.slot)
        return torch.Generator().manual_seed(seed)


@runtime_checkable
class ExampleSource(Protocol):
    """A training set for :class:`~performers.training.Trainer`.

    ``example(i, streams)`` returns example ``i`` as a dict of tensors of shape ``(1, L_i)``
    (``input_ids``, ``attention_mask``, ``labels``: the label of position ``t`` at ``t``; the
    trainer shifts them for causal LMs), drawing any randomness from ``streams``;
    ``collate(examples)`` pads a list of them into one batch ``(B, max L_i)``.
    """

    def __len__(self) -> int: ...

    def example(self, index: int, streams: RandomStreams) -> dict[str, Tensor]: ...

    def collate(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]: ...
