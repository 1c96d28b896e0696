"""Where a run computes: choosing the device, bringing batches to the model's device, and doing
a step once per ``torch.distributed`` job, rank 0 first (:func:`once_per_job`), and joining the
job of a process started by ``torchrun`` (:func:`process_group`).

Batches are built on the CPU (the loader and its worker processes); the training loop and the
evaluation functions move each one to the device of the model's parameters, so a model moved
with ``model.to("cuda")`` trains and evaluates there with no other change.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from performers.training.collective import collectively

T = TypeVar("T")

__all__ = ["model_device", "once_per_job", "process_group", "resolve_device", "to_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a module with none."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with every tensor on ``device`` (other values unchanged). Copies from pinned
    memory to a GPU do not wait for the host."""
    return {
        key: value.to(device, non_blocking=value.is_pinned()) if isinstance(value, Tensor) else value
        for key, value in batch.items()
    }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device a run asked for: ``None``/``"auto"`` is CUDA when available (under torchrun the
    process's ``cuda:LOCAL_RANK``, modulo the GPUs it sees; else the current one), else the
    CPU; ``"cuda"`` without an index names that same GPU.

    Raises:
        ValueError: the name is not a device, or names a CUDA device this machine lacks.
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch device, e.g. 'cpu' or 'cuda:0', got {device!r}") from error
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(chosen)!r}: this machine has no CUDA device (use 'cpu')")
        if chosen.index is None:
            # One process per GPU under torchrun: its own. When each process sees only its own
            # GPU (CUDA_VISIBLE_DEVICES per process), LOCAL_RANK counts past what it sees.
            local_rank = os.environ.get("LOCAL_RANK")
            index = torch.cuda.current_device() if local_rank is None else int(local_rank)
            chosen = torch.device("cuda", index % torch.cuda.device_count())
        if chosen.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(chosen)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return chosen


def once_per_job(make: Callable[[], T]) -> T:
    """``make()`` in rank 0 first, then in the other processes of a ``torch.distributed`` job
    (which then find what rank 0 made, e.g. a prepared dataset in its cache); just ``make()`` in
    a single process. Every process of the job must call it (the others wait for rank 0). When
    rank 0's ``make()`` raises, every process raises
    (:func:`~performers.training.collective.collectively`), none waits."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return make()
    made: list[T] = []
    with collectively():
        if dist.get_rank() == 0:
            made.append(make())
    return made[0] if made else make()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[int]:
    """Inside: this process's place in its ``torchrun`` job; yields its rank (0 when alone).

    A CUDA ``device`` becomes the process's current device (NCCL and the default stream use it).
    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process joins the default process group — nccl
    on CUDA, gloo on the CPU — unless it has already, and leaves it on the way out.

    When the block raises, what its finished frames hold (a ``DistributedDataParallel`` wrapper,
    the trainer) is freed *before* the group is left: see :func:`_free_before_leaving`."""
    import torch.distributed as dist

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank() if distributed else 0
    except BaseException as error:
        if distributed:
            _free_before_leaving(error)
        raise
    finally:
        if distributed:
            dist.destroy_process_group()


def _free_before_leaving(error: BaseException) -> None:
    """Free the locals of the finished frames ``error`` carries, while the process group lives.

    Why: a ``DistributedDataParallel`` wrapper's reducer holds the process group. Left to the
    exception's traceback, it would be freed after :func:`process_group` has left the group, by
    the error handler, as the last holder: the group's destructor would then run on a thread
    that holds the GIL, and wait for gloo's worker threads — one of which may be releasing the
    tensors of the job's last exchange and needs the GIL (a deadlock: a process that printed its
    error and never exits). Freed here, the reducer drops a reference the group's registry still
    shares; the group is then destroyed by ``destroy_process_group``, whose Python objects
    release the GIL in their destructors."""
    import gc
    import traceback

    seen: set[int] = set()
    while error is not None and id(error) not in seen:  # the chain too (raise ... from ...)
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
    gc.collect()  # (a wrapper inside a reference cycle)
