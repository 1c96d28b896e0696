"""``FavorConfig``: every option of FAVOR attention in one validated, JSON-round-trippable object.

One class carries the options from wherever they are chosen to where they are used: the
command line (:func:`performers.cli.favor_options.favor_config_from_args`), a model's
:class:`~performers.PerformerConfig` (its ``favor`` field), a :class:`~performers.FavorAttention`
layer, and a Hugging Face model converted by
:func:`performers.integrations.transformers.performerize` (``config.favor_config``). It is
validated once, here, with messages that name the field.

**Saved configurations never guess.** A configuration read back from a file
(:func:`favor_config_from_saved`: a model's ``config.json``, a converted Hugging Face model's
``favor_config``) must hold every field that existed in the format it was written in; a missing
one is a :class:`ConfigError` naming it, never a silent default (a missing ``kernel`` would
otherwise load a different model). Fields added by a later format get the value every model of
the older format was computed with, listed per format in :data:`ADDED_FIELDS`:

* format 1: performers 0.1.0, flat fields (``projection_kind``, ``num_features`` 0 for none,
  ``redraw_every`` null for never); ``block_size`` and ``backend`` did not exist.
* format 2: a nested ``favor`` dict written before formats were numbered; ``backend`` was added
  during it (files without it ran ``"auto"``).
* format 3: every field of its time, and the number is written.
* format 4: ``recompute_features`` added (format 1–3 models kept their query features: False; it
  changes memory, not values).
* format 5 (:data:`FAVOR_FORMAT`, current): no FAVOR field added; the model config gained
  ``attention_window`` (the ``"local"`` backend).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from performers.ops import DEFAULT_CHUNK_SIZE, KERNELS, OP_BACKENDS
from performers.utils.validation import ConfigError, check_format, require_choice, require_int

__all__ = [
    "ADDED_FIELDS",
    "FAVOR_FORMAT",
    "LEGACY_FIELDS",
    "PROJECTIONS",
    "ROW_NORMS",
    "ConfigError",
    "FavorConfig",
    "favor_config_from_saved",
]

PROJECTIONS = ("orthogonal", "iid")
ROW_NORMS = ("chi", "sqrt_d")

# performers 0.1.0 wrote these flat fields (PerformerConfig, Hugging Face favor_config); they are
# read into a FavorConfig: name then → name now.
LEGACY_FIELDS = {
    "num_features": "num_features",
    "kernel": "kernel",
    "projection_kind": "projection",
    "row_norms": "row_norms",
    "redraw_every": "redraw_every",
    "seed": "seed",
    "chunk_size": "chunk_size",
}

# The format of saved configurations this version writes (see the module docstring).
FAVOR_FORMAT = 5
# Format → the fields its files may lack, with the value every model of that format computed
# with. A field added in a later version goes here, for every older format, with that value.
ADDED_FIELDS: dict[int, dict[str, Any]] = {
    1: {"block_size": None, "backend": "auto", "recompute_features": False},
    2: {"backend": "auto", "recompute_features": False},
    3: {"recompute_features": False},
    4: {},
    5: {},
}


def _check_int(name: str, value: Any, minimum: int) -> None:
    require_int(f"FavorConfig.{name}", value, minimum)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    require_choice(f"FavorConfig.{name}", value, choices)


@dataclass(frozen=True)
class FavorConfig:
    """The options of FAVOR attention (immutable; change one with ``dataclasses.replace``).

    Attributes:
        num_features: ``M``, rows of the random projection (random features per layer). None
            means no projection, allowed for generalized kernels only (``"relu"``, ``"elu"``,
            ...: they then use ``f(x)`` directly).
        kernel: the estimator, a name in :data:`performers.KERNELS` (``"softmax"`` is FAVOR+;
            register your own with :func:`performers.ops.register_kernel`).
        projection: ``"orthogonal"`` (block-orthogonal rows, FAVOR+) or ``"iid"`` (Gaussian).
        row_norms: ``"chi"`` (rows marginally Gaussian: unbiased softmax) or ``"sqrt_d"`` (every
            row of norm ``√D``: the regularized kernel); orthogonal projections only.
        redraw_every: draw new projections every this many training steps (counted by
            :class:`~performers.FeatureRedrawer`); 0 never redraws.
        seed: projections are a pure function of ``(seed, layer index, redraw count)``.
        chunk_size: positions per chunk of the causal algorithm.
        block_size: positions per block of the fused bidirectional path; None sizes it for the
            cache.
        backend: ``"auto"`` (Triton kernels for CUDA tensors when triton is installed and the
            kernel has an exponential form, PyTorch otherwise), ``"torch"`` or ``"triton"``;
            see :func:`performers.favor_attention`.
        recompute_features: bidirectional layers recompute their query features in backward
            instead of keeping a ``(B, H, L, M)`` tensor per layer (less memory, a little more
            time; same values); see :func:`performers.favor_attention`.
    """

    num_features: int | None = 256
    kernel: str = "softmax"
    projection: str = "orthogonal"
    row_norms: str = "chi"
    redraw_every: int = 1000
    seed: int = 0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    block_size: int | None = None
    backend: str = "auto"
    recompute_features: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.kernel, str):
            raise TypeError(
                f"FavorConfig.kernel must be a registry name (str), got {type(self.kernel).__name__}; "
                "register a custom kernel with performers.ops.register_kernel and pass its name"
            )
        if self.kernel not in KERNELS:
            known = ", ".join(repr(k) for k in KERNELS)
            raise ValueError(f"FavorConfig.kernel: unknown kernel {self.kernel!r}; known kernels are {known}")
        if self.num_features is None:
            if KERNELS[self.kernel].requires_projection:
                raise ValueError(
                    f"FavorConfig.num_features: kernel {self.kernel!r} needs random features (an int >= 1); "
                    "None (no projection) is only for generalized kernels such as 'relu' or 'elu'"
                )
        else:
            _check_int("num_features", self.num_features, 1)
        _check_choice("projection", self.projection, PROJECTIONS)
        _check_choice("row_norms", self.row_norms, ROW_NORMS)
        if self.projection == "iid" and self.row_norms != "chi":
            raise ValueError("FavorConfig.row_norms='sqrt_d' is only defined for projection='orthogonal'")
        _check_int("redraw_every", self.redraw_every, 0)
        _check_int("seed", self.seed, 0)
        _check_int("chunk_size", self.chunk_size, 1)
        if self.block_size is not None:
            _check_int("block_size", self.block_size, 1)
        _check_choice("backend", self.backend, OP_BACKENDS)
        if not isinstance(self.recompute_features, bool):
            raise TypeError(
                "FavorConfig.recompute_features must be a bool, got "
                f"{type(self.recompute_features).__name__} {self.recompute_features!r}"
            )

    @property
    def has_projection(self) -> bool:
        """Whether the layer owns a random projection (``num_features`` is not None)."""
        return self.num_features is not None

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-compatible dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FavorConfig:
        """Build (and validate) a config from :meth:`to_dict` output; unknown keys are an error.

        Also reads the flat options written by performers 0.1.0 (:data:`LEGACY_FIELDS`:
        ``projection_kind``; ``num_features`` 0 for "no projection"; ``redraw_every`` None for
        "never"), so every model saved before this class existed still loads. Missing fields
        take the class defaults: this builds a config in code; a *saved* one is read with
        :func:`favor_config_from_saved`, which refuses missing fields.
        """
        if isinstance(data, FavorConfig):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"FavorConfig.from_dict needs a dict, got {type(data).__name__}")
        values = _current_names(data)
        # 0.1.0 spellings of "none" / "never".
        if values.get("num_features") == 0 and not isinstance(values.get("num_features"), bool):
            values["num_features"] = None
        if "redraw_every" in values and values["redraw_every"] is None:
            values["redraw_every"] = 0
        return cls(**values)

    def to_json(self) -> str:
        """The config as a JSON document."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FavorConfig:
        """Parse :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"FavorConfig JSON is not valid JSON: {err}") from None
        return cls.from_dict(data)


def _current_names(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with 0.1.0's names replaced by today's; ValueError for an unknown field or a
    field given under both names."""
    known = {f.name for f in fields(FavorConfig)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = LEGACY_FIELDS.get(key, key)
        if name not in known:
            raise ValueError(f"unknown FavorConfig field {key!r}; known fields are {sorted(known)}")
        if key != name and name in data:
            raise ValueError(f"FavorConfig: both {key!r} (old name) and {name!r} are given")
        values[name] = value
    return values


def _saved_format(data: dict[str, Any], declared: Any) -> int:
    """The format of a saved FAVOR dict: ``declared`` if given, else 1 (0.1.0's flat names) or 2."""
    if declared is None:
        return 1 if "projection_kind" in data else 2
    return check_format(declared, ADDED_FIELDS)


def favor_config_from_saved(data: Any, *, format: Any = None, prefix: str = "") -> FavorConfig:
    """A :class:`FavorConfig` from a saved dict that must hold every field of its format.

    Args:
        data: the saved dict (today's names, or 0.1.0's flat names for format 1).
        format: the format number saved next to it; None for files written before formats were
            numbered (then 0.1.0's ``projection_kind`` means format 1, anything else format 2).
        prefix: how the caller names the dict in messages, e.g. ``"favor."``.

    Raises:
        ConfigError: a field of that format is missing (named), or the format is unknown.
        ValueError / TypeError: an unknown field or an invalid value (as :meth:`FavorConfig.from_dict`).
    """
    if not isinstance(data, dict):
        raise TypeError(
            f"{prefix.rstrip('.') or 'the FAVOR configuration'} must be a dict, got {type(data).__name__}"
        )
    version = _saved_format(data, format)
    present = _current_names(data)  # an unknown field is the first error
    added = ADDED_FIELDS[version]
    missing = [f.name for f in fields(FavorConfig) if f.name not in present and f.name not in added]
    if missing:
        names = ", ".join(repr(prefix + name) for name in missing)
        raise ConfigError(
            f"missing field {names} (configuration format {version}); performers does not guess a value "
            "that changes the computation: add it with the value the model was made with"
        )
    defaults = {name: value for name, value in added.items() if name not in present}
    return replace(FavorConfig.from_dict(data), **defaults)
