"""``PerformerConfig``: every size and option of the Performer models, JSON round-trippable."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from performers.layers import BACKENDS, FavorConfig
from performers.layers.favor_config import LEGACY_FIELDS

__all__ = ["PerformerConfig"]

# Keys io.save_pretrained adds to config.json next to the fields; from_dict skips them.
METADATA_KEYS = ("architectures", "model_type", "performers_version")


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"PerformerConfig.{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"PerformerConfig.{name} must be >= {minimum}, got {value}")


def _require_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"PerformerConfig.{name} must be one of {choices}, got {value!r}")


def _require_float(name: str, value: Any, low: float, high: float, *, high_inclusive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"PerformerConfig.{name} must be a finite number, got {value!r}")
    inside = low <= value <= high if high_inclusive else low <= value < high
    if not inside:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"PerformerConfig.{name} must be in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


@dataclass
class PerformerConfig:
    """Sizes and options of ``PerformerModel``, ``PerformerForMaskedLM`` and ``PerformerForCausalLM``.

    The defaults are the sizes of the paper's protein experiments except for depth
    (36 layers there): ``PerformerConfig(num_layers=36, vocab_size=25)`` with ``d_model=512``,
    ``num_heads=8``, ``d_ff=1024`` and ``max_position_embeddings=8192``.

    Attributes:
        vocab_size: number of token ids.
        d_model: model width ``E``.
        num_layers: number of Transformer blocks.
        num_heads: attention heads per block (must divide ``d_model``).
        d_ff: hidden size of the feed-forward network.
        max_position_embeddings: longest sequence with ``position="learned"``.
        position: ``"learned"`` (absolute embeddings) or ``"rotary"`` (RoPE, no length limit).
        rotary_base: RoPE frequency base.
        dropout: dropout on embeddings and residual branches.
        activation: feed-forward nonlinearity, ``"gelu"``, ``"relu"`` or ``"silu"``.
        layer_norm_eps: LayerNorm epsilon.
        attention: ``"favor"`` (FAVOR+) or ``"exact"`` (softmax via SDPA); same weights either way.
        favor: every FAVOR option (:class:`~performers.FavorConfig`: kernel, features, projection,
            redraw schedule, seed, chunk size), shared by all layers (each layer draws its own
            projection from ``(favor.seed, layer index)``).
        tie_embeddings: the LM head reuses the token embedding matrix.
        bias: biases in linear layers.
        pad_token_id, bos_token_id, eos_token_id: special token ids (or None).
        initializer_range: std of the normal initialization of weights.
    """

    vocab_size: int = 32000
    d_model: int = 512
    num_layers: int = 6
    num_heads: int = 8
    d_ff: int = 1024
    max_position_embeddings: int = 8192
    position: str = "learned"
    rotary_base: float = 10000.0
    dropout: float = 0.1
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention: str = "favor"
    favor: FavorConfig = field(default_factory=FavorConfig)
    tie_embeddings: bool = True
    bias: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_position_embeddings"):
            _require_int(name, getattr(self, name), 1)
        if self.d_model % self.num_heads:
            raise ValueError(
                f"PerformerConfig.d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        _require_choice("position", self.position, ("learned", "rotary"))
        if self.position == "rotary" and self.head_dim % 2:
            raise ValueError(
                f"position='rotary' needs an even head dimension, got d_model/num_heads = {self.head_dim}"
            )
        self.rotary_base = _require_float("rotary_base", self.rotary_base, 1.0, math.inf)
        if self.rotary_base <= 1.0:
            raise ValueError(f"PerformerConfig.rotary_base must be > 1, got {self.rotary_base}")
        self.dropout = _require_float("dropout", self.dropout, 0.0, 1.0)
        self.layer_norm_eps = _require_float("layer_norm_eps", self.layer_norm_eps, 0.0, 1.0)
        self.initializer_range = _require_float("initializer_range", self.initializer_range, 0.0, math.inf)
        _require_choice("activation", self.activation, ("gelu", "relu", "silu"))
        _require_choice("attention", self.attention, BACKENDS)
        if not isinstance(self.favor, FavorConfig):
            raise TypeError(
                f"PerformerConfig.favor must be a FavorConfig, got {type(self.favor).__name__} "
                "(PerformerConfig.from_dict reads a dict)"
            )
        for name in ("tie_embeddings", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"PerformerConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None:
                _require_int(name, value, 0)
                if value >= self.vocab_size:
                    raise ValueError(
                        f"PerformerConfig.{name} ({value}) must be < vocab_size ({self.vocab_size})"
                    )

    @property
    def head_dim(self) -> int:
        """Size of one attention head, ``d_model / num_heads``."""
        return self.d_model // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-compatible dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerformerConfig:
        """Build (and validate) a config from :meth:`to_dict` output; unknown keys are an error.

        A ``config.json`` of performers 0.1.0 held the FAVOR options as flat fields
        (``kernel``, ``num_features``, ``projection_kind``, ...): they are read into ``favor``.
        """
        if not isinstance(data, dict):
            raise TypeError(f"PerformerConfig.from_dict needs a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k not in METADATA_KEYS}
        legacy = {k: values.pop(k) for k in list(values) if k in LEGACY_FIELDS}
        if legacy:
            if "favor" in values:
                raise ValueError(
                    f"PerformerConfig: FAVOR options {sorted(legacy)} given both flat (performers 0.1.0) "
                    "and in 'favor'"
                )
            values["favor"] = FavorConfig.from_dict(legacy)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown PerformerConfig field(s) {unknown}; known fields are {sorted(known)}")
        if "favor" in values:
            values["favor"] = FavorConfig.from_dict(values["favor"])
        return cls(**values)

    def to_json(self) -> str:
        """The config as a JSON document (indented, keys in field order)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PerformerConfig:
        """Parse :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"PerformerConfig JSON is not valid JSON: {err}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> PerformerConfig:
        """Read a config written by :meth:`save` (or a ``config.json`` of :func:`save_pretrained`)."""
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except (ValueError, TypeError) as err:
            raise type(err)(f"{path}: {err}") from None
