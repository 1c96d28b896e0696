"""Swap ``nn.MultiheadAttention`` modules of an existing model for FAVOR+ attention."""

from __future__ import annotations

import warnings

from torch import nn

from performers.layers.favor_config import FavorConfig
from performers.layers.multihead import AttentionDropoutWarning, MultiheadFavorAttention

__all__ = ["replace_multihead_attention"]


def replace_multihead_attention(
    model: nn.Module, favor: FavorConfig | None = None, *, attention: str = "favor"
) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` in ``model`` by a :class:`MultiheadFavorAttention`, in place.

    Each replacement copies the ``in_proj``/``out_proj`` weights and options (``batch_first``,
    ``dropout``, device, dtype) of the module it replaces (with ``attention="favor"``, a module
    with attention dropout gets an :class:`AttentionDropoutWarning` naming it: FAVOR+ cannot
    apply that dropout) and gets ``layer_index`` = its order
    of appearance in ``model.named_modules()``, so its projection is distinct and reproducible.

    Example::

        layer = nn.TransformerEncoderLayer(64, 4, batch_first=True)
        encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        replace_multihead_attention(encoder, FavorConfig(num_features=128, seed=0))
        replace_multihead_attention(encoder, attention="exact")  # same weights, softmax

    Args:
        model: the model to edit.
        favor: the FAVOR options of the new modules (default ``FavorConfig()``). Modules that
            are already :class:`MultiheadFavorAttention` keep theirs (passing ``favor`` for them
            is an error): only their backend is switched.
        attention: the backend, ``"favor"`` or ``"exact"`` (softmax with the same weights).

    Returns:
        ``model`` itself. ``nn.TransformerEncoder`` modules inside it get ``use_nested_tensor =
        False``: their nested-tensor fast path reads ``nn.MultiheadAttention`` internals and
        would bypass the new modules.
    """
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.MultiheadAttention, MultiheadFavorAttention))
    ]
    for index, (name, module) in enumerate(targets):
        if isinstance(module, MultiheadFavorAttention):
            if favor is not None:
                raise ValueError(
                    f"{name or 'model'} is already a MultiheadFavorAttention; only its backend "
                    "(attention=...) can be switched, not its FavorConfig"
                )
            module.attention = attention
            continue
        if module.dropout > 0 and attention == "favor":
            warnings.warn(
                f"{name}: attention-weight dropout ({module.dropout}) has no FAVOR+ equivalent and is "
                "not applied by the FAVOR+ backend",
                AttentionDropoutWarning,
                stacklevel=2,
            )
        with warnings.catch_warnings():
            # Said above with the module's name; the new module's own warning would repeat it.
            warnings.simplefilter("ignore", AttentionDropoutWarning)
            replacement = MultiheadFavorAttention.from_multihead_attention(
                module, attention=attention, favor=favor, layer_index=index
            )
        _set_submodule(model, name, replacement)
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
    return model


def _set_submodule(model: nn.Module, name: str, replacement: nn.Module) -> None:
    if not name:
        raise ValueError("the model itself is an nn.MultiheadAttention; use MultiheadFavorAttention directly")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, replacement)
