"""The recurrent state of causal FAVOR attention and the tiling defaults, shared by every causal path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["DEFAULT_CHUNK_SIZE", "SEGMENT_CHUNKS", "FavorState"]

# Positions per chunk of the causal paths (generic and fused): the masked C×C block inside a
# chunk costs O(C) per position, the state between chunks O(M·D/C).
DEFAULT_CHUNK_SIZE = 64

# Chunks per segment of the fused causal path: its Python loop runs once per segment (a few
# dozen ops) and the tensors of one segment, (B, H, SEGMENT_CHUNKS·C, M), stay a few MiB.
# Measured at L = 16384, C = 64: 8 to 16 chunks per segment beat one chunk at a time (the loop
# overhead) and whole-sequence vectorization (memory traffic of L·M tensors).
SEGMENT_CHUNKS = 16


class FavorState(NamedTuple):
    """Recurrent state of causal linear attention after a prefix of keys.

    Attributes:
        kv: ``(B, H, M', Dv)``, ``Σ_j k'_j v_jᵀ`` in units of ``exp(log_offset)``.
        normalizer: ``(B, H, M')``, ``Σ_j k'_j`` in the same units.
        log_offset: ``(B, H)``, the running key maximum ``m`` the sums are expressed in.
        kernel_params: ``(B, H)`` data-dependent parameters of the feature map the sums were
            built with (FAVOR++'s ``A``), fixed for the rest of the sequence; None for maps
            without parameters.
        kernel: the name of the kernel (:attr:`Kernel.name <performers.ops.Kernel>`) whose
            features the sums hold, set by :func:`~performers.ops.favor_attention` and
            :func:`~performers.ops.favor_attention_step`; a call continuing the state with
            another kernel is refused. None (a state built by hand, or by
            :func:`~performers.ops.linear_attention` from features) is not checked.

    The attention entry points check a state against the inputs it continues (batch, heads,
    ``M'``, ``Dv``, kernel, dtype, device) before using it (:func:`performers.ops.checks.check_state`).
    Code that maps a function over a state's fields should skip the ``kernel`` string (and
    ``kernel_params`` when None), e.g. ``FavorState(*(t.to(d) if isinstance(t, Tensor) else t
    for t in state))``.
    """

    kv: Tensor
    normalizer: Tensor
    log_offset: Tensor
    kernel_params: Tensor | None = None
    kernel: str | None = None

    def rows(self, start: int, stop: int) -> FavorState:
        """The states of batch rows (or packed sequences) ``start`` to ``stop - 1``."""
        return FavorState(
            *(t[start:stop] if isinstance(t, Tensor) else t for t in self[:4]), kernel=self.kernel
        )

    @staticmethod
    def cat(states: Sequence[FavorState]) -> FavorState:
        """One state holding the rows of ``states`` in order (one kernel; the first's name)."""
        first = states[0]
        fields = [None if first[f] is None else torch.cat([s[f] for s in states]) for f in range(4)]
        return FavorState(*fields, kernel=first.kernel)

    def select(self, index: int) -> FavorState:
        """The state of batch row (or packed sequence, see ``cu_seqlens``) ``index``, with a
        batch dimension of 1: what :func:`~performers.ops.favor_attention_step` continues to
        decode that one sequence."""
        i = range(self.kv.shape[0])[index]  # negative indices count from the end; IndexError past it
        return FavorState(
            *(t[i : i + 1] if isinstance(t, Tensor) else t for t in self[:4]), kernel=self.kernel
        )
