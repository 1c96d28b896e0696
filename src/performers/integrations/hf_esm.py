"""ESM (``model_type "esm"``: ESM-2, ESM-1b) under the ``"favor"`` attention of Hugging Face
``transformers``: what differs from the BERT-like families.

Two things in ``transformers``' ``EsmSelfAttention`` need care, and nothing else does (its
padding goes through the same key-padding mask as BERT's; its token-dropout rescaling of the
embeddings happens before any attention and is left exactly as the checkpoint defines it):

* **No layer index.** ESM builds its attention modules without ``layer_idx``, but FAVOR+
  projections are seeded per layer (``(seed, layer, draw)``), so that a reloaded model draws the
  same ones. :func:`number_layers` sets ``layer_idx`` from the module's place in
  ``encoder.layer``; :func:`install` makes every ESM encoder built afterwards number its own
  modules (it wraps ``EsmEncoder.__init__``; the attribute it sets is one HF's ESM code stores
  and never reads), so ``from_pretrained(path, attn_implementation="favor")`` needs no extra
  call. :func:`~performers.integrations.transformers.performerize` numbers the modules of models
  built before the import.
* **Pre-scaled queries.** ESM multiplies the queries by ``head_dim ** -0.5`` *before* the rotary
  embedding and calls the attention function with ``scaling=1.0``. ``exp(q'ᵀk · 1.0)`` is then
  the right softmax logit, but FAVOR+ maps ``√scale·q'`` and ``√scale·k`` to random features,
  and the estimator's variance grows like ``exp(‖q̃ + k̃‖²)`` of the two inputs it sees: with
  ``q'`` shrunk by ``1/√D`` and ``k`` not at all, ``‖k‖²`` enters whole instead of as
  ``‖k‖²/√D``. :func:`favor_query` undoes the pre-scaling (``q = q'·√D``, exact for a power of
  two ``D``, one rounding otherwise) and passes ``scale = 1/√D`` instead, which gives the same
  logits ``scale·qᵀk = q'ᵀk`` and the balanced ``q·D^(-1/4)``, ``k·D^(-1/4)`` of every other
  family.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import Tensor, nn

__all__ = ["ATTENTION_CLASS", "favor_query", "install", "number_layers"]

ATTENTION_CLASS = "EsmSelfAttention"


def _is_esm_attention(module: nn.Module) -> bool:
    return type(module).__name__ == ATTENTION_CLASS


def number_layers(root: nn.Module) -> None:
    """Set ``layer_idx`` of every ESM attention module under ``root`` that has none.

    The self-attention of ``encoder.layer[i]`` gets ``i``; a decoder's cross-attention
    (``crossattention.self``) gets ``i`` too and is marked ``is_cross_attention`` (the backend
    then draws it a projection of its own, as for BERT's cross-attention).
    """
    for name, module in root.named_modules():
        if not _is_esm_attention(module) or isinstance(getattr(module, "layer_idx", None), int):
            continue
        parts = name.split(".")
        # ...layer.<i>.attention.self / ...layer.<i>.crossattention.self
        if len(parts) < 4 or parts[-1] != "self" or parts[-4] != "layer" or not parts[-3].isdigit():
            continue  # not inside an encoder stack: _layer_index says so if it is ever used
        module.layer_idx = int(parts[-3])
        if parts[-2] == "crossattention":
            module.is_cross_attention = True


def install() -> None:
    """Make ESM encoders built from now on number their attention modules (idempotent)."""
    try:
        from transformers.models.esm import modeling_esm
    except ImportError:  # pragma: no cover - a transformers without ESM
        return
    encoder = modeling_esm.EsmEncoder
    if getattr(encoder.__init__, "_performers_numbers_layers", False):
        return
    original = encoder.__init__

    @functools.wraps(original)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        number_layers(self)

    __init__._performers_numbers_layers = True
    encoder.__init__ = __init__


def favor_query(module: nn.Module, query: Tensor, scaling: float | None) -> tuple[Tensor, float | None]:
    """``(query, scale)`` to give FAVOR+ for the attention ``module`` (unchanged but for ESM).

    For an ESM attention module called with ``scaling == 1.0`` (its queries pre-scaled by
    ``head_dim ** -0.5``, as ``transformers``' ``EsmSelfAttention`` does): the unscaled queries
    and ``scale = head_dim ** -0.5``, the same logits with balanced FAVOR+ inputs (module
    docstring). Any other call is returned as it came.
    """
    if not _is_esm_attention(module) or scaling != 1.0:
        return query, scaling
    prescale = query.shape[-1] ** -0.5
    return query / prescale, prescale
