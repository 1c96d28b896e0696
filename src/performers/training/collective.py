"""Work that one process of a ``torch.distributed`` job does alone, whose outcome every process
learns: no process is left waiting for one that failed.

Rank 0 alone takes the run directory's lock, moves an earlier run aside, writes the metrics
lines, the checkpoints and ``final/``, and evaluates. Were it simply to raise there — a full
disk (:class:`~performers.utils.DiskWriteError`), a directory locked by another run — the other
processes, already inside the next collective (the next step's gradient all-reduce), would wait
for it until the backend's timeout (tens of minutes) or for ever. :func:`collectively` closes
such a block: on the way out every process takes part in one all-reduce of two numbers (the
lowest rank that raised inside, if any, and a vote), and if one raised, every process raises —
that process its own error, the others the same refused write as seen from them (a
:class:`~performers.utils.DiskWriteError` whose ``writer`` is ``"rank N"``: *rank 0 could not
write PATH ...*) or a :class:`RankFailedError` naming the rank and its error. A block that
succeeds everywhere costs that one all-reduce (it is also a barrier: no process leaves before
rank 0's write is done). The vote rides along for free: the training loop has every process
vote the stop signal it received (:mod:`performers.training.signals`), so that one exchange per
step both shares rank 0's outcome and agrees on stopping.

Outside a job (one process) the block is just the block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from performers.utils import DiskWriteError

__all__ = ["Agreement", "RankFailedError", "collectively"]


class RankFailedError(RuntimeError):
    """Another process of the job raised inside a :func:`collectively` block, so this one stops
    too. ``rank``: that process; ``error_type`` and ``message``: its error's class name and text
    (that process reports its error itself, with the traceback of a bug)."""

    def __init__(self, rank: int, error_type: str, message: str) -> None:
        self.rank, self.error_type, self.message = rank, error_type, message
        super().__init__(f"rank {rank} failed ({error_type}: {message}); this process stops with it")

    def __reduce__(self):  # pickled whole (a process reporting to its parent)
        return type(self), (self.rank, self.error_type, self.message)


@dataclass
class Agreement:
    """What the processes agreed on when they left a :func:`collectively` block without error:
    ``vote``, the largest of their votes (0 until then)."""

    vote: int = 0


def _in_job() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _exchange_device(device: torch.device | str | None) -> torch.device:
    """Where the exchanged number lives: ``device``, or the backend's (NCCL reduces GPU tensors
    only; gloo CPU ones)."""
    import torch.distributed as dist

    if device is not None:
        return torch.device(device)
    if "nccl" in str(dist.get_backend()).lower() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def collectively(
    device: torch.device | str | None = None, *, vote: Callable[[], int] | None = None
) -> Iterator[Agreement]:
    """Every process of the job enters the block (doing its part, or nothing) and leaves it
    together: an exception raised inside any process is raised in every process (see the
    module). ``device``: where the exchanged numbers live (default: the backend's device).
    ``vote``: called in every process as it leaves the block (a number >= 0); the yielded
    :class:`Agreement` then holds the largest (alone: its own).

    Only :class:`Exception` is shared: a ``KeyboardInterrupt`` (a second Ctrl-C) aborts at
    once, as it should, without waiting for the others.

    Raises:
        DiskWriteError: a process could not write a file (this one, or ``writer`` names it).
        RankFailedError: another process raised anything else.
    """
    agreement = Agreement()
    if not _in_job():
        yield agreement
        agreement.vote = vote() if vote is not None else 0
        return
    error: Exception | None = None
    try:
        yield agreement
    except Exception as caught:
        error = caught
    agreement.vote = _share(error, vote() if vote is not None else 0, _exchange_device(device))


def _share(error: Exception | None, vote: int, device: torch.device) -> int:
    """Every process: learn the lowest rank whose ``error`` is not None and raise (see the
    module), or return the largest ``vote``."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    # One all-reduce (MAX) for both numbers: the lowest failing rank r is the largest world - r.
    numbers = torch.tensor([0 if error is None else world - rank, vote], dtype=torch.int64, device=device)
    dist.all_reduce(numbers, op=dist.ReduceOp.MAX)
    top, largest_vote = (int(n) for n in numbers.tolist())
    if top == 0:
        return largest_vote
    failed = world - top  # the lowest rank that raised
    # Plain values only: any exception can be described, not every one can be pickled.
    report: list[Any] = [_describe(error) if error is not None and rank == failed else None]
    dist.broadcast_object_list(report, src=failed, device=device)
    if error is not None:
        raise error
    raise _as_seen_here(failed, report[0]) from None


def _describe(error: Exception) -> dict[str, Any]:
    report: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, DiskWriteError):
        fields = (error.errno, error.strerror, error.needed, error.free, error.writer)
        report["disk"] = (str(error.path), *fields)
    return report


def _as_seen_here(rank: int, report: dict[str, Any]) -> Exception:
    """The error this process raises for ``rank``'s ``report``."""
    if "disk" in report:
        path, code, reason, needed, free, writer = report["disk"]
        return DiskWriteError(path, code, reason, needed, free, writer=writer or f"rank {rank}")
    return RankFailedError(rank, report["type"], report["message"])
