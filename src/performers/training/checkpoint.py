"""Atomic training checkpoints that resume a run *exactly*.

A checkpoint is a directory ``step-00000120/`` holding

* ``model.safetensors`` — the model's ``state_dict`` (projections and redraw counters included);
* ``optimizer.safetensors`` — every tensor of the optimizer state, flattened to
  ``state.<param>.<name>``;
* ``rng.safetensors`` — the global torch RNG state and the state of every named generator the
  loop uses (data order, crops, masking);
* ``meta.json`` — step, the optimizer's non-tensor state (param groups), the scheduler's
  ``state_dict``, the loop's own state (data position, metrics) and the SHA-256 of each file.

It is written in a temporary directory that is renamed into place (atomic, with the user's umask
for its files), the last ``keep_last`` are kept, and :func:`latest_checkpoint` skips — with a
warning — a newest checkpoint that is incomplete or corrupt, falling back to the previous one. Nothing is ever
unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from performers.utils import atomic_directory, load_safetensors, sha256

__all__ = [
    "PREFIX",
    "Checkpoint",
    "CheckpointError",
    "latest_checkpoint",
    "load_checkpoint",
    "restore",
    "save_checkpoint",
]

PREFIX = "step-"
FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used; the message names it and the problem."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    torch_rng: Tensor
    generators: dict[str, Tensor]
    state: dict[str, Any]


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, Tensor], dict]:
    tensors: dict[str, Tensor] = {}
    plain_state: dict[str, dict] = {}
    for param, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"state.{param}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain_state.setdefault(str(param), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "plain_state": plain_state}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param, name = key.split(".", 2)
        state.setdefault(int(param), {})[name] = value
    for param, values in meta["plain_state"].items():
        state.setdefault(int(param), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    generators: dict[str, torch.Generator] | None = None,
    state: dict[str, Any] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write checkpoint ``step`` under ``directory`` atomically; returns its path."""
    from safetensors.torch import save_file

    directory = Path(directory)
    final = directory / f"{PREFIX}{step:08d}"
    with atomic_directory(final, replace=True) as tmp:
        model_tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(model_tensors, str(tmp / "model.safetensors"))
        optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
        save_file(optimizer_tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        for name, generator in (generators or {}).items():
            rng[f"generator.{name}"] = generator.get_state()
        save_file(rng, str(tmp / "rng.safetensors"))
        meta = {
            "step": step,
            "optimizer": optimizer_meta,
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "state": state or {},
            "sha256": {name: sha256(tmp / name) for name in FILES},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    for old in sorted(directory.glob(f"{PREFIX}*"))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify one checkpoint directory; :class:`CheckpointError` names what is wrong."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: meta.json is missing (incomplete checkpoint)") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path / 'meta.json'}: not valid JSON ({error})") from None
    for name in FILES:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        if sha256(file) != meta.get("sha256", {}).get(name):
            raise CheckpointError(f"{file}: checksum mismatch (corrupt or truncated)")
    try:
        model, _ = load_safetensors(path / "model.safetensors")
        optimizer_tensors, _ = load_safetensors(path / "optimizer.safetensors")
        rng, _ = load_safetensors(path / "rng.safetensors")
    except ValueError as error:
        raise CheckpointError(str(error)) from error
    generators = {k.removeprefix("generator."): v for k, v in rng.items() if k.startswith("generator.")}
    return Checkpoint(
        path=path,
        step=int(meta["step"]),
        model=model,
        optimizer=_unflatten_optimizer(optimizer_tensors, meta["optimizer"]),
        scheduler=meta.get("scheduler"),
        torch_rng=rng["torch"],
        generators=generators,
        state=meta.get("state", {}),
    )


def latest_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """The newest usable checkpoint under ``directory`` (None if there is none).

    A newer checkpoint that fails verification is skipped with a warning naming it.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    for path in sorted(directory.glob(f"{PREFIX}*"), reverse=True):
        try:
            return load_checkpoint(path)
        except CheckpointError as error:
            warnings.warn(f"skipping unusable checkpoint: {error}", stacklevel=2)
    return None


def restore(
    checkpoint: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
) -> None:
    """Load a checkpoint's model, optimizer, scheduler and global RNG state, in place.

    With the loop's own state (``checkpoint.state``: data position, history) restored by the
    caller, the run continues exactly as if it had not been interrupted.
    """
    model.load_state_dict(checkpoint.model)
    optimizer.load_state_dict(checkpoint.optimizer)
    if scheduler is not None:
        if checkpoint.scheduler is None:
            raise CheckpointError(f"{checkpoint.path}: holds no scheduler state to restore")
        scheduler.load_state_dict(checkpoint.scheduler)
    torch.set_rng_state(checkpoint.torch_rng)
