"""The trainer's batches: a ``torch.utils.data.DataLoader`` over *tickets* ``(index, epoch, slot)``.

The order of an epoch is a pure function of ``(seed, epoch)`` and every example draws its crops
and masks from :class:`~performers.training.data.RandomStreams` of ``(seed, epoch, slot)``, so a
batch depends only on where the run is — ``(epoch, position)`` — not on how many processes or
loader workers make it. Workers (``num_workers > 0``) build the next batches while the model
trains on the current one; with none, examples are built in the training process. Either way
the batches are the same, bit for bit, and a run resumed at ``(epoch, position)`` continues
with exactly the batches the uninterrupted run would have had.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from performers.training.data import ExampleSource, PackedCollate, RandomStreams

__all__ = ["batch_loader", "epoch_order", "next_batch_start"]

Ticket = tuple[int, int, int]  # (example index, epoch, slot in the global batch)


def epoch_order(seed: int, epoch: int, size: int) -> Tensor:
    """The permutation of ``size`` examples used in ``epoch`` (nothing to store: it is recomputed)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator)


def next_batch_start(epoch: int, position: int, batch_size: int, size: int) -> tuple[int, int]:
    """Where the next global batch starts, given the run's ``(epoch, position)``: the next epoch
    when fewer than ``batch_size`` examples are left in this one (they are skipped)."""
    if position + batch_size > size:
        return epoch + 1, 0
    return epoch, position


class _Tickets(Sampler[list[Ticket]]):
    """This process's share of every global batch from ``(epoch, position)`` on, without end."""

    def __init__(
        self, size: int, batch_size: int, seed: int, rank: int, world: int, epoch: int, position: int
    ):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world, self.epoch, self.position = rank, world, epoch, position

    def __iter__(self) -> Iterator[list[Ticket]]:
        epoch, position, order, order_epoch = self.epoch, self.position, None, None
        while True:
            epoch, position = next_batch_start(epoch, position, self.batch_size, self.size)
            if order_epoch != epoch:
                order, order_epoch = epoch_order(self.seed, epoch, self.size), epoch
            slots = range(position + self.rank, position + self.batch_size, self.world)
            yield [(int(order[slot]), epoch, slot) for slot in slots]
            position += self.batch_size


class _Examples(Dataset):
    """Tickets → examples of an :class:`ExampleSource`."""

    def __init__(self, data: ExampleSource, seed: int) -> None:
        self.data, self.seed = data, seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, ticket: Ticket) -> dict[str, Tensor]:
        index, epoch, slot = ticket
        return self.data.example(index, RandomStreams(self.seed, epoch, slot))


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """In a loader worker: leave SIGINT, SIGTERM and SIGUSR1 to the training process.

    A terminal's Ctrl-C and a scheduler that signals every process of a job reach the workers
    too; the training process handles the request (:mod:`performers.training.signals`: it needs
    batches until its step ends) and then stops its workers itself. SIGINT and SIGUSR1 are
    ignored (the training process never sends them); SIGTERM is taken by a thread that ends the
    worker only when the training process sent it (its way of stopping a worker that does not
    finish), the others being ignored. Where the sender cannot be known (no ``sigwaitinfo``),
    SIGTERM keeps its usual effect.
    """
    for name in ("SIGINT", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit it

    def watch() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="sigterm-from-trainer").start()


def batch_loader(
    data: ExampleSource,
    *,
    batch_size: int,
    seed: int,
    epoch: int = 0,
    position: int = 0,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    pack: PackedCollate | None = None,
) -> Iterator[dict[str, Tensor]]:
    """The batches of this process (rank ``rank`` of ``world``) from ``(epoch, position)`` on.

    ``batch_size`` is the global batch; each process gets the slots ``rank, rank + world, ...``
    of it. ``num_workers`` loader processes prefetch batches (they stop when the iterator is
    deleted). ``pack``: collate each share into packed rows with it instead of ``data.collate``
    (the same examples). Returns an endless iterator of collated batches.
    """
    loader = DataLoader(
        _Examples(data, seed),
        batch_sampler=_Tickets(len(data), batch_size, seed, rank, world, epoch, position),
        collate_fn=data.collate if pack is None else pack,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        # A DataLoader draws a base seed for its workers when it starts iterating; from its own
        # generator, not the global one, which the model's dropout uses (exact resume).
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_leave_stop_signals_to_the_trainer if num_workers else None,
    )
    if not num_workers or not hasattr(signal, "pthread_sigmask"):
        return iter(loader)
    # The workers start (fork) here, with the mask of this thread: with SIGTERM blocked until
    # `_leave_stop_signals_to_the_trainer` takes it over, a job-wide SIGTERM arriving while a
    # worker starts stays pending for that worker instead of ending it. Here it waits the few
    # milliseconds of the fork and is delivered when the mask is restored.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
