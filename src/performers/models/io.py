"""Save and load Performer models: ``config.json`` + ``model.safetensors``.

* Weights go to safetensors only: loading never unpickles, so a checkpoint cannot run code.
* Everything that defines the model's function is saved, including the random projections
  and the redraw counters of every :class:`~performers.FavorAttention` (buffers), so a loaded
  model reproduces the saved one bit for bit and a resumed run keeps its redraw schedule.
* Each file is written to a temporary file in the same directory, flushed to disk, and moved
  into place with ``os.replace`` (atomic on POSIX and Windows): a crash leaves either the old
  file or the new one, never a partial file; a full disk removes the temporary file and raises
  :class:`~performers.utils.DiskWriteError` naming the file and the bytes it needed.
* A checkpoint that is unreadable, truncated, missing a tensor, holding an extra one, or
  holding one of the wrong shape/kind raises :class:`ModelLoadError` (a ``ValueError``) naming
  the file and the tensor.
* Loading never guesses: ``config.json`` records its format number (``"config_format"``) and
  must hold every field of that format; a missing one (``activation``, ``favor.kernel``, ...)
  is a :class:`ModelLoadError` naming the file and the field. Models written by earlier versions
  (formats 1 and 2, without the number) load with the values they were computed with
  (:meth:`PerformerConfig.from_saved`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from performers.models.config import PerformerConfig
from performers.utils import atomic_write, load_safetensors, package_version
from performers.utils.errors import InputError

__all__ = [
    "CONFIG_NAME",
    "MODEL_CLASSES",
    "WEIGHTS_NAME",
    "ModelLoadError",
    "from_pretrained",
    "load_safetensors",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Class name (as recorded in config.json "architectures") → class; the Performer model classes
# add themselves when they are defined (PerformerPreTrainedModel.__init_subclass__).
MODEL_CLASSES: dict[str, type[nn.Module]] = {}


class ModelLoadError(InputError):
    """A model directory that cannot be loaded as written: invalid or incomplete ``config.json``
    (a missing field is named), unreadable weights, or tensors that do not fit the model. The
    message starts with the file's path."""


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "config", None), PerformerConfig):
        raise TypeError(f"save_pretrained needs a Performer model, got {type(model).__name__}")


def save_pretrained(model: nn.Module, directory: str | Path) -> None:
    """Write ``directory/config.json`` and ``directory/model.safetensors`` (created if needed).

    ``config.json`` holds the :class:`PerformerConfig` fields plus ``"architectures"`` (the model
    class) and ``"performers_version"``. ``model.safetensors`` holds the whole ``state_dict``
    (parameters, projections, redraw counters) in the model's dtypes.

    Raises:
        performers.utils.DiskWriteError: the file system refused a write (full, quota, size
            limit, read-only); the file being written is left as it was.
    """
    _check_model(model)
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    architecture = type(model).__name__
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    version = package_version()
    metadata = {"format": "pt", "architecture": architecture, "performers_version": version}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    atomic_write(
        directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), size=size
    )

    config = {**model.config.to_saved_dict(), "architectures": [architecture], "performers_version": version}
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(text))


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _check_tensors(path: Path, stored: dict[str, Tensor], expected: dict[str, Tensor], saved_as: str) -> None:
    """Same names, shapes and kinds (floating / integer) as the model's ``state_dict``, or ModelLoadError."""
    hint = f" (the checkpoint was saved from {saved_as})" if saved_as else ""
    missing = [name for name in expected if name not in stored]
    if missing:
        name = missing[0]
        raise ModelLoadError(
            f"{path}: tensor {name!r} is missing (expected shape {tuple(expected[name].shape)}); "
            f"{len(missing)} missing in all{hint}"
        )
    unexpected = sorted(set(stored) - set(expected))
    if unexpected:
        raise ModelLoadError(f"{path}: unexpected tensor(s) {unexpected} not in the model{hint}")
    for name, target in expected.items():
        tensor = stored[name]
        if tensor.shape != target.shape:
            raise ModelLoadError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(target.shape)} (does config.json match the weights?)"
            )
        if tensor.is_floating_point() != target.is_floating_point():
            raise ModelLoadError(
                f"{path}: tensor {name!r} has dtype {tensor.dtype}, the model expects {target.dtype}"
            )


def from_pretrained(
    directory: str | Path,
    *,
    model_class: type[nn.Module] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **config_overrides,
) -> nn.Module:
    """Load a model written by :func:`save_pretrained`, in eval mode.

    Args:
        directory: holds ``config.json`` and ``model.safetensors``.
        model_class: the class to build; default the one recorded in ``config.json``.
        device: where to put the model (default CPU).
        dtype: floating dtype of the model; default the dtype the weights were saved in.
        **config_overrides: config fields to change, e.g. ``attention="exact"`` to run the
            same weights with softmax attention (sizes must still match the weights).

    Raises:
        FileNotFoundError: a file is missing.
        ModelLoadError: unreadable/truncated files, an invalid config or one missing a field of
            its format (named: performers never guesses a value that changes the model), or
            tensors that are missing, unexpected or of the wrong shape (the message names the
            file and the tensor).
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    weights_path = directory / WEIGHTS_NAME
    raw = _read_config(config_path)
    architectures = raw.get("architectures") or [None]
    saved_as = architectures[0] if isinstance(architectures, list) and architectures else None
    if model_class is None:
        if saved_as not in MODEL_CLASSES:
            raise ModelLoadError(
                f"{config_path}: 'architectures' names {saved_as!r}, not one of {sorted(MODEL_CLASSES)}; "
                "pass model_class="
            )
        model_class = MODEL_CLASSES[saved_as]
    try:
        config = PerformerConfig.from_saved(raw)
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{config_path}: {err}") from None
    if config_overrides:
        config = replace(config, **config_overrides)  # the caller's own values: their errors stay theirs

    try:
        tensors, _ = load_safetensors(weights_path)
    except ValueError as err:  # unreadable or truncated: already names the file
        raise ModelLoadError(str(err)) from None
    model = model_class(config)
    _check_tensors(weights_path, tensors, model.state_dict(), saved_as or "")
    if dtype is None:
        float_dtypes = Counter(t.dtype for t in tensors.values() if t.is_floating_point())
        dtype = float_dtypes.most_common(1)[0][0] if float_dtypes else None
    if dtype is not None:
        model.to(dtype=dtype)
    model.load_state_dict(tensors, strict=True)
    if device is not None:
        model.to(device=device)
    return model.eval()
