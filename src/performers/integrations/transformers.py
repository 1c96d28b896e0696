"""A ``"favor"`` attention backend for Hugging Face ``transformers`` models (the ``[hf]`` extra).

Pretrained Transformers become Performers without touching their model files: this module
registers an attention function and a mask function under the name ``"favor"`` in
``transformers``' ``AttentionInterface`` / ``AttentionMaskInterface`` (done on import, and again
by :func:`register`, idempotently). Then::

    model = AutoModel.from_pretrained(path, attn_implementation="favor")   # or
    model.set_attn_implementation("favor")                                  # or
    performerize(model, FavorConfig(num_features=256, kernel="softmax"))  # options

run every self-attention of an encoder (BERT, RoBERTa, ESM: bidirectional, padding honoured on
keys; ESM's specifics are in :mod:`performers.integrations.hf_esm`) or decoder (GPT-2, Llama:
causal, :class:`FavorCache` for ``generate()``) with FAVOR+ (:func:`performers.favor_attention`):
``O(L·M·D)`` instead of ``O(L²·D)``.

**Settings** are a :class:`performers.FavorConfig`, kept in ``model.config.favor_config`` as its
JSON dict (saved in ``config.json`` by ``save_pretrained``) with its format number in
``favor_config_format``, and the draw number of each layer's projection in
``model.config.favor_redraw_counts``. A model whose config has none gets ``FavorConfig()``. A
saved ``favor_config`` is read without guessing: a missing field is a
:class:`~performers.utils.validation.ConfigError` naming it
(:func:`~performers.layers.favor_config.favor_config_from_saved`); configs written by performers
0.1.0 (flat options with ``projection_kind`` and ``redraw_counts`` inside ``favor_config``) and
before ``favor_config_format`` existed are read with the values they were computed with.

**Reloading a converted model runs FAVOR+ by default.** :func:`performerize` also records
``attn_implementation: "favor"`` in the config, which ``save_pretrained`` writes to
``config.json``, so ``AutoModel.from_pretrained(path)`` (this module imported) runs FAVOR+ with
the saved projections, and *refuses* to load (HF's "attn_implementation='favor' is not
supported") when this module was not imported — it never silently runs softmax. An explicit
``from_pretrained(path, attn_implementation="sdpa")`` is honoured (same weights, softmax; the
``favor_config`` is kept, :func:`performerize` switches back). Directories converted before
this (no ``attn_implementation`` key) load as FAVOR+ through :func:`load_hf_model` or with
``attn_implementation="favor"``; re-saving them writes the key. Saving a model loaded this way
*before* its first forward call: call :func:`performerize` (no options) first, as for
:class:`~performers.FeatureRedrawer`, since HF consumes the key when loading.

**Projections** are buffers of a :class:`performers.FavorAttention` submodule ``favor`` attached
to each attention module (by :func:`performerize`, or on the first forward call when the model
was loaded with ``attn_implementation="favor"``). Layer ``l``'s draw number ``c`` is a pure
function of ``(seed, l, c)`` (:func:`performers.layers.projection_seed`), drawn in float64 on
a CPU generator and kept in float64. The buffers are therefore *non-persistent*: they are not
written to ``model.safetensors``; ``from_pretrained`` regenerates them bit for bit from
``favor_config`` and ``favor_redraw_counts`` (which :meth:`FavorAttention.redraw` updates).
A :class:`performers.FeatureRedrawer` works on converted models as on native ones; after
``from_pretrained`` call :func:`performerize` without options (it keeps ``favor_config``) to
attach the submodules before the first forward call.

**Masks.** The ``"favor"`` mask function never builds an ``L×L`` tensor. It returns ``None``
(no padding) or the 2D key-padding mask ``(B, Lk)`` (bool, True = attend, HF's convention),
and causality comes from the attention module (``module.is_causal``), as in HF's ``sdpa``
path. Only the plain causal and plain bidirectional patterns and packed sequences can be
represented; sliding windows, chunked/blockwise patterns and custom ``and``/``or`` mask
functions raise a ``ValueError``. The attention function accepts ``attention_mask`` as ``None``, a 2D key mask
``(B, Lk)`` (bool or 0/1) or a 4D mask ``(B|1, 1, Lq, Lk)`` (bool, or additive float with 0 /
large negative entries) *if* it factorizes into key padding (and the causal triangle for
causal modules); any other 4D mask (e.g. additive biases) raises a ``ValueError``.

**Packed batches** (``DataCollatorWithFlattening``: one row, ``position_ids`` restarting per
sequence, or ``cu_seq_lens_q``/``cu_seq_lens_k``) run FAVOR+ per sequence
(``favor_attention(..., cu_seqlens=...)``) in every supported family: the mask function turns
HF's packed pattern into a :class:`~performers.integrations.hf_masks.PackedMask`. Decoders need
``use_cache=False`` (HF detects packing only without a cache); packing with a cache, several
packed rows or a padding mask raise a ``ValueError``.

**Generation.** ``model.generate(ids, cache=FavorCache())`` keeps one FAVOR+ state ``(B, H,
M, D)`` per layer instead of growing keys and values: each new token costs ``O(M·D)`` per
head whatever the context length. With HF's default ``DynamicCache`` the backend still works
(it rebuilds the prefix state from the cached keys at every step: linear per token, so
quadratic over a generation) and says so once.

Not supported (clear errors): attention-weight dropout is not applied (FAVOR+ has no
attention matrix; a warning says so once in training mode), ``output_attentions`` returns
``None``, static caches, soft-capping, attention sinks, position biases.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

try:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "performers.integrations.transformers needs Hugging Face transformers >= 4.56: "
        "pip install 'performers[hf]'"
    ) from error

from performers.integrations import hf_esm
from performers.integrations.hf_cache import FavorCache, FavorCacheLayer, take_pending
from performers.integrations.hf_masks import PackedMask, favor_mask, key_padding
from performers.layers import FavorAttention, FavorConfig
from performers.layers.favor_config import FAVOR_FORMAT, favor_config_from_saved
from performers.ops import FavorState, favor_attention
from performers.utils import InputError

__all__ = [
    "ATTENTION_NAME",
    "SUPPORTED_ATTENTION_CLASSES",
    "FavorCache",
    "FavorCacheLayer",
    "UnsupportedModelError",
    "attention_modules",
    "favor_attention_forward",
    "favor_mask",
    "favor_settings",
    "is_performerized",
    "load_hf_model",
    "performerize",
    "register",
    "unperformerize",
]

ATTENTION_NAME = "favor"

# model_type -> attention classes whose forward calls ``ALL_ATTENTION_FUNCTIONS`` and that this
# backend was tested with. Another family with the same structure can be added here.
SUPPORTED_ATTENTION_CLASSES: dict[str, tuple[str, ...]] = {
    "bert": ("BertSelfAttention", "BertCrossAttention"),
    "roberta": ("RobertaSelfAttention", "RobertaCrossAttention"),
    "gpt2": ("GPT2Attention",),
    "llama": ("LlamaAttention",),
    "esm": (hf_esm.ATTENTION_CLASS,),
}

_WARNED: set[str] = set()


class UnsupportedModelError(InputError):
    """A model of a family the ``"favor"`` attention does not support (its ``model_type`` is not
    in :data:`SUPPORTED_ATTENTION_CLASSES`), or one without the attention modules of its family."""


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


# --------------------------------------------------------------------------------------------
# settings


def favor_settings(config: Any) -> FavorConfig:
    """The :class:`~performers.FavorConfig` of a Hugging Face ``config`` (``FavorConfig()`` if it
    has none, which is then recorded in it, so it is saved).

    A saved ``favor_config`` must hold every field of its format (``favor_config_format``;
    absent: written before the number existed); a performers 0.1.0 ``favor_config`` (flat
    options, the redraw counts inside) is converted in place to today's layout. The config is
    marked to load with the ``"favor"`` attention (``attn_implementation``, see the module
    docstring).

    Raises:
        ConfigError: a field of the saved format is missing (named) or the format is unknown.
        ValueError / TypeError: ``config.favor_config`` is not a valid FAVOR configuration
            (the message names the field).
    """
    current = getattr(config, "favor_config", None)
    if current is None:
        favor = FavorConfig()
    elif isinstance(current, FavorConfig):
        favor = current
    elif isinstance(current, dict):
        current = dict(current)
        legacy_counts = current.pop("redraw_counts", None)
        saved_format = getattr(config, "favor_config_format", None)
        favor = favor_config_from_saved(current, format=saved_format, prefix="favor_config.")
        if legacy_counts is not None:
            if not isinstance(legacy_counts, dict):
                raise ValueError(
                    f"favor_config.redraw_counts must be a dict {{layer: count}}, got {legacy_counts!r}"
                )
            config.favor_redraw_counts = {str(k): int(v) for k, v in legacy_counts.items()}
    else:
        raise TypeError(f"config.favor_config must be a dict, got {type(current).__name__}")
    _record(config, favor)
    counts = getattr(config, "favor_redraw_counts", None)
    if not isinstance(counts, dict):
        config.favor_redraw_counts = {}
    return favor


def _record(config: Any, favor: FavorConfig) -> None:
    """Write ``favor`` into an HF config in today's format, marked to reload as FAVOR+.

    ``attn_implementation`` is the key HF's config reads when loading (then consumes): saved in
    ``config.json`` it makes a plain ``from_pretrained`` run (or, without this module, refuse)
    the ``"favor"`` attention instead of silently running softmax.
    """
    config.favor_config = favor.to_dict()
    config.favor_config_format = FAVOR_FORMAT
    config.attn_implementation = ATTENTION_NAME


# --------------------------------------------------------------------------------------------
# the per-module projection


class _HFFavorAttention(FavorAttention):
    """A :class:`FavorAttention` whose state is recreated from the model's config.

    Its buffers are non-persistent (HF loading cannot create them before the weights load);
    :meth:`redraw` records the draw number in ``redraw_counts`` (the dict
    ``config.favor_redraw_counts``), so a saved config restores the same projection.
    """

    def __init__(
        self,
        head_dim: int,
        favor: FavorConfig,
        redraw_counts: dict[str, int],
        layer_index: int,
        device: torch.device,
    ) -> None:
        super().__init__(head_dim, favor, layer_index=layer_index, device=device, dtype=torch.float64)
        self._redraw_counts = redraw_counts
        count = int(redraw_counts.get(str(layer_index), 0))
        with torch.no_grad():
            self.redraw_count.fill_(count)
            if self.projection is not None and count:
                self.projection.copy_(self.draw_projection(count))
        for name in ("projection", "redraw_count", "step_count"):
            self.register_buffer(name, getattr(self, name), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.projection is not None and self.projection.dtype != torch.float64:
            # model.to(dtype) / .half() cast every floating buffer; the projection stays the
            # exact float64 draw (attention casts it to the inputs' dtype when it is used).
            with torch.no_grad():
                exact = self.draw_projection(int(self.redraw_count.item()))
            self.projection = exact.to(self.projection.device)
        return self

    @torch.no_grad()
    def redraw(self) -> None:
        super().redraw()
        self._redraw_counts[str(self.layer_index)] = int(self.redraw_count.item())


def _model_type(config: Any) -> str:
    return str(getattr(config, "model_type", "") or "")


def _check_supported(module: nn.Module) -> None:
    config = getattr(module, "config", None)
    if config is None:
        raise ValueError(
            f"{type(module).__name__} has no .config; the 'favor' attention needs the HF attention module "
            "(with .config, .layer_idx, .is_causal) as its first argument"
        )
    model_type = _model_type(config)
    names = SUPPORTED_ATTENTION_CLASSES.get(model_type)
    if names is None:
        raise ValueError(
            f"the 'favor' attention does not support model_type {model_type!r} "
            f"(supported: {sorted(SUPPORTED_ATTENTION_CLASSES)}); a family with the same attention "
            "structure can be added to performers.integrations.transformers.SUPPORTED_ATTENTION_CLASSES"
        )
    if type(module).__name__ not in names:
        raise ValueError(
            f"the 'favor' attention does not support {type(module).__name__} in a {model_type!r} model "
            f"(supported: {names})"
        )


def _head_dim(module: nn.Module) -> int:
    for name in ("head_dim", "attention_head_size"):
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot find the head size of {type(module).__name__}")


def _layer_index(module: nn.Module) -> int:
    index = getattr(module, "layer_idx", None)
    if not isinstance(index, int) or index < 0:
        raise ValueError(
            f"{type(module).__name__} has no layer_idx; FAVOR+ projections are seeded by layer "
            "(call performerize(model), which numbers the layers of an ESM model)"
        )
    if getattr(module, "is_cross_attention", False) or type(module).__name__.endswith("CrossAttention"):
        # Cross-attention of layer l gets its own projection, distinct from self-attention's.
        index += int(getattr(module.config, "num_hidden_layers", 0) or 0) + 1_000_000
    return index


def _attach(module: nn.Module, device: torch.device | None = None) -> _HFFavorAttention:
    """Create (or re-create) ``module.favor`` from ``module.config``'s FAVOR settings."""
    _check_supported(module)
    favor_config = favor_settings(module.config)
    if device is None:
        parameter = next(module.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    favor = _HFFavorAttention(
        _head_dim(module), favor_config, module.config.favor_redraw_counts, _layer_index(module), device
    )
    module.favor = favor
    return favor


def _favor_module(module: nn.Module, device: torch.device) -> _HFFavorAttention:
    favor = getattr(module, "favor", None)
    if isinstance(favor, _HFFavorAttention):
        return favor
    return _attach(module, device)


# --------------------------------------------------------------------------------------------
# the attention function


_UNSUPPORTED_KWARGS = ("softcap", "sliding_window", "s_aux", "sinks", "position_bias", "head_mask")


def favor_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """The ``"favor"`` entry of ``AttentionInterface`` (signature of HF's ``sdpa_attention_forward``).

    Args:
        module: the HF attention module (gives ``config``, ``layer_idx``, ``is_causal`` and
            ``num_key_value_groups``; holds the ``favor`` projection submodule).
        query: ``(B, H, Lq, D)``.
        key, value: ``(B, Hkv, Lk, D)`` with ``H = Hkv · num_key_value_groups`` (GQA); with a
            :class:`FavorCache` only the new positions.
        attention_mask: see the module docstring (None, 2D key mask or factorizable 4D mask).
        dropout: attention-weight dropout; not applied (FAVOR+ forms no attention matrix).
        scaling: the softmax temperature (default ``1/√D``).
        is_causal: overrides ``module.is_causal``.

    Returns:
        ``(out, None)`` with ``out`` of shape ``(B, Lq, H, D)`` (HF's layout after attention).
    """
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise ValueError(f"the 'favor' attention does not support {name!r}")
    if dropout and module.training:
        _warn_once(
            "dropout",
            "the 'favor' attention does not apply attention-weight dropout "
            "(FAVOR+ forms no attention matrix)",
        )
    if kwargs.get("output_attentions"):
        _warn_once("weights", "the 'favor' attention cannot return attention weights; they are None")
    favor = _favor_module(module, query.device)
    query, scaling = hf_esm.favor_query(module, query, scaling)  # ESM pre-scales its queries
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    batch, _, q_len, _ = query.shape
    layer = take_pending(key)
    # Grouped-query attention (Llama's num_key_value_heads): key and value keep their Hkv heads
    # and favor_attention reads them with enable_gqa (bidirectional: no copy; causal: repeated
    # inside, the state has H heads).
    gqa = query.shape[1] != key.shape[1]
    k_len = key.shape[2]
    try:
        cu_seqlens = _packed_cu_seqlens(attention_mask, kwargs, layer, q_len, k_len, batch)
    except ValueError:
        if layer is not None:
            layer.abandon()  # the refused call leaves a FavorCache as it was
        raise
    pad = None if cu_seqlens is not None else key_padding(attention_mask, causal, q_len, k_len, batch)
    common = {
        "kernel": favor.kernel,
        "scale": scaling,
        "chunk_size": favor.config.chunk_size,
        "block_size": favor.config.block_size,
        "enable_gqa": gqa,
    }
    projection = favor.projection

    if cu_seqlens is not None:
        out = favor_attention(
            query, key, value, projection, is_causal=causal, cu_seqlens=cu_seqlens, **common
        )
    elif layer is not None:
        out = _continue_cache(layer, query, key, value, projection, pad, causal, common)
    elif causal and k_len != q_len:
        if k_len < q_len:
            raise ValueError(f"causal attention with fewer keys ({k_len}) than queries ({q_len})")
        if favor.kernel.parameters is not None:
            # The prefix state cannot be rebuilt from cached keys alone: the kernel's parameters
            # (FAVOR++'s A) come from the prefix's queries, which a key/value cache does not keep.
            raise ValueError(
                f"kernel {favor.config.kernel!r} has data-dependent parameters and cannot decode from a "
                "key/value cache; pass cache=FavorCache() to generate()"
            )
        _warn_once(
            "dynamic-cache",
            "the 'favor' attention is decoding with a key/value cache, so it rebuilds the FAVOR+ "
            "state from all past keys at every step (linear per token); pass cache=FavorCache() for "
            "constant cost per token",
        )
        past = k_len - q_len
        pad_past = None if pad is None else pad[:, :past]
        pad_new = None if pad is None else pad[:, past:]
        _, state = favor_attention(
            key[:, :, :past],
            key[:, :, :past],
            value[:, :, :past],
            projection,
            is_causal=True,
            key_padding_mask=pad_past,
            return_state=True,
            **{**common, "enable_gqa": False},
        )
        if gqa:
            # The prefix sums of a key/value head serve each of its query heads: summed once
            # per key/value head, then repeated to the H heads the continuation's state has.
            groups = query.shape[1] // key.shape[1]
            state = FavorState(
                *(t.repeat_interleave(groups, dim=1) if isinstance(t, Tensor) else t for t in state)
            )
        out = favor_attention(
            query,
            key[:, :, past:],
            value[:, :, past:],
            projection,
            is_causal=True,
            key_padding_mask=pad_new,
            initial_state=state,
            **common,
        )
    else:
        out = favor_attention(query, key, value, projection, is_causal=causal, key_padding_mask=pad, **common)
    return out.transpose(1, 2).contiguous(), None


def _packed_cu_seqlens(
    mask: Any, kwargs: dict[str, Any], layer: FavorCacheLayer | None, q_len: int, k_len: int, batch: int
) -> Tensor | None:
    """``cu_seqlens`` of a packed batch, or None for an ordinary one.

    Packing is read from the :class:`PackedMask` the ``"favor"`` mask function makes of HF's
    packed pattern (every family whose model passes ``position_ids`` to its mask), or from
    flash-attention kwargs ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (``DataCollatorWithFlattening(
    return_flash_attn_kwargs=True)``); both given must agree. ``position_ids`` that restart with
    neither and no padding mask in a one-row batch (HF builds no packed mask when a cache is in
    use) are refused: running them as one sequence would silently mix the sequences.
    """
    cu_seqlens = mask.cu_seqlens if isinstance(mask, PackedMask) else None
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None or cu_k is not None:
        if cu_q is None or cu_k is None or not torch.equal(cu_q.cpu().long(), cu_k.cpu().long()):
            raise ValueError(
                "the 'favor' attention needs cu_seq_lens_q and cu_seq_lens_k to be the same (self-attention "
                "of one packed row)"
            )
        flash = cu_q.to(torch.int64)
        if cu_seqlens is not None and not torch.equal(cu_seqlens.cpu(), flash.cpu()):
            raise ValueError(
                f"cu_seq_lens_q {flash.tolist()} disagrees with the sequences of position_ids "
                f"{cu_seqlens.tolist()}"
            )
        if cu_seqlens is None and mask is not None:
            raise ValueError("the 'favor' attention cannot combine packed sequences with an attention_mask")
        cu_seqlens = flash
    position_ids = kwargs.get("position_ids")
    if (
        cu_seqlens is None
        and mask is None  # left padding gives position_ids like 1, 1, 0, 1, 2 with its mask
        and batch == 1  # packed rows are one row; skipping the check spares batches a device sync
        and isinstance(position_ids, Tensor)
        and position_ids.dim() == 2
        and position_ids.shape[-1] > 1
        and bool((position_ids[:, 1:] - position_ids[:, :-1] != 1).any())
    ):
        raise ValueError(
            "position_ids restart (packed sequences), but transformers built no packed mask: it does so "
            "only without an attention_mask and without a cache; call the model with use_cache=False and "
            "no attention_mask (packed sequences cannot be cached or generated from)"
        )
    if cu_seqlens is None:
        return None
    if layer is not None or k_len != q_len:
        raise ValueError("the 'favor' attention cannot run packed sequences with a cache (use_cache=False)")
    if batch != 1:
        raise ValueError(f"packed sequences must be one row (batch size 1), got a batch of {batch}")
    return cu_seqlens


def _continue_cache(
    layer: FavorCacheLayer,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    projection: Tensor | None,
    pad: Tensor | None,
    causal: bool,
    common: dict[str, Any],
) -> Tensor:
    """Attention of the new positions from ``layer``'s state; the state moves on only on success
    (a failed call leaves the cache usable, not "updated twice")."""
    try:
        if not causal:
            raise ValueError("FavorCache is for causal self-attention; this module is not causal")
        if key.shape[2] != query.shape[2]:
            raise ValueError(
                f"FavorCache: expected as many new keys as queries, got {key.shape[2]} and {query.shape[2]}"
            )
        out, state = favor_attention(
            query,
            key,
            value,
            projection,
            is_causal=True,
            key_padding_mask=pad,
            initial_state=layer.state,
            return_state=True,
            **common,
        )
    except BaseException:
        layer.abandon()
        raise
    layer.commit(state, key.shape[2])
    return out


# --------------------------------------------------------------------------------------------
# registration and conversion


def register() -> None:
    """Register ``"favor"`` in HF's ``AttentionInterface`` and ``AttentionMaskInterface`` (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, favor_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, favor_mask)
    hf_esm.install()


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every attention module of ``model`` the backend runs, in order.

    Raises:
        UnsupportedModelError: (a ``ValueError``) ``model`` is not of a supported family (see
            :data:`SUPPORTED_ATTENTION_CLASSES`).
    """
    config = getattr(model, "config", None)
    model_type = _model_type(config) if config is not None else ""
    names = SUPPORTED_ATTENTION_CLASSES.get(model_type)
    if names is None:
        raise UnsupportedModelError(
            f"performerize does not support {type(model).__name__} (model_type {model_type!r}); "
            f"supported model types: {sorted(SUPPORTED_ATTENTION_CLASSES)}"
        )
    found = [(n, m) for n, m in model.named_modules() if type(m).__name__ in names]
    if not found:
        raise UnsupportedModelError(f"found no attention module ({names}) in {type(model).__name__}")
    return found


def performerize(model: nn.Module, config: FavorConfig | None = None) -> nn.Module:
    """Switch a loaded HF model to FAVOR attention, in place; returns ``model``.

    ``config`` None keeps the :class:`~performers.FavorConfig` already in
    ``model.config.favor_config`` (a model converted before, e.g. loaded with
    ``from_pretrained``) or takes ``FavorConfig()``. A config that differs from the model's
    current one resets the projections to draw 0. The weights are untouched:
    :func:`unperformerize` gives back the original model.

    Args:
        model: a ``PreTrainedModel`` of a supported family (BERT, RoBERTa, GPT-2, Llama, ESM).
        config: the FAVOR options (kernel, M, projection, seed, redraw period, chunk size).
    """
    register()
    modules = attention_modules(model)
    hf_esm.number_layers(model)  # an ESM model built before this module was imported
    if config is not None and not isinstance(config, FavorConfig):
        raise TypeError(f"config must be a FavorConfig, got {type(config).__name__}")
    current = (
        favor_settings(model.config) if getattr(model.config, "favor_config", None) is not None else None
    )
    favor = config or current or FavorConfig()
    counts = {} if favor != current else dict(getattr(model.config, "favor_redraw_counts", {}))
    configs = {id(m.config): m.config for _, m in modules}
    configs[id(model.config)] = model.config
    for hf_config in configs.values():
        _record(hf_config, favor)
        hf_config.favor_redraw_counts = counts  # one dict: redraws of every layer record here
    previous = getattr(model.config, "_attn_implementation", None)
    if previous not in (None, ATTENTION_NAME):  # what unperformerize() goes back to
        model._performers_previous_attn_implementation = previous
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTENTION_NAME)
    else:
        for hf_config in configs.values():
            hf_config._attn_implementation = ATTENTION_NAME
    for _, module in modules:
        _attach(module)
    return model


def load_hf_model(
    path: str | os.PathLike, *, supported_only: bool = False, **model_options: Any
) -> tuple[nn.Module, Any]:
    """``(model, tokenizer or None)`` from a ``save_pretrained`` directory, offline, eval mode.

    The class is the one named in ``config.architectures`` (e.g. ``BertModel``,
    ``GPT2LMHeadModel``), so heads are kept; ``AutoModel`` when none is named. A model converted
    by :func:`performerize` (its config holds ``favor_config``) loads with the ``"favor"``
    attention and its saved projections, also when it was saved before ``config.json``
    recorded ``attn_implementation``. ``supported_only``: refuse a family :func:`performerize`
    does not support before loading its weights. ``model_options`` go to the class's
    ``from_pretrained`` (e.g. ``add_pooling_layer=False`` for a base model saved without one).

    Raises:
        FileNotFoundError: ``path`` has no ``config.json``.
        UnsupportedModelError: its ``config.json`` names a model type transformers does not know
            (or, with ``supported_only``, one the ``"favor"`` attention does not support).
        ConfigError: the saved ``favor_config`` misses a field of its format (named).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = str(path)
    if not Path(path, "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path)
    except (KeyError, ValueError) as error:  # a model_type this transformers does not know
        raise UnsupportedModelError(f"{path}: cannot read its config.json: {error}") from None
    if supported_only and _model_type(config) not in SUPPORTED_ATTENTION_CLASSES:
        raise UnsupportedModelError(
            f"{path}: the FAVOR attention does not support model_type {_model_type(config)!r}; "
            f"supported model types: {sorted(SUPPORTED_ATTENTION_CLASSES)}"
        )
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    options: dict[str, Any] = dict(model_options)
    if getattr(config, "favor_config", None) is not None:
        favor_settings(config)  # refuses an incomplete favor_config before the weights load
        register()
        options["attn_implementation"] = ATTENTION_NAME
    model = (cls or AutoModel).from_pretrained(path, **options).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):  # TypeError: ESM's tokenizer without its vocab.txt
        tokenizer = None
    return model, tokenizer


def is_performerized(model: nn.Module) -> bool:
    """True when ``model`` runs the ``"favor"`` attention."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == ATTENTION_NAME


def unperformerize(model: nn.Module, attn_implementation: str | None = None) -> nn.Module:
    """Back to softmax attention, in place: removes the ``favor`` submodules and
    ``config.favor_config``; returns ``model``.

    ``attn_implementation`` defaults to the one the model had when :func:`performerize` was
    called on it (e.g. ``"eager"``), else ``"sdpa"`` (a model loaded with ``"favor"``)."""
    if attn_implementation is None:
        attn_implementation = getattr(model, "_performers_previous_attn_implementation", None) or "sdpa"
    if hasattr(model, "_performers_previous_attn_implementation"):
        del model._performers_previous_attn_implementation
    for _, module in attention_modules(model):
        if isinstance(getattr(module, "favor", None), FavorAttention):
            del module.favor
    configs = {id(m.config): m.config for _, m in attention_modules(model)}
    configs[id(model.config)] = model.config
    for config in configs.values():
        for name in ("favor_config", "favor_config_format", "favor_redraw_counts", "attn_implementation"):
            if hasattr(config, name):
                delattr(config, name)
    model.set_attn_implementation(attn_implementation)
    return model


register()
