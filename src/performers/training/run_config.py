"""What run a checkpoint belongs to, and what a resumed run may change.

Every checkpoint records the configuration of its run (:func:`describe_run`): the run's options
(the fields of a :class:`~performers.training.TrainingConfig`, or of a distillation's config,
the identity of the training data among them) and the model (its class and its config). A
resumed run compares the stored description with its own (:func:`check_resume`) and refuses
every difference with a :class:`ResumeMismatchError` that lists them (``learning_rate 0.002 →
0.0003``) — except the options of :data:`SAFE_ON_RESUME`, which only change how long the run
goes on, what is observed and kept, or how the same computation is scheduled.

A checkpoint written before descriptions were recorded has none: what it does hold (the
trainer's own options) is compared and the rest is reported as unchecked.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from performers.utils.errors import InputError

__all__ = [
    "SAFE_ON_RESUME",
    "Change",
    "ResumeMismatchError",
    "check_resume",
    "describe_model",
    "describe_run",
    "format_changes",
    "recorded_run",
    "run_changes",
]

# The options a resumed run may change, as keys of the flattened run description
# ("<section>.<field>", "model.config.<field>"). THE one list: the trainer, distillation, the
# command line and the README's checkpoint section all refer to it. Everything else that
# differs refuses the resume.
SAFE_ON_RESUME: frozenset[str] = frozenset(
    {
        # How long: extend (or shorten) a run. The learning-rate schedule's total becomes the
        # new step count from the resumed step on (a cosine decay is stretched, not restarted).
        "training.max_steps",
        "distill.steps",
        # What is observed and kept: evaluation, logs, checkpoints, TensorBoard.
        "training.eval_every",
        "training.eval_batches",
        "training.log_every",
        "training.checkpoint_every",
        "training.keep_last",
        "training.tensorboard",
        "distill.checkpoint_every",
        "distill.keep_last",
        "distill.log_every",
        # How the same computation is scheduled: loader processes (the batches are the same),
        # context parallelism, and the FAVOR implementation choices (backend, fused block size,
        # causal chunk size), which compute the same function. Like the thread count (never
        # recorded), these may change the last bits of float sums.
        "training.num_workers",
        "training.context_parallel",
        "model.config.favor.backend",
        "model.config.favor.block_size",
        "model.config.favor.chunk_size",
        "model.config.favor_config.backend",
        "model.config.favor_config.block_size",
        "model.config.favor_config.chunk_size",
        "model.config.favor.recompute_features",
        "model.config.favor_config.recompute_features",
    }
)

# Config keys that are bookkeeping, not computation (Hugging Face: the path the model was
# loaded from, the library version, attention-implementation flags starting with "_").
_IGNORED_MODEL_KEYS = frozenset({"transformers_version", "name_or_path"})


class Change(NamedTuple):
    """One option that differs: its key in the run description, the stored and the new value."""

    key: str
    old: Any
    new: Any


class ResumeMismatchError(InputError):
    """A resume that would continue a different computation; ``changes`` lists each difference.

    The message names the checkpoint and every change (``learning_rate 0.002 → 0.0003``);
    a command line re-words the keys as its options (:func:`format_changes` with ``names``).
    """

    def __init__(self, path: str | Path, changes: list[Change], what: str = "") -> None:
        self.path, self.changes = Path(path), changes
        what = what or "options that change the computation differ"
        super().__init__(
            f"{path}: cannot resume: {what}: {format_changes(changes)} "
            "(start a fresh run in another directory, or overwrite this one)"
        )


_ABSENT = object()


def describe_model(model: nn.Module) -> dict[str, Any]:
    """``{"class": ..., "config": ...}`` of a model: its class name and its ``config`` (a
    dataclass, or an object with ``to_dict``, e.g. a Hugging Face config) as JSON values."""
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        values: Any = dataclasses.asdict(config)
    elif callable(getattr(config, "to_dict", None)):
        values = config.to_dict()
    else:
        values = None
    return {"class": type(model).__name__, "config": _json(_without_bookkeeping(values))}


def describe_run(section: str, options: Any, model: nn.Module) -> dict[str, Any]:
    """The description a checkpoint records: ``{section: options' fields, "model": ...}``."""
    return {section: _json(dataclasses.asdict(options)), "model": describe_model(model)}


def recorded_run(
    path: str | Path, run: Mapping[str, Any] | None, state: Mapping[str, Any], section: str
) -> dict[str, Any]:
    """The run description a checkpoint recorded (``run``). One written before descriptions
    were recorded has none: its loop kept its own options in ``state["config"]``, which become
    ``section`` (the model and data are then unchecked); a warning says what is compared."""
    if run is not None:
        return dict(run)
    legacy = state.get("config")
    compared = "only the training options are compared" if isinstance(legacy, dict) else "nothing is"
    warnings.warn(f"{path}: written before checkpoints recorded their run; {compared}", stacklevel=3)
    return {section: dict(legacy)} if isinstance(legacy, dict) else {}


def _without_bookkeeping(values: Any) -> Any:
    if not isinstance(values, dict):
        return values
    return {
        key: _without_bookkeeping(value)
        for key, value in values.items()
        if not (isinstance(key, str) and key.startswith("_")) and key not in _IGNORED_MODEL_KEYS
    }


def _json(values: Any) -> Any:
    """``values`` as they read back from JSON (tuples become lists; other objects strings), so a
    new description compares equal to a stored one."""
    return json.loads(json.dumps(values, default=str))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}``; lists and scalars are leaves, an empty dict
    records nothing (e.g. no data identity given)."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def run_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[Change]:
    """Every difference between two run descriptions, by flattened key.

    A key the stored description lacks was not recorded (an option added since): not compared.
    A key only the stored one has is a change to "absent".
    """
    old, new = _flatten(_json(dict(stored))), _flatten(_json(dict(current)))
    return [
        Change(key, old[key], new.get(key, _ABSENT))
        for key in sorted(old)
        if new.get(key, _ABSENT) != old[key]
    ]


def check_resume(path: str | Path, stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[Change]:
    """Compare a checkpoint's run description with the resumed run's.

    Returns:
        the changes of :data:`SAFE_ON_RESUME` options (for the log).

    Raises:
        ResumeMismatchError: any other change, every one listed.
    """
    changes = run_changes(stored, current)
    refused = [change for change in changes if change.key not in SAFE_ON_RESUME]
    if refused:
        raise ResumeMismatchError(path, refused)
    return changes


def format_value(value: Any) -> str:
    """A value as a message shows it: strings bare, the rest as JSON (``true``, ``null``)."""
    if value is _ABSENT:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value)


def format_changes(changes: list[Change], names: Mapping[str, str] | None = None) -> str:
    """``"learning_rate 0.002 → 0.0003, d_model 128 → 256"``: each change under its name in
    ``names`` (e.g. command-line options: ``--lr``) or its key without the section."""
    names = names or {}
    lines = [
        f"{names.get(c.key) or _short(c.key)} {format_value(c.old)} → {format_value(c.new)}" for c in changes
    ]
    return ", ".join(dict.fromkeys(lines))  # one option may set two fields (--max-length): once


def _short(key: str) -> str:
    """A key without its section: ``d_model``, ``favor.kernel``, ``learning_rate``, ``model class``."""
    if key.startswith("model.config."):
        return key.removeprefix("model.config.")
    if key == "model.class":
        return "model class"
    return key.split(".", 1)[-1]
