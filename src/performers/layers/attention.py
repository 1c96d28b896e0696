"""Multi-head attention with q/k/v/out projections and a switchable backend (FAVOR+, exact softmax, ...).

Three modules share one implementation (:class:`MultiheadAttentionBase`):

* :class:`PerformerSelfAttention` — self-attention on ``(B, L, E)``, optional rotary positions,
  incremental decoding from a per-layer cache;
* :class:`PerformerCrossAttention` — queries from ``(B, Lq, E)``, keys/values from a memory
  ``(B, Lk, kdim)``;
* :class:`~performers.layers.multihead.MultiheadFavorAttention` — the call signature of
  :class:`torch.nn.MultiheadAttention`, for swapping attention inside existing models (see
  :mod:`performers.layers.replace`).

The backend is one string attribute, ``attention``, one of :data:`ATTENTION_BACKENDS`:
``"favor"`` (FAVOR+), ``"exact"`` (softmax), ``"local"`` (sliding-window softmax, the
efficient-attention baseline) or ``"identity"`` (returns ``V``: an upper bound on the speed of
any attention, for the benchmarks). Every backend uses the same parameters and buffers (every
module owns a :class:`FavorAttention` even when it runs another backend), so one ``state_dict``
loads into any, and a model can be switched between softmax and FAVOR+ in place. The exact
backend calls ``F.scaled_dot_product_attention`` and numerically equals
``nn.MultiheadAttention`` with the same weights.

Masks follow ``nn.MultiheadAttention``: ``key_padding_mask`` ``(B, Lk)`` bool with True = padded
key; ``is_causal`` lets query ``i`` see keys ``j ≤ i``. One deliberate difference: a query
that sees no key at all (e.g. a left-padding position under a causal mask) gets output 0
instead of NaN, so padding never injects NaN into the other positions or into gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from performers.layers.favor import FavorAttention
from performers.layers.favor_config import FavorConfig
from performers.layers.kv_cache import KVCache
from performers.layers.local import band_bias, local_attention
from performers.layers.packed import (
    check_cu_seqlens,
    packed_local_attention,
    packed_position_ids,
    packed_sdpa_attention,
)
from performers.layers.rotary import RotaryEmbedding
from performers.layers.sdpa import sdpa_attention
from performers.ops import FavorState
from performers.utils.validation import is_int

__all__ = [
    "ATTENTION_BACKENDS",
    "LayerCache",
    "MultiheadAttentionBase",
    "PerformerCrossAttention",
    "PerformerSelfAttention",
    "check_padding_mask",
]

# "local" is sliding-window softmax attention (layers/local.py), the efficient-attention baseline;
# "identity" returns V unchanged: the paper's "OPT" model, an upper bound on the speed any
# attention can reach inside a model (used by the benchmarks). (Not the `backend=` of the ops,
# performers.ops.OP_BACKENDS, which picks the implementation of FAVOR attention.)
ATTENTION_BACKENDS = ("favor", "exact", "local", "identity")


LayerCache = FavorState | KVCache


def check_padding_mask(mask: Tensor | None, batch: int, length: int, name: str = "key_padding_mask") -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor (True = padded key), got {kind}")
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} must have shape (B, Lk) = ({batch}, {length}), got {tuple(mask.shape)}")


class MultiheadAttentionBase(nn.Module):
    """Projections ``q_proj, k_proj, v_proj, out_proj``, a :class:`FavorAttention` and the backend switch.

    Args:
        embed_dim: ``E``, model width; split into ``num_heads`` heads of ``E / num_heads``.
        num_heads: number of heads ``H``.
        kdim, vdim: input sizes of keys and values (default ``E``).
        bias: biases in the four projections.
        attention: ``"favor"`` (FAVOR+, linear time), ``"exact"`` (softmax via SDPA) or
            ``"local"`` (softmax over a sliding window of ``window`` keys, a baseline).
        window: the window of ``attention="local"`` (query ``i`` sees ``i − window < j ≤ i``
            when causal, ``|i − j| < window`` otherwise); unused by the other backends.
        dropout: dropout on attention weights, exact backend only (FAVOR+ never forms the
            weights, so there is nothing to drop; it is ignored there).
        favor: the FAVOR options (:class:`~performers.FavorConfig`, default ``FavorConfig()``).
        layer_index: seeds this module's projections (see :class:`FavorAttention`).
        device, dtype: of parameters and buffers.
    """

    # Whether keys come from the queries' own sequence (local attention needs it).
    self_attention = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        attention: str = "favor",
        window: int = 256,
        dropout: float = 0.0,
        favor: FavorConfig | None = None,
        layer_index: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not is_int(window) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        self.window = window
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.favor = FavorAttention(self.head_dim, favor, layer_index=layer_index, **factory)
        self.attention = attention

    @property
    def attention(self) -> str:
        """The backend, ``"favor"``, ``"exact"``, ``"local"`` or ``"identity"``; assignable at any time."""
        return self._attention

    @attention.setter
    def attention(self, value: str) -> None:
        if value not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {value!r}")
        self._attention = value

    def _split_heads(self, x: Tensor) -> Tensor:
        """``(B, L, E)`` → ``(B, H, L, E/H)``."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _merge_heads(self, x: Tensor) -> Tensor:
        """``(B, H, L, E/H)`` → ``(B, L, E)``."""
        return x.transpose(1, 2).flatten(-2)

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        is_causal: bool,
        key_padding_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
        cache: LayerCache | None = None,
        use_cache: bool = False,
        context_group=None,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, LayerCache | None]:
        """Attention on ``(B, H, L, D)`` heads with the selected backend; returns ``(out, cache)``.

        ``context_group``: the heads are this process's shard of a sequence split over a
        process group (FAVOR+ only; see :func:`performers.distributed.favor_attention`).
        ``cu_seqlens``: the heads are one row ``(1, H, T, D)`` of packed sequences (see
        :mod:`performers.layers.packed`); every backend keeps attention within each sequence.
        """
        causal = is_causal
        if cu_seqlens is not None:
            return self._attend_packed(
                q, k, v, cu_seqlens, is_causal=causal, key_padding_mask=key_padding_mask,
                attn_bias=attn_bias, cache=cache, use_cache=use_cache, context_group=context_group,
            ), None  # fmt: skip
        if (cache is not None or use_cache) and not causal:
            raise ValueError(
                "incremental decoding (cache / use_cache) needs causal attention (is_causal=True)"
            )
        if context_group is not None and self.attention != "favor":
            raise ValueError(
                f"context parallelism needs FAVOR attention, this module uses {self.attention!r}: "
                "exact attention over a sharded sequence would need every key on every process "
                "(ring attention); use attention='favor'"
            )
        if self.attention == "identity":
            if cache is not None or use_cache:
                raise ValueError("the identity backend (a benchmark baseline) has no decoding cache")
            return v, None
        if self.attention == "favor":
            if attn_bias is not None:
                raise ValueError(
                    "FAVOR+ attention cannot apply an arbitrary attention mask; only key padding and "
                    "causal masking are supported (use attention='exact' for other masks)"
                )
            if cache is None and not use_cache:
                out = self.favor(
                    q, k, v, is_causal=causal, key_padding_mask=key_padding_mask, context_group=context_group
                )
                return out, None
            if cache is not None and not isinstance(cache, FavorState):
                raise TypeError(f"the FAVOR+ backend continues from a FavorState, got {type(cache).__name__}")
            if cache is not None and q.shape[2] == 1 and key_padding_mask is None and context_group is None:
                return self.favor.step(q, k, v, cache)
            return self.favor(
                q,
                k,
                v,
                is_causal=True,
                key_padding_mask=key_padding_mask,
                initial_state=cache,
                return_state=True,
                context_group=context_group,
            )

        local = self.attention == "local"
        if local and (not self.self_attention or attn_bias is not None):
            raise ValueError(
                f"local attention is self-attention with key padding and causal masks only; "
                f"{type(self).__name__} got "
                + ("an attn_bias" if attn_bias is not None else "keys from another sequence")
                + ": use attention='exact' for these"
            )
        if local and cache is None and not use_cache:
            out = local_attention(
                q,
                k,
                v,
                window=self.window,
                is_causal=causal,
                key_padding_mask=key_padding_mask,
                dropout_p=self.dropout if self.training else 0.0,
                scale=self.favor.scale,
            )
            return out, None
        past_length = 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(
                    f"the {self.attention} backend continues from a KVCache, got {type(cache).__name__}"
                )
            past_length = cache.length
            cache.append(k, v, key_padding_mask)
            k, v, key_padding_mask = cache.key, cache.value, cache.key_padding_mask
        elif use_cache:
            cache = KVCache(k, v, key_padding_mask)
        if local and q.shape[2] == 1:  # one new token: it sees the last `window` keys, O(window)
            k, v = k[:, :, -self.window :], v[:, :, -self.window :]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask[:, -self.window :]
            past_length = k.shape[2] - 1
        elif local:  # a prompt continuing a cache: the band of the cached keys each query sees
            attn_bias = band_bias(
                q.shape[2],
                k.shape[2],
                self.window,
                causal=True,
                past_length=past_length,
                device=q.device,
                dtype=q.dtype,
            )
        out = sdpa_attention(
            q,
            k,
            v,
            is_causal=causal,
            key_padding_mask=key_padding_mask,
            attn_bias=attn_bias,
            past_length=past_length,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.favor.scale,
        )
        return out, cache

    def _attend_packed(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cu_seqlens: Tensor,
        *,
        is_causal: bool,
        key_padding_mask: Tensor | None,
        attn_bias: Tensor | None,
        cache: LayerCache | None,
        use_cache: bool,
        context_group,
    ) -> Tensor:
        """Packed sequences with the selected backend, each sequence attending within itself only."""
        refused = {
            "key_padding_mask": key_padding_mask is not None,
            "attn_bias": attn_bias is not None,
            "cache / use_cache": cache is not None or use_cache,
            "context_group": context_group is not None,
        }
        given = [name for name, present in refused.items() if present]
        if given:
            raise ValueError(
                f"packed sequences (cu_seqlens) take no {', '.join(given)}: the boundaries replace "
                "padding, and decoding or context parallelism runs one sequence per row"
            )
        if not self.self_attention:
            raise ValueError(f"packed sequences (cu_seqlens) need self-attention, not {type(self).__name__}")
        dropout_p = self.dropout if self.training else 0.0
        if self.attention == "identity":
            return v
        if self.attention == "favor":
            return self.favor(q, k, v, is_causal=is_causal, cu_seqlens=cu_seqlens)
        if self.attention == "local":
            return packed_local_attention(
                q, k, v, cu_seqlens, window=self.window, is_causal=is_causal, dropout_p=dropout_p,
                scale=self.favor.scale,
            )  # fmt: skip
        return packed_sdpa_attention(
            q, k, v, cu_seqlens, is_causal=is_causal, dropout_p=dropout_p, scale=self.favor.scale
        )

    @torch.no_grad()
    def load_multihead_attention_weights(self, mha: nn.MultiheadAttention) -> None:
        """Copy the projections of an ``nn.MultiheadAttention`` with the same sizes into this module."""
        if (mha.embed_dim, mha.num_heads, mha.kdim, mha.vdim) != (
            self.embed_dim,
            self.num_heads,
            self.kdim,
            self.vdim,
        ):
            raise ValueError(
                "sizes differ: nn.MultiheadAttention has (embed_dim, num_heads, kdim, vdim) = "
                f"{(mha.embed_dim, mha.num_heads, mha.kdim, mha.vdim)}, this module "
                f"{(self.embed_dim, self.num_heads, self.kdim, self.vdim)}"
            )
        if mha.bias_k is not None or mha.add_zero_attn:
            raise NotImplementedError("add_bias_kv and add_zero_attn are not supported")
        if (mha.in_proj_bias is None) != (self.q_proj.bias is None):
            raise ValueError("bias differs: one module has projection biases and the other does not")
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = (None, None, None) if mha.in_proj_bias is None else mha.in_proj_bias.chunk(3)
        for proj, weight, bias in zip((self.q_proj, self.k_proj, self.v_proj), weights, biases, strict=True):
            proj.weight.copy_(weight)
            if bias is not None:
                proj.bias.copy_(bias)
        self.out_proj.weight.copy_(mha.out_proj.weight)
        if self.out_proj.bias is not None:
            self.out_proj.bias.copy_(mha.out_proj.bias)

    def extra_repr(self) -> str:
        window = f", window={self.window}" if self.attention == "local" else ""
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, attention={self.attention!r}{window}"


class PerformerSelfAttention(MultiheadAttentionBase):
    """Multi-head self-attention on ``(B, L, E)`` with optional rotary positions and decoding cache.

    Args:
        embed_dim, num_heads: see :class:`MultiheadAttentionBase` (other keywords too).
        rotary: rotate queries and keys by their positions (RoPE) before attention.
        rotary_base: RoPE frequency base.
    """

    self_attention = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        rotary: bool = False,
        rotary_base: float = 10000.0,
        **kwargs,
    ) -> None:
        if "kdim" in kwargs or "vdim" in kwargs:
            raise TypeError("self-attention has kdim = vdim = embed_dim; use PerformerCrossAttention")
        super().__init__(embed_dim, num_heads, **kwargs)
        self.rotary = RotaryEmbedding(self.head_dim, rotary_base) if rotary else None

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        position_ids: Tensor | None = None,
        cache: LayerCache | None = None,
        use_cache: bool = False,
        context_group=None,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, LayerCache | None]:
        """Self-attention.

        Args:
            x: ``(B, L, E)``.
            key_padding_mask: ``(B, L)`` bool, True = padded position (ignored as a key).
            is_causal: position ``i`` attends to positions ``≤ i`` only.
            position_ids: ``(B, L)`` int positions for rotary embedding (default ``0..L-1``;
                required with rotary when continuing from a cache).
            cache: the layer's cache from an earlier call (causal only); ``x`` continues it.
            use_cache: return the cache after these positions (a :class:`FavorState` for FAVOR+,
                a :class:`KVCache` for exact attention).
            context_group: ``x`` is this process's shard of the sequence (context parallelism,
                FAVOR+ only); give rotary ``position_ids`` in the whole sequence.
            cu_seqlens: ``x`` is one row ``(1, T, E)`` of packed sequences, int ``(N + 1,)``
                offsets from 0 to ``T`` (:mod:`performers.layers.packed`): no position attends
                across a boundary, and rotary positions (default) restart at 0 in each sequence.

        Returns:
            ``(out (B, L, E), cache or None)``.
        """
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x must have shape (B, L, E) with E = {self.embed_dim}, got {tuple(x.shape)}")
        b, length, _ = x.shape
        check_padding_mask(key_padding_mask, b, length)
        if cu_seqlens is not None:
            if b != 1:
                raise ValueError(
                    f"packed sequences (cu_seqlens) come in one row, x of shape (1, T, E); got B = {b}"
                )
            check_cu_seqlens(cu_seqlens, length)
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        if self.rotary is not None:
            if position_ids is None:
                if cache is not None:
                    raise ValueError(
                        "position_ids are required with rotary positions when continuing a cache"
                    )
                position_ids = (
                    torch.arange(length, device=x.device).expand(b, length)
                    if cu_seqlens is None
                    else packed_position_ids(cu_seqlens, length)
                )
            q, k = self.rotary(q, k, position_ids)
        out, cache = self._attend(
            q,
            k,
            v,
            is_causal=is_causal,
            key_padding_mask=key_padding_mask,
            cache=cache,
            use_cache=use_cache,
            context_group=context_group,
            cu_seqlens=cu_seqlens,
        )
        return self.out_proj(self._merge_heads(out)), cache

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rotary={self.rotary is not None}"


class PerformerCrossAttention(MultiheadAttentionBase):
    """Multi-head cross-attention.

    Queries come from ``x`` ``(B, Lq, E)``, keys and values from ``memory`` ``(B, Lk, memory_dim)``
    (an encoder's output; ``memory_dim`` defaults to ``E``).
    """

    def __init__(self, embed_dim: int, num_heads: int, *, memory_dim: int | None = None, **kwargs) -> None:
        if "kdim" in kwargs or "vdim" in kwargs:
            raise TypeError("cross-attention reads keys and values from one memory; pass memory_dim")
        super().__init__(embed_dim, num_heads, kdim=memory_dim, vdim=memory_dim, **kwargs)

    def forward(self, x: Tensor, memory: Tensor, *, memory_key_padding_mask: Tensor | None = None) -> Tensor:
        """Returns ``(B, Lq, E)``; ``memory_key_padding_mask`` ``(B, Lk)`` bool, True = padded."""
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x must have shape (B, Lq, E) with E = {self.embed_dim}, got {tuple(x.shape)}")
        if memory.dim() != 3 or memory.shape[0] != x.shape[0] or memory.shape[-1] != self.kdim:
            raise ValueError(
                f"memory must have shape (B, Lk, memory_dim) = ({x.shape[0]}, Lk, {self.kdim}), "
                f"got {tuple(memory.shape)}"
            )
        check_padding_mask(
            memory_key_padding_mask, memory.shape[0], memory.shape[1], "memory_key_padding_mask"
        )
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(memory))
        v = self._split_heads(self.v_proj(memory))
        out, _ = self._attend(q, k, v, is_causal=False, key_padding_mask=memory_key_padding_mask)
        return self.out_proj(self._merge_heads(out))
