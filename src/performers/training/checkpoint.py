"""Atomic training checkpoints that resume a run *exactly*.

A checkpoint is a directory ``step-00000120/`` holding

* ``model.safetensors`` — the model's ``state_dict`` (projections and redraw counters included);
* ``optimizer.safetensors`` — every tensor of the optimizer state, flattened to
  ``state.<param>.<name>``;
* ``rng.safetensors`` — the global torch RNG state and the state of every named generator the
  loop uses (data order, crops, masking);
* ``meta.json`` — step, the optimizer's non-tensor state (param groups), the scheduler's
  ``state_dict``, the loop's own state (data position, metrics), the run's configuration
  (:mod:`performers.training.run_config`), the SHA-256 of each tensor file and the SHA-256 of
  its own other contents (``checksum``).

It is written in a temporary directory that is renamed into place (atomic, with the user's umask
for its files; a full disk removes the partial directory and raises
:class:`~performers.utils.DiskWriteError`, the earlier checkpoints untouched), the last
``keep_last`` are kept, and :func:`latest_checkpoint` skips — with a
warning naming the file and the reason — a newest checkpoint that is incomplete or corrupt (a
truncated tensor file, an edited or torn ``meta.json``, a missing key, a value of the wrong
type), falling back to the previous one. Nothing is ever unpickled.

``meta.json`` of a checkpoint written before it carried ``format`` and ``checksum`` (format 1)
is still read: checked against the older schema, with a warning that its contents cannot be
verified.

:func:`checkpoint_period` is how often the commands checkpoint a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from performers.training.run_config import Change, ResumeMismatchError
from performers.utils import atomic_directory, load_safetensors, sha256
from performers.utils.errors import InputError

__all__ = [
    "FORMAT",
    "PREFIX",
    "Checkpoint",
    "CheckpointError",
    "NoUsableCheckpointError",
    "checkpoint_period",
    "latest_checkpoint",
    "load_checkpoint",
    "restore",
    "save_checkpoint",
]

PREFIX = "step-"


def checkpoint_period(max_steps: int, eval_every: int) -> int:
    """The commands' checkpoint policy: every ``eval_every`` steps, but at most about four
    checkpoints per run (``max(eval_every, max_steps // 4)``)."""
    return max(eval_every, max_steps // 4)


FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")
# The version of meta.json: 2 adds "format", "run" and "checksum" (1: none of them).
FORMAT = 2

# A schema: key -> the type(s) its value must have. ``int`` never accepts a bool.
Schema = Mapping[str, type | tuple[type, ...]]
_META_SCHEMA: Schema = {
    "format": int,
    "step": int,
    "optimizer": dict,
    "scheduler": (dict, type(None)),
    "state": dict,
    "run": (dict, type(None)),
    "sha256": dict,
    "checksum": str,
}
_LEGACY_META_SCHEMA: Schema = {"step": int, "optimizer": dict, "sha256": dict}
_LEGACY_OPTIONAL: Schema = {"scheduler": (dict, type(None)), "state": dict}
_OPTIMIZER_SCHEMA: Schema = {"param_groups": list, "plain_state": dict}


class CheckpointError(InputError):
    """A checkpoint directory that cannot be used; the message names it and the problem."""


class NoUsableCheckpointError(CheckpointError):
    """A directory holds checkpoints but every one of them is unusable; the message lists each
    one with its problem."""


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
    # The run's configuration (run_config.describe_run); None in a format-1 checkpoint.
    run: dict[str, Any] | None = None
    format: int = FORMAT


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


def _unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` on the CPU, contiguous, each with its own memory: safetensors refuses tensors
    that share memory, which tied weights do (a masked LM's decoder is its word embeddings), so
    a tensor whose storage an earlier one uses is copied. Restoring loads both names into the
    one tied parameter, the same values."""
    seen: set[int] = set()
    out = {}
    for name, value in tensors.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        out[name] = value.clone() if storage in seen else value
        seen.add(storage)
    return out


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    generators: dict[str, torch.Generator] | None = None,
    state: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write checkpoint ``step`` under ``directory`` atomically; returns its path.

    ``state`` is the loop's own JSON state (data position, history); ``run`` the run's
    configuration (:func:`~performers.training.run_config.describe_run`), compared on resume.

    Raises:
        performers.utils.DiskWriteError: the file system refused the write (full, quota, size
            limit, read-only); the partial checkpoint is removed and the earlier ones are intact.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    final = directory / f"{PREFIX}{step:08d}"
    model_tensors = _unshared(model.state_dict())
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
    rng = {"torch": torch.get_rng_state()}
    for name, generator in (generators or {}).items():
        rng[f"generator.{name}"] = generator.get_state()
    # What the files will hold (tensor bytes; headers and meta.json add little), for the message
    # of a full disk.
    size = sum(
        t.numel() * t.element_size() for d in (model_tensors, optimizer_tensors, rng) for t in d.values()
    )
    with atomic_directory(final, replace=True, size=size) as tmp:
        save_file(model_tensors, str(tmp / "model.safetensors"))
        save_file(optimizer_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        meta = {
            "format": FORMAT,
            "step": step,
            "optimizer": optimizer_meta,
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "state": state or {},
            "run": run,
            "sha256": {name: sha256(tmp / name) for name in FILES},
        }
        # Round-trip first: the checksum is of the values as they read back from the file.
        meta = json.loads(json.dumps(meta))
        meta["checksum"] = _meta_checksum(meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    for old in sorted(directory.glob(f"{PREFIX}*"))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _meta_checksum(meta: Mapping[str, Any]) -> str:
    """SHA-256 of ``meta`` without its ``checksum`` key, as canonical JSON (sorted keys): any
    edit of a value, a key or the structure changes it; re-indenting does not."""
    body = {key: value for key, value in meta.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_schema(values: Any, schema: Schema, where: str, *, optional: Schema | None = None) -> None:
    """Raise :class:`CheckpointError` naming ``where`` and the key when ``values`` lacks a key of
    ``schema`` or holds a value of another type (an int is never a bool)."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{where}: must be a JSON object, got {type(values).__name__}")
    for key, types in {**schema, **(optional or {})}.items():
        if key not in values:
            if key in schema:
                raise CheckpointError(f"{where}: missing key {key!r}")
            continue
        value = values[key]
        wrong_bool = isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))
        if wrong_bool or not isinstance(value, types):
            raise CheckpointError(
                f"{where}: {key!r} must be {_type_name(types)}, got {type(value).__name__} {value!r:.40}"
            )


def _read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of checkpoint ``path``, verified (checksum, schema, step) or
    :class:`CheckpointError` naming the file and the reason."""
    file = path / "meta.json"
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: meta.json is missing (incomplete checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: must be a JSON object, got {type(meta).__name__}")
    if "format" in meta:
        version = meta["format"]
        if version != FORMAT:
            raise CheckpointError(f"{file}: format {version!r}, this version reads format {FORMAT} and 1")
        _check_schema(meta, _META_SCHEMA, str(file))
        unknown = sorted(set(meta) - set(_META_SCHEMA))
        if unknown:
            raise CheckpointError(f"{file}: unexpected key(s) {unknown}")
    elif "checksum" in meta or "run" in meta:  # format 2 with its "format" removed
        raise CheckpointError(f"{file}: missing key 'format'")
    else:  # format 1: no checksum to verify
        _check_schema(meta, _LEGACY_META_SCHEMA, str(file), optional=_LEGACY_OPTIONAL)
        warnings.warn(
            f"{file}: written before checkpoints checksummed meta.json; its contents are not verified",
            stacklevel=4,
        )
    _check_schema(meta["optimizer"], _OPTIMIZER_SCHEMA, f"{file}: 'optimizer'")
    if not all(isinstance(group, dict) for group in meta["optimizer"]["param_groups"]):
        raise CheckpointError(f"{file}: 'optimizer.param_groups' must hold JSON objects")
    _check_schema(meta["sha256"], dict.fromkeys(FILES, str), f"{file}: 'sha256'")
    step = meta["step"]
    if step < 0:
        raise CheckpointError(f"{file}: 'step' must be >= 0, got {step}")
    if path.name.startswith(PREFIX) and path.name != f"{PREFIX}{step:08d}":
        raise CheckpointError(f"{file}: says step {step}, its directory is {path.name}")
    # Last: a file that is well-formed but edited (a step, a learning rate, a position).
    if "checksum" in meta and meta["checksum"] != _meta_checksum(meta):
        raise CheckpointError(f"{file}: checksum mismatch (edited or corrupt)")
    return meta


def load_checkpoint(path: str | os.PathLike, *, state_schema: Schema | None = None) -> Checkpoint:
    """Read and verify one checkpoint directory; :class:`CheckpointError` names what is wrong.

    ``state_schema`` (key -> type) is what the loop's own ``state`` must hold (e.g. the data
    position), checked like the rest of ``meta.json``.
    """
    path = Path(path)
    meta = _read_meta(path)
    if state_schema:
        _check_schema(meta.get("state", {}), state_schema, f"{path / 'meta.json'}: 'state'")
    for name in FILES:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        if sha256(file) != meta["sha256"][name]:
            raise CheckpointError(f"{file}: checksum mismatch (corrupt or truncated)")
    try:
        model, _ = load_safetensors(path / "model.safetensors")
        optimizer_tensors, _ = load_safetensors(path / "optimizer.safetensors")
        rng, _ = load_safetensors(path / "rng.safetensors")
    except ValueError as error:
        raise CheckpointError(str(error)) from error
    try:
        optimizer = _unflatten_optimizer(optimizer_tensors, meta["optimizer"])
    except (ValueError, TypeError, AttributeError) as error:  # names or plain state malformed
        raise CheckpointError(f"{path}: optimizer state does not read back ({error})") from error
    if "torch" not in rng:
        raise CheckpointError(f"{path / 'rng.safetensors'}: holds no torch RNG state")
    generators = {k.removeprefix("generator."): v for k, v in rng.items() if k.startswith("generator.")}
    return Checkpoint(
        path=path,
        step=meta["step"],
        model=model,
        optimizer=optimizer,
        scheduler=meta.get("scheduler"),
        torch_rng=rng["torch"],
        generators=generators,
        state=meta.get("state", {}),
        run=meta.get("run"),
        format=meta.get("format", 1),
    )


def latest_checkpoint(
    directory: str | os.PathLike,
    *,
    state_schema: Schema | None = None,
    raise_if_unusable: bool = False,
) -> Checkpoint | None:
    """The newest usable checkpoint under ``directory`` (None if there is none).

    A newer checkpoint that fails verification is skipped with a warning naming the file and
    the reason. When checkpoints exist but none is usable: None, or with ``raise_if_unusable``
    a :class:`NoUsableCheckpointError` listing each one's problem. ``state_schema``: see
    :func:`load_checkpoint`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    problems = []
    for path in sorted(directory.glob(f"{PREFIX}*"), reverse=True):
        try:
            return load_checkpoint(path, state_schema=state_schema)
        except CheckpointError as error:
            warnings.warn(f"skipping unusable checkpoint: {error}", stacklevel=2)
            problems.append(str(error))
    if problems and raise_if_unusable:
        raise NoUsableCheckpointError(f"{directory}: every checkpoint is unusable ({'; '.join(problems)})")
    return None


def _model_changes(stored: dict[str, Tensor], model: nn.Module) -> list[Change]:
    """The parameters and buffers whose presence or shape differ between a checkpoint and
    ``model``, as :class:`Change` entries (``model.state.<name>``)."""
    current = model.state_dict()
    changes = []
    for name in sorted(set(stored) | set(current)):
        old = tuple(stored[name].shape) if name in stored else "absent"
        new = tuple(current[name].shape) if name in current else "absent"
        if old != new:
            changes.append(Change(f"model.state.{name}", str(old), str(new)))
    return changes


def restore(
    checkpoint: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
) -> None:
    """Load a checkpoint's model, optimizer, scheduler and global RNG state, in place.

    With the loop's own state (``checkpoint.state``: data position, history) restored by the
    caller, the run continues exactly as if it had not been interrupted.

    Raises:
        ResumeMismatchError: ``model`` has other parameters or shapes than the checkpoint (each
            one listed, e.g. after a change of ``d_model``).
    """
    changes = _model_changes(checkpoint.model, model)
    if changes:
        more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""
        raise ResumeMismatchError(
            checkpoint.path, changes[:5], what=f"the model's parameters differ{more} (shapes)"
        )
    model.load_state_dict(checkpoint.model)
    optimizer.load_state_dict(checkpoint.optimizer)
    if scheduler is not None:
        if checkpoint.scheduler is None:
            raise CheckpointError(f"{checkpoint.path}: holds no scheduler state to restore")
        scheduler.load_state_dict(checkpoint.scheduler)
    torch.set_rng_state(checkpoint.torch_rng)
