"""Character-level language-model examples: windows of an encoded text.

:class:`TextWindows` (training) gives example ``i`` as the ``length`` characters starting at
``i · length + offset``, the offset drawn from the example's own random stream, so every epoch
sees other cuts of the text and a resumed run sees the same ones. :func:`window_batches`
(evaluation) cuts a text into consecutive, non-overlapping windows: every character but the first
of each window is predicted from the characters before it in its window.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from performers.utils.validation import is_int

__all__ = ["TextWindows", "window_batches"]


def _check(ids: Tensor, length: int) -> None:
    if ids.dim() != 1 or ids.dtype != torch.long:
        raise ValueError(f"ids must be a 1-D int64 tensor, got {ids.dtype} {tuple(ids.shape)}")
    if not is_int(length) or length < 2:
        raise ValueError(f"length must be an int >= 2, got {length!r}")
    if len(ids) < length:
        raise ValueError(f"the text has {len(ids)} characters, fewer than one window of {length}")


class TextWindows:
    """Training windows (:class:`~performers.training.data.ExampleSource`) of ``length`` token ids.

    ``len(self) = len(ids) // length``; window ``i`` starts at ``i · length + offset`` with
    ``offset`` uniform in ``[0, length)`` from stream 0 (clipped to the text's end).
    """

    def __init__(self, ids: Tensor, length: int) -> None:
        _check(ids, length)
        self.ids, self.length = ids, length

    def __len__(self) -> int:
        return len(self.ids) // self.length

    def example(self, index: int, streams) -> dict[str, Tensor]:
        offset = int(torch.randint(self.length, (1,), generator=streams(0)))
        start = min(index * self.length + offset, len(self.ids) - self.length)
        window = self.ids[start : start + self.length][None]
        return {"input_ids": window, "attention_mask": torch.ones_like(window), "labels": window.clone()}

    def collate(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        return {key: torch.cat([e[key] for e in examples]) for key in examples[0]}


def window_batches(
    ids: Tensor, length: int, *, batch_size: int = 16, max_windows: int | None = None
) -> Iterator[dict[str, Tensor]]:
    """Consecutive non-overlapping windows of ``length`` (the tail shorter than one is dropped),
    ``batch_size`` per batch; ``max_windows`` takes that many spread evenly over the text."""
    _check(ids, length)
    count = len(ids) // length
    starts = torch.arange(count) * length
    if max_windows is not None and max_windows < count:
        starts = starts[torch.linspace(0, count - 1, max_windows).round().long()]
    for first in range(0, len(starts), batch_size):
        rows = torch.stack([ids[s : s + length] for s in starts[first : first + batch_size].tolist()])
        yield {"input_ids": rows, "attention_mask": torch.ones_like(rows), "labels": rows.clone()}
