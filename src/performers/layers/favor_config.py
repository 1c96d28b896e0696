"""``FavorConfig``: every option of FAVOR attention in one validated, JSON-round-trippable object.

One class carries the options from wherever they are chosen to where they are used: the
command line (:func:`performers.cli.favor_options.favor_config_from_args`), a model's
:class:`~performers.PerformerConfig` (its ``favor`` field), a :class:`~performers.FavorAttention`
layer, and a Hugging Face model converted by
:func:`performers.integrations.transformers.performerize` (``config.favor_config``). It is
validated once, here, with messages that name the field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from performers.ops import DEFAULT_CHUNK_SIZE, KERNELS
from performers.ops.attention import BACKENDS

__all__ = ["LEGACY_FIELDS", "PROJECTIONS", "ROW_NORMS", "FavorConfig"]

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


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"FavorConfig.{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"FavorConfig.{name} must be >= {minimum}, got {value}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"FavorConfig.{name} must be one of {choices}, got {value!r}")


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
        _check_choice("backend", self.backend, BACKENDS)

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
        "never"), so every model saved before this class existed still loads.
        """
        if isinstance(data, FavorConfig):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"FavorConfig.from_dict needs a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = LEGACY_FIELDS.get(key, key)
            if name not in known:
                raise ValueError(f"unknown FavorConfig field {key!r}; known fields are {sorted(known)}")
            if key != name and name in data:
                raise ValueError(f"FavorConfig: both {key!r} (old name) and {name!r} are given")
            values[name] = value
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
