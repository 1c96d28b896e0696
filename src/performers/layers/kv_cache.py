"""``KVCache``: keys and values of the positions an exact-attention layer has seen (decoding)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache"]


class KVCache:
    """Keys, values and key padding of the positions one exact-attention layer has seen.

    ``key``: ``(B, H, T, D)``, ``value``: ``(B, H, T, Dv)``, ``key_padding_mask``: ``(B, T)``
    bool or None. The tensors live in buffers with spare capacity that double when full, so
    appending a token copies ``O(1)`` amortized instead of the whole cache (as ``torch.cat``
    per token would). :meth:`append` updates the cache in place; it is meant for inference
    (``torch.no_grad()``).
    """

    def __init__(
        self,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        *,
        capacity: int | None = None,
    ) -> None:
        if key.dim() != 4 or value.dim() != 4 or key.shape[:3] != value.shape[:3]:
            raise ValueError(
                f"KVCache needs key (B, H, T, D) and value (B, H, T, Dv), got {tuple(key.shape)} and "
                f"{tuple(value.shape)}"
            )
        self._key = key
        self._value = value
        self._padding = key_padding_mask
        self.length = key.shape[2]
        if capacity is not None and capacity > self.length:
            self._reserve(capacity)

    @property
    def capacity(self) -> int:
        return self._key.shape[2]

    @property
    def key(self) -> Tensor:
        return self._key[:, :, : self.length]

    @property
    def value(self) -> Tensor:
        return self._value[:, :, : self.length]

    @property
    def key_padding_mask(self) -> Tensor | None:
        return None if self._padding is None else self._padding[:, : self.length]

    def nbytes(self) -> int:
        """Bytes held by the buffers (capacity, not just length)."""
        total = (
            self._key.numel() * self._key.element_size() + self._value.numel() * self._value.element_size()
        )
        return total + (0 if self._padding is None else self._padding.numel())

    def _reserve(self, capacity: int) -> None:
        b, h, _, d = self._key.shape
        key = self._key.new_empty(b, h, capacity, d)
        value = self._value.new_empty(b, h, capacity, self._value.shape[-1])
        key[:, :, : self.length] = self.key
        value[:, :, : self.length] = self.value
        if self._padding is not None:
            padding = self._padding.new_zeros(b, capacity)
            padding[:, : self.length] = self.key_padding_mask
            self._padding = padding
        self._key, self._value = key, value

    def append(self, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None) -> None:
        """Add ``n`` positions: ``key`` ``(B, H, n, D)``, ``value`` ``(B, H, n, Dv)``, mask ``(B, n)``."""
        n = key.shape[2]
        end = self.length + n
        if end > self.capacity:
            self._reserve(max(end, 2 * self.capacity))
        self._key[:, :, self.length : end] = key
        self._value[:, :, self.length : end] = value
        if key_padding_mask is not None and self._padding is None:
            self._padding = torch.zeros(
                self._key.shape[0], self.capacity, dtype=torch.bool, device=self._key.device
            )
        if self._padding is not None:
            self._padding[:, self.length : end] = False if key_padding_mask is None else key_padding_mask
        self.length = end
