"""The collectives of context parallelism: autograd-aware where gradients cross shards, and
counted, so that what a layer sends can be measured.

Every call goes through :func:`torch.distributed` on the given process group (gloo on CPU,
NCCL on GPU). :func:`record_communication` collects, for each collective this process takes
part in, its kind and the bytes this process contributes (:class:`CollectiveCall`).

The backward passes are differentiable (an all-reduce's adjoint is itself, an all-gather's an
all-reduce), so second derivatives (``create_graph=True``) cross processes too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from performers.ops.double_backward import wants_graph

__all__ = [
    "CollectiveCall",
    "all_gather",
    "all_reduce_max",
    "all_reduce_sum",
    "first_defined",
    "record_communication",
]

_LOGS: list[list[CollectiveCall]] = []


@dataclass(frozen=True)
class CollectiveCall:
    """One collective: ``kind`` (``"all_reduce"`` or ``"all_gather"``), ``bytes`` this process
    contributes (its input tensor), ``world`` (processes in the group) and ``backward`` (called
    from a backward pass).

    :attr:`ring_bytes` is what the process sends with the ring algorithms (gloo and NCCL's
    defaults for large messages): ``2(W-1)/W·n`` for an all-reduce of ``n`` bytes, ``(W-1)·n``
    for an all-gather of ``n`` bytes per process.
    """

    kind: str
    bytes: int
    world: int
    backward: bool

    @property
    def ring_bytes(self) -> float:
        if self.kind == "all_reduce":
            return 2 * (self.world - 1) / self.world * self.bytes
        return (self.world - 1) * self.bytes


@contextmanager
def record_communication() -> Iterator[list[CollectiveCall]]:
    """Collect the collectives of context parallelism run inside the block (forward and
    backward) into the yielded list."""
    log: list[CollectiveCall] = []
    _LOGS.append(log)
    try:
        yield log
    finally:
        _LOGS.remove(log)


def _record(kind: str, tensor: Tensor, group, backward: bool) -> None:
    if _LOGS:
        size = tensor.numel() * tensor.element_size()
        call = CollectiveCall(kind, size, dist.get_world_size(group), backward)
        for log in _LOGS:
            log.append(call)


def _all_reduce(tensor: Tensor, op, group, backward: bool) -> Tensor:
    out = tensor.contiguous().clone()
    _record("all_reduce", out, group, backward)
    dist.all_reduce(out, op=op, group=group)
    return out


def _all_gather(tensor: Tensor, group, backward: bool) -> Tensor:
    flat = tensor.contiguous().reshape(-1)
    world = dist.get_world_size(group)
    out = flat.new_empty(world * flat.numel())
    _record("all_gather", flat, group, backward)
    # all_gather_single is the name of all_gather_into_tensor from torch 2.13 on.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, flat, group=group)
    return out.reshape(world, *tensor.shape)


class _AllReduceSum(torch.autograd.Function):
    # y = Σ_r x_r on every process: ∂L/∂x_r = Σ_p ∂L_p/∂y, the same all-reduce backwards —
    # run as this Function again, so that with create_graph=True the gradient is differentiable
    # (second derivatives; outside grad mode `apply` records nothing and costs the same).
    @staticmethod
    def forward(ctx, tensor, group, backward=False):
        ctx.group = group
        return _all_reduce(tensor, dist.ReduceOp.SUM, group, backward=backward)

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad, ctx.group, True), None, None


class _AllGather(torch.autograd.Function):
    # y = [x_0, …, x_{W-1}] on every process: ∂L/∂x_r = Σ_p (∂L_p/∂y)[r], an all-reduce of the
    # gradients, through _AllReduceSum so that it is differentiable again. The backward passes
    # use it only with create_graph=True (otherwise they gather without autograd).
    @staticmethod
    def forward(ctx, tensor, group, backward=False):
        ctx.group, ctx.rank = group, dist.get_rank(group)
        return _all_gather(tensor, group, backward=backward)

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad, ctx.group, True)[ctx.rank], None, None


def gather_for_backward(tensor: Tensor, group) -> Tensor:
    """An all-gather inside a backward pass: differentiable when that backward runs with
    ``create_graph=True`` (a second derivative), a plain collective otherwise."""
    if wants_graph():
        return _AllGather.apply(tensor, group, True)
    return _all_gather(tensor, group, backward=True)


def all_reduce_sum(tensor: Tensor, group=None) -> Tensor:
    """``Σ`` of ``tensor`` over the processes of ``group``, on every process, differentiable: the
    gradient of each process's input is the sum of every process's gradient of the output (so
    a loss summed over processes is differentiated as one)."""
    return _AllReduceSum.apply(tensor, group)


def all_reduce_max(tensor: Tensor, group=None) -> Tensor:
    """The elementwise maximum over the processes of ``group`` (no gradient: stabilizers only)."""
    return _all_reduce(tensor.detach(), dist.ReduceOp.MAX, group, backward=False)


def all_gather(tensor: Tensor, group=None) -> Tensor:
    """``(W, *tensor.shape)``: every process's ``tensor``, in group-rank order (no gradient)."""
    return _all_gather(tensor.detach(), group, backward=False)


class _FirstDefined(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        gathered = _all_gather(tensor, group, backward=False)  # (W, ...)
        defined = ~torch.isnan(gathered)
        # Index of the first process with a value (0 where none has: that entry stays NaN).
        source = defined.to(torch.uint8).argmax(dim=0)
        ctx.group, ctx.rank = group, dist.get_rank(group)
        ctx.save_for_backward(source)
        return gathered.gather(0, source.unsqueeze(0)).squeeze(0)

    @staticmethod
    def backward(ctx, grad):
        (source,) = ctx.saved_tensors
        total = _AllReduceSum.apply(grad, ctx.group, True)  # differentiable (create_graph=True)
        return torch.where(source == ctx.rank, total, torch.zeros_like(total)), None


def first_defined(tensor: Tensor, group=None) -> Tensor:
    """Elementwise, ``tensor`` of the first process (in group-rank order) where it is not NaN;
    NaN where no process has a value. The gradient reaches the process the value came from
    (summed over every process's gradient of the output)."""
    return _FirstDefined.apply(tensor, group)
