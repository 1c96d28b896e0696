"""``FavorCache``: a Hugging Face ``transformers`` cache holding one FAVOR+ recurrent state per
layer instead of growing keys and values (constant cost per decoded token)."""

from __future__ import annotations

import contextvars
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from performers.ops import FavorState

__all__ = ["FavorCache", "FavorCacheLayer", "take_pending"]


# The FavorCacheLayer updated last (in this thread/context) and the key tensor it returned:
# the attention function that receives that very tensor owns the update.
_PENDING: contextvars.ContextVar[tuple[FavorCacheLayer, Tensor] | None] = contextvars.ContextVar(
    "performers_favor_pending", default=None
)


_ADVICE = "a FavorCache continues one batch of sequences: pass a new FavorCache() (or call cache.reset())"


class FavorCacheLayer(CacheLayerMixin):
    """One layer of :class:`FavorCache`: the FAVOR+ recurrent state instead of keys and values.

    ``update`` stores nothing but returns the new keys/values unchanged and records, in a
    context variable, the pair (this layer, that key tensor). HF attention modules pass the
    tensors ``update`` returned straight to the attention function, so the ``"favor"``
    attention function that receives *that very tensor* (an identity check, no guessing)
    continues this layer's :class:`FavorState`
    (``kv (B, H, M', D)``, ``normalizer (B, H, M')``, ``log_offset (B, H)``, FAVOR++'s
    ``kernel_params (B, H)`` and the kernel's name; ``H`` the query heads also under
    grouped-query attention) and stores the
    result. The state's size does not depend on the number of tokens seen.

    A cache continues the sequences it has seen (as every HF cache does): reusing it for another
    batch, or for a call that adds no position, is a ``ValueError`` saying so — pass a new
    :class:`FavorCache` (or call ``cache.reset()``) for each new ``generate()`` call. A call
    that fails leaves the state as it was before the call.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.state: FavorState | None = None
        self.seen = 0
        self._pending: Tensor | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """Register ``key_states (B, Hkv, Lnew, D)`` for the next attention call; returns them."""
        if self._pending is not None:
            raise RuntimeError(
                "FavorCache was updated twice without a 'favor' attention call in between: it only works "
                "with attn_implementation='favor'"
            )
        self._check_continues(key_states)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._pending = key_states
        _PENDING.set((self, key_states))
        return key_states, value_states

    def _check_continues(self, key_states: Tensor) -> None:
        """Refuse keys that cannot continue this state (a reused cache), before any reshape fails."""
        if key_states.dim() != 4 or key_states.shape[-2] == 0:
            raise ValueError(
                f"FavorCache: no new position to add (keys of shape {tuple(key_states.shape)}; the cache "
                f"has seen {self.seen} tokens and input_ids must extend them); {_ADVICE}"
            )
        if self.state is not None and self.state.kv.shape[0] != key_states.shape[0]:
            raise ValueError(
                f"FavorCache: it holds the state of {self.state.kv.shape[0]} sequence(s) ({self.seen} tokens "
                f"seen), this call has a batch of {key_states.shape[0]}; {_ADVICE}"
            )

    def abandon(self) -> None:
        """Forget the pending keys of a call that failed (the state is still that before it)."""
        self._pending = None

    def commit(self, state: FavorState, new_tokens: int) -> None:
        """Store the state after the pending keys (called by the attention function)."""
        self.state = state
        self.seen += new_tokens
        self._pending = None

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.state = None
        self.seen = 0
        self._pending = None

    def _map_state(self, fn) -> None:
        if self.state is not None:
            # Tensors only: kernel_params may be None and the state records its kernel's name.
            self.state = FavorState(*(fn(t) if isinstance(t, Tensor) else t for t in self.state))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_state(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_state(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map_state(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise NotImplementedError(
                "FavorCache keeps a running sum, not the keys: tokens cannot be removed "
                "(assisted decoding / cache cropping is not supported)"
            )

    def offload(self) -> None:  # nothing large to move
        return None

    def prefetch(self) -> None:
        return None


class FavorCache(Cache):
    """A ``transformers`` cache holding one :class:`FavorCacheLayer` (recurrent state) per layer.

    Use it for decoding with the ``"favor"`` attention: ``model.generate(ids, cache=FavorCache())``
    (``past_key_values=`` in transformers < 5) or ``model(ids, cache=FavorCache(), use_cache=True)``.
    Per-token cost and memory are constant in the context length. One cache per ``generate()``
    call: it keeps a running sum, not the tokens, so it cannot check that a later call's
    ``input_ids`` start with the tokens it has seen; another batch size is refused with a
    ``ValueError``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(layer_class_to_replicate=FavorCacheLayer)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        # The model asks for the mask sizes before any attention module reshapes its inputs: the
        # place to refuse a call with no new position (``generate()`` with a cache that has seen
        # as many tokens as the prompt holds) before it becomes a reshape error.
        if isinstance(query_length, int) and query_length == 0:
            raise ValueError(
                f"FavorCache: no new position to add (the cache has seen {self.get_seq_length()} tokens "
                f"and input_ids must extend them); {_ADVICE}"
            )
        return super().get_mask_sizes(query_length, layer_idx)


def take_pending(key: Tensor) -> FavorCacheLayer | None:
    entry = _PENDING.get()
    if entry is None or entry[1] is not key:
        return None
    _PENDING.set(None)
    return entry[0]
