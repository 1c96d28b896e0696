"""What the training loop needs from a data set: examples made one at a time from their own
random streams, and a way to pad them into a batch.

The trainer knows nothing of proteins or text. A data set for it implements
:class:`ExampleSource`; :mod:`performers.proteins.data` provides the protein ones.

Every random choice of an example (a crop, a mask) is drawn from generators that are a pure
function of ``(seed, epoch, slot in the global batch)`` (:class:`RandomStreams`), so

* a resumed run sees exactly the examples the uninterrupted run would have seen, with nothing
  stored, and
* the batch is the same whatever the number of processes sharing it.

:class:`PackedCollate` lays a batch's examples end to end in one row instead of padding each
to the longest (``--pack``): the same examples, no padded tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from performers.utils import IGNORE_INDEX, derive_seed

__all__ = ["ExampleSource", "PackedCollate", "RandomStreams"]


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


class PackedCollate:
    """Collate examples into one packed row: whole examples end to end, no padding, no
    cross-example attention.

    The examples (each ``(1, L_i)``, ``L_i <= max_length``) are laid end to end in the order
    given, in the layout of :mod:`performers.layers.packed`:

    * ``input_ids``, ``attention_mask`` (all ones: every position is an example's token),
      ``labels``: ``(1, T)`` with ``T = sum(L_i)``;
    * ``cu_seqlens``: int32 ``(N + 1,)``, the offsets of the ``N`` examples, from 0 to ``T``.

    Nothing is padded: linear attention costs the same on one row of ``T`` tokens as on rows of
    ``max_length`` (an earlier layout filled rows of ``max_length`` greedily and computed the
    rows' tails: 22 % of the positions at crop 1024, batch 16). ``max_length`` is the longest
    example accepted (the crop). ``causal``: the labels are next tokens, shifted by the trainer
    across the whole row; each example's first label is ignored so that no example is predicted
    from the one before it (unpacked, the shift drops it anyway). Picklable (loader workers run
    it).
    """

    def __init__(self, max_length: int, *, causal: bool = False) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length, self.causal = max_length, causal

    def __call__(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        names = ("input_ids", "attention_mask", "labels")
        if not examples:
            raise ValueError("packed batches need at least one example, got none")
        for example in examples:
            if set(example) != set(names):
                raise ValueError(
                    f"packed batches take token examples ({', '.join(names)}), got {sorted(example)}"
                )
            length = int(example["input_ids"].shape[1])
            if length > self.max_length:
                raise ValueError(
                    f"an example of {length} tokens is longer than the packed batches' "
                    f"max_length {self.max_length}"
                )
        parts: dict[str, list[Tensor]] = {name: [] for name in names}
        offsets = [0]
        for example in examples:
            for name in names:
                parts[name].append(example[name][0].long())
            if self.causal:
                parts["labels"][-1] = parts["labels"][-1].clone()
                parts["labels"][-1][0] = IGNORE_INDEX
            offsets.append(offsets[-1] + int(example["input_ids"].shape[1]))
        batch = {name: torch.cat(parts[name])[None] for name in names}
        batch["cu_seqlens"] = torch.tensor(offsets, dtype=torch.int32)
        return batch
