"""``PerformerConfig``: every size and option of the Performer models, JSON round-trippable.

A saved config (``config.json`` of :func:`~performers.save_pretrained`, :meth:`PerformerConfig.save`)
records its format number (``"config_format"``, :data:`CONFIG_FORMAT`) and is read back by
:meth:`PerformerConfig.from_saved`, which never guesses: every field that existed in that format
must be present (a missing ``activation`` or ``kernel`` is a
:class:`~performers.utils.validation.ConfigError` naming the field), and fields added by later
formats take the values the older models computed with (:data:`ADDED_MODEL_FIELDS`,
:data:`performers.layers.favor_config.ADDED_FIELDS`). Files without a number are formats 1
(performers 0.1.0: flat FAVOR fields) and 2 (a nested ``favor`` dict), told apart by their layout.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from performers.layers import ATTENTION_BACKENDS, FavorConfig
from performers.layers.favor_config import (
    ADDED_FIELDS,
    FAVOR_FORMAT,
    LEGACY_FIELDS,
    favor_config_from_saved,
)
from performers.utils.validation import (
    ConfigError,
    check_format,
    require_choice,
    require_float,
    require_int,
)

__all__ = ["ADDED_MODEL_FIELDS", "CONFIG_FORMAT", "CONFIG_FORMAT_KEY", "ConfigError", "PerformerConfig"]

# The format number written into saved configs (shared with the FAVOR fields' format).
CONFIG_FORMAT = FAVOR_FORMAT
CONFIG_FORMAT_KEY = "config_format"
# Format → PerformerConfig fields its files may lack, with the value its models computed with.
# A field added later goes here for older formats: attention_window came with format 5 (with the
# "local" backend; older models never read it).
ADDED_MODEL_FIELDS: dict[int, dict[str, Any]] = {
    version: {} if version >= 5 else {"attention_window": 256} for version in ADDED_FIELDS
}
# Keys saved next to the fields (io.save_pretrained, to_json); from_dict / from_saved skip them.
METADATA_KEYS = ("architectures", "model_type", "performers_version", CONFIG_FORMAT_KEY)


def _require_int(name: str, value: Any, minimum: int) -> None:
    require_int(f"PerformerConfig.{name}", value, minimum)


def _require_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    require_choice(f"PerformerConfig.{name}", value, choices)


def _require_float(name: str, value: Any, low: float, high: float, *, high_inclusive: bool = False) -> float:
    return require_float(f"PerformerConfig.{name}", value, low, high, high_inclusive=high_inclusive)


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
        attention: ``"favor"`` (FAVOR+), ``"exact"`` (softmax via SDPA) or ``"local"`` (softmax over
            a sliding window, a baseline); same weights either way.
        attention_window: the window of ``attention="local"``: position ``i`` sees ``i − W < j ≤ i``
            (causal) or ``|i − j| < W`` (bidirectional).
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
    attention_window: int = 256
    favor: FavorConfig = field(default_factory=FavorConfig)
    tie_embeddings: bool = True
    bias: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "d_model",
            "num_layers",
            "num_heads",
            "d_ff",
            "max_position_embeddings",
            "attention_window",
        ):
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
        _require_choice("attention", self.attention, ATTENTION_BACKENDS)
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

    def to_saved_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the format number first: what a saved config holds."""
        return {CONFIG_FORMAT_KEY: CONFIG_FORMAT, **self.to_dict()}

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> PerformerConfig:
        """Read a saved config (:meth:`to_saved_dict`, or a ``config.json`` of any earlier
        version) without guessing: see the module docstring.

        Raises:
            ConfigError: a field of the file's format is missing (named, ``favor.kernel`` for a
                FAVOR option), or the format number is unknown.
            ValueError / TypeError: unknown fields or invalid values, as :meth:`from_dict`.
        """
        if not isinstance(data, dict):
            raise TypeError(f"a saved PerformerConfig must be a JSON object, got {type(data).__name__}")
        values = {k: v for k, v in data.items() if k not in METADATA_KEYS}
        flat = {k: values.pop(k) for k in list(values) if k in LEGACY_FIELDS}
        version = _saved_format(data.get(CONFIG_FORMAT_KEY), flat=flat, nested="favor" in values)
        _check_saved_fields(values, flat=bool(flat), version=version)
        if flat:
            favor = favor_config_from_saved(flat, format=version)
        else:
            favor = favor_config_from_saved(values.pop("favor"), format=version, prefix="favor.")
        added = ADDED_MODEL_FIELDS[version]
        defaults = {name: value for name, value in added.items() if name not in values}
        return cls(**values, **defaults, favor=favor)

    def to_json(self) -> str:
        """The config as a JSON document (indented: the format number, then the fields in order)."""
        return json.dumps(self.to_saved_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PerformerConfig:
        """Parse :meth:`to_json` output (a saved config: :meth:`from_saved`'s rules)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"PerformerConfig JSON is not valid JSON: {err}") from None
        return cls.from_saved(data)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> PerformerConfig:
        """Read a config written by :meth:`save` (or a ``config.json`` of :func:`save_pretrained`)."""
        path = Path(path)
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text ({err})") from None
        except (ValueError, TypeError) as err:
            raise type(err)(f"{path}: {err}") from None


def _saved_format(declared: Any, *, flat: dict[str, Any], nested: bool) -> int:
    """The format of a saved config: the number it declares, else 1 (flat FAVOR fields) or 2."""
    if flat and nested:
        raise ValueError(
            f"PerformerConfig: FAVOR options {sorted(flat)} given both flat (performers 0.1.0) and in 'favor'"
        )
    if declared is None:
        return 1 if flat else 2
    check_format(declared, ADDED_MODEL_FIELDS, what=CONFIG_FORMAT_KEY)
    if flat and declared != 1:
        raise ConfigError(f"flat FAVOR fields {sorted(flat)} belong to format 1, not format {declared}")
    return declared


def _check_saved_fields(values: dict[str, Any], *, flat: bool, version: int) -> None:
    """Unknown fields are a ValueError; fields of ``version`` that are missing a ConfigError."""
    known = {f.name for f in fields(PerformerConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown PerformerConfig field(s) {unknown}; known fields are {sorted(known)}")
    added = ADDED_MODEL_FIELDS[version]
    missing = [
        f.name
        for f in fields(PerformerConfig)
        if f.name not in values and f.name not in added and f.name != "favor"
    ]
    if not flat and "favor" not in values:
        missing.append("favor")
    if missing:
        raise ConfigError(
            f"missing field {', '.join(map(repr, missing))} (configuration format {version}); "
            "performers does not guess a value that changes the model: add it with the value the "
            "model was trained with"
        )
