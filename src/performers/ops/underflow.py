"""Detecting query rows that underflowed to zero (causal attention at large logits).

Bidirectional attention moves each feature's largest key log-feature to the query side, so the
largest term of every query row is exactly 1 and no row can underflow. Causal attention cannot:
the offset a key is stored in is the running maximum over the positions before it, and a query
whose features weigh only keys far below that maximum gets a denominator below the smallest
normal float — its output is then the guarded 0 with a zero gradient. Such rows are reported
with a :class:`FavorUnderflowWarning` (shown once per call site by Python's default warning
filter), never returned silently. (This holds for the PyTorch paths and the Triton kernels.)

On CUDA the count is not read at once: reading it would make the host wait for the GPU at every
attention call (a synchronization per layer, which stalls the queue of kernels ahead of it). It
is copied to host memory without waiting and reported by a later attention call once the GPU
has produced it, or by :func:`flush_underflow_warnings` — which the training loop calls every
step and the evaluation and generation functions at their end (they wait for the GPU anyway),
and which runs once more when the interpreter exits.

State: unlike the rest of :mod:`performers.ops`, this module keeps process-wide state, for the
reason above — a queue of counts still on their way from a GPU (``_PENDING``: pinned host
tensors with the CUDA event that says when each has arrived), a lock around it (several threads
may call attention, e.g. ``nn.DataParallel``), and an :mod:`atexit` hook that reports what is
still queued when the interpreter exits. CPU tensors never enter the queue: their count is read
and reported by the call itself.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import warnings
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from performers.ops.state import FavorState

__all__ = ["FavorUnderflowWarning", "count_zero_rows", "flush_underflow_warnings", "warn_zero_rows"]


class FavorUnderflowWarning(RuntimeWarning):
    """Some query rows of causal FAVOR attention underflowed to an all-zero output."""


def _zero_rows(
    out: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    initial_state: FavorState | None,
    causal: bool,
    cu_seqlens: tuple[int, ...] | None = None,
) -> Tensor:
    """:func:`count_zero_rows` as a 0-d int64 tensor on ``out``'s device (nothing is read)."""
    valued = (v != 0).any(dim=-1)  # (B, H, L)
    if key_padding_mask is not None:
        valued = valued & ~key_padding_mask[:, None, :]
    stated = None if initial_state is None else (initial_state.kv != 0).flatten(-2).any(dim=-1)  # (B, H)
    if cu_seqlens is not None:
        seen = _packed_seen(valued, stated, cu_seqlens)
    else:
        seen = valued.cumsum(dim=-1) > 0 if causal else valued.any(dim=-1, keepdim=True)
        if stated is not None:
            seen = seen | stated[..., None]
    return ((out == 0).all(dim=-1) & seen).sum()


def _packed_seen(valued: Tensor, stated: Tensor | None, cu_seqlens: tuple[int, ...]) -> Tensor:
    """Causal ``seen`` of a packed row ``(1, H, T)``: the count of valued keys restarts at each
    sequence (integer sums: exact), and sequence ``i``'s state is row ``i`` of ``stated``."""
    starts = list(cu_seqlens[:-1])
    lengths = torch.tensor([b - a for a, b in itertools.pairwise(cu_seqlens)], device=valued.device)
    counts = valued.cumsum(dim=-1)
    before = torch.nn.functional.pad(counts, (1, 0))[..., starts]  # (1, H, N): count before each start
    seen = counts > before.repeat_interleave(lengths, dim=-1)
    if stated is not None:
        seen = seen | stated.T[None].repeat_interleave(lengths, dim=-1)
    return seen


def count_zero_rows(
    out: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    initial_state: FavorState | None = None,
    *,
    causal: bool = True,
) -> int:
    """Query rows whose output is exactly 0 although they see a key with a nonzero value.

    Args:
        out: ``(B, H, Lq, Dv)`` attention output; v: ``(B, H, Lk, Dv)`` its values.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key (it carries no weight).
        initial_state: the state the keys continue (its keys count as seen).
        causal: query ``i`` sees keys ``≤ i`` (else every key).

    Returns:
        The number of such rows: a convex combination of values that are not all zero is only
        exactly zero when the weights underflowed.
    """
    return int(_zero_rows(out, v, key_padding_mask, initial_state, causal))


class _Pending(NamedTuple):
    """A count on its way from the GPU: ``count`` (pinned host memory) is valid once ``ready()``."""

    count: Tensor
    ready: Callable[[], bool]
    wait: Callable[[], None]
    rows: int
    dtype: torch.dtype
    causal: bool


_PENDING: deque[_Pending] = deque()
_LOCK = threading.Lock()  # (several threads may call attention, e.g. nn.DataParallel)


def _warn(count: int, rows: int, dtype: torch.dtype, causal: bool, stacklevel: int, later: bool) -> None:
    direction = "causal" if causal else "bidirectional"
    when = " (counted on the GPU, reported at a later call)" if later else ""
    warnings.warn(
        f"{direction} FAVOR attention: {count} of {rows} query rows underflowed to an all-zero "
        f"output in {dtype}{when} (query/key logits too large for the key maximum the features "
        "are stored under); scale q and k down, compute in float64, or use the PyTorch "
        "bidirectional paths",
        FavorUnderflowWarning,
        stacklevel=stacklevel + 1,
    )


def _report_pending(*, wait: bool, stacklevel: int) -> int:
    """Report the pending counts the GPU has produced (all of them when ``wait``), in order."""
    total = 0
    while True:
        with _LOCK:
            if not _PENDING or not (wait or _PENDING[0].ready()):
                return total
            item = _PENDING.popleft()
        if wait:
            item.wait()
        count = int(item.count)
        if count:
            _warn(count, item.rows, item.dtype, item.causal, stacklevel + 1, later=True)
        total += count


def flush_underflow_warnings() -> int:
    """Wait for the zero-row counts still being computed on a GPU and report them (a
    :class:`FavorUnderflowWarning` for each call that had some); returns their total. A no-op
    for CPU tensors, whose counts are reported by the call itself."""
    return _report_pending(wait=True, stacklevel=2)


def _defer(count: Tensor, rows: int, dtype: torch.dtype, causal: bool) -> None:
    """Queue a count computed on a CUDA device: copied to pinned memory behind the kernels that
    produce it; an event says when it has arrived."""
    host = torch.empty((), dtype=count.dtype, pin_memory=True)
    host.copy_(count, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(count.device))
    with _LOCK:
        _PENDING.append(_Pending(host, event.query, event.synchronize, rows, dtype, causal))


@atexit.register
def _flush_at_exit() -> None:
    # The last calls of a script that never flushed (a forward pass, an evaluation) still warn.
    if _PENDING:
        try:
            flush_underflow_warnings()
        except Exception:  # CUDA may already be shut down
            pass


def warn_zero_rows(
    out: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    initial_state: FavorState | None = None,
    *,
    causal: bool = True,
    stacklevel: int = 3,
    cu_seqlens: tuple[int, ...] | None = None,
) -> int | None:
    """:func:`count_zero_rows`, and a :class:`FavorUnderflowWarning` naming the count when it is
    not 0. Skipped (returns 0) while compiling or tracing, where it would break the graph. For
    CUDA tensors the count is queued instead (returns None) and reported once the GPU has made
    it: by a later call, or :func:`flush_underflow_warnings`. ``cu_seqlens``: a causal packed
    row (``B = 1``; the boundaries as ints, with ``initial_state`` one row per sequence)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or out.numel() == 0:
        return 0
    count = _zero_rows(out.detach(), v.detach(), key_padding_mask, initial_state, causal, cu_seqlens)
    rows = out.shape[0] * out.shape[1] * out.shape[2]
    if out.device.type == "cuda":
        _defer(count, rows, out.dtype, causal)
        _report_pending(wait=False, stacklevel=stacklevel)
        return None
    # Counts queued by earlier CUDA calls come first (then the order of the warnings is the
    # order of the calls).
    _report_pending(wait=False, stacklevel=stacklevel)
    found = int(count)
    if found:
        _warn(found, rows, out.dtype, causal, stacklevel, later=False)
    return found
