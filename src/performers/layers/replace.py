"""Swap ``nn.MultiheadAttention`` modules of an existing model for FAVOR+ attention."""

from __future__ import annotations

import warnings

from torch import nn

from performers.layers.attention import MultiheadFavorAttention

__all__ = ["replace_multihead_attention"]


def replace_multihead_attention(model: nn.Module, **favor_kwargs) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` in ``model`` by a :class:`MultiheadFavorAttention`, in place.

    Each replacement copies the ``in_proj``/``out_proj`` weights and options (``batch_first``,
    ``dropout``, device, dtype) of the module it replaces and gets ``layer_index`` = its order
    of appearance in ``model.named_modules()``, so its projection is distinct and reproducible.

    Example::

        layer = nn.TransformerEncoderLayer(64, 4, batch_first=True)
        encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        replace_multihead_attention(encoder, num_features=128, seed=0)
        replace_multihead_attention(encoder, attention="exact")  # same weights, softmax

    Args:
        model: the model to edit.
        **favor_kwargs: options of :class:`MultiheadAttentionBase` — ``attention`` ("favor" or
            "exact"), ``num_features``, ``kernel``, ``projection_kind``, ``row_norms``, ``seed``,
            ``redraw_every``, ``chunk_size``. ``layer_index`` is assigned automatically.

    Returns:
        ``model`` itself. ``nn.TransformerEncoder`` modules inside it get ``use_nested_tensor =
        False``: their nested-tensor fast path reads ``nn.MultiheadAttention`` internals and
        would bypass the new modules.
    """
    if "layer_index" in favor_kwargs:
        raise TypeError("layer_index is assigned per replaced module; do not pass it")
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.MultiheadAttention, MultiheadFavorAttention))
    ]
    for index, (name, module) in enumerate(targets):
        if isinstance(module, MultiheadFavorAttention):
            replacement = _rebuild(module, index, favor_kwargs)
        else:
            if module.dropout > 0 and favor_kwargs.get("attention", "favor") == "favor":
                warnings.warn(
                    f"{name}: attention-weight dropout ({module.dropout}) has no FAVOR+ equivalent and is "
                    "not applied by the FAVOR+ backend",
                    stacklevel=2,
                )
            replacement = MultiheadFavorAttention.from_multihead_attention(
                module, layer_index=index, **favor_kwargs
            )
        _set_submodule(model, name, replacement)
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
    return model


def _rebuild(module: MultiheadFavorAttention, index: int, favor_kwargs: dict) -> MultiheadFavorAttention:
    """An already replaced module: only the backend may be switched in place (weights and buffers kept)."""
    other = set(favor_kwargs) - {"attention"}
    if other:
        raise ValueError(
            "module is already a MultiheadFavorAttention; only 'attention' can be changed, "
            f"got {sorted(other)}"
        )
    if "attention" in favor_kwargs:
        module.attention = favor_kwargs["attention"]
    return module


def _set_submodule(model: nn.Module, name: str, replacement: nn.Module) -> None:
    if not name:
        raise ValueError("the model itself is an nn.MultiheadAttention; use MultiheadFavorAttention directly")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, replacement)
