"""``MultiheadFavorAttention``: a drop-in replacement for :class:`torch.nn.MultiheadAttention`
with a FAVOR+ (or exact) backend, and the conversion of its masks."""

from __future__ import annotations

import sys
import warnings

import torch
from torch import Tensor, nn

from performers.layers.attention import MultiheadAttentionBase, check_padding_mask
from performers.layers.favor_config import FavorConfig

__all__ = ["AttentionDropoutWarning", "MultiheadFavorAttention"]


class AttentionDropoutWarning(UserWarning):
    """Attention-weight dropout was asked of the FAVOR+ backend, which cannot apply it."""


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised in ``__init__`` at the code that built the
    module: past this module's frames (``from_multihead_attention`` calls ``__init__`` too)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _is_causal_mask(mask: Tensor, lq: int, lk: int) -> bool:
    """Whether an ``nn.MultiheadAttention`` ``attn_mask`` is exactly the causal mask."""
    if mask.dim() != 2 or tuple(mask.shape) != (lq, lk) or lq != lk:
        return False
    future = torch.ones(lq, lk, dtype=torch.bool, device=mask.device).triu(diagonal=1)
    if mask.dtype == torch.bool:
        return bool(torch.equal(mask, future))
    return bool(torch.equal(torch.isneginf(mask), future) and (mask.masked_fill(future, 0.0) == 0).all())


def _additive_attn_mask(mask: Tensor, batch: int, heads: int, lq: int, lk: int, dtype: torch.dtype) -> Tensor:
    """``attn_mask`` of ``nn.MultiheadAttention`` (``(Lq, Lk)`` or ``(B·H, Lq, Lk)``) as an additive bias."""
    if mask.dim() == 2:
        if tuple(mask.shape) != (lq, lk):
            raise ValueError(
                f"2-D attn_mask must have shape (Lq, Lk) = ({lq}, {lk}), got {tuple(mask.shape)}"
            )
        mask = mask[None, None]
    elif mask.dim() == 3:
        if tuple(mask.shape) != (batch * heads, lq, lk):
            raise ValueError(
                f"3-D attn_mask must have shape (B·H, Lq, Lk) = ({batch * heads}, {lq}, {lk}), "
                f"got {tuple(mask.shape)}"
            )
        mask = mask.view(batch, heads, lq, lk)
    else:
        raise ValueError(f"attn_mask must be 2-D or 3-D, got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class MultiheadFavorAttention(MultiheadAttentionBase):
    """Drop-in replacement for :class:`torch.nn.MultiheadAttention` with a FAVOR+ (or exact) backend.

    Same constructor arguments and ``forward`` signature as ``nn.MultiheadAttention`` plus the
    keywords ``attention``, ``favor`` (a :class:`~performers.FavorConfig`) and ``layer_index``;
    build one from an existing module with :meth:`from_multihead_attention`. Differences:
    attention weights are never returned (FAVOR+ never forms them; the second output is always
    None), ``add_bias_kv``/``add_zero_attn`` are not supported, and with FAVOR+ ``attn_mask`` may
    only be the causal mask and a float ``key_padding_mask`` only hold 0 and ``-inf``.

    ``dropout`` (on attention weights) is applied by the exact and local backends only: FAVOR+
    never forms the weights, so it has nothing to drop. Building one with ``dropout > 0`` and
    ``attention="favor"`` warns (:class:`AttentionDropoutWarning`, as
    :func:`~performers.layers.replace_multihead_attention` does for the modules it replaces)
    rather than refusing: the same module, weights and ``dropout`` serve the exact backend, to
    which ``attention`` can be switched at any time (a distillation teacher, a comparison).
    """

    # nn.TransformerEncoderLayer / nn.TransformerEncoder read these attributes of their
    # ``self_attn`` to pick a fused fast path that bypasses ``self_attn.forward``. These values
    # rule the fast path out, so the layer calls this module.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        attention: str = "favor",
        favor: FavorConfig | None = None,
        layer_index: int = 0,
    ) -> None:
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError("add_bias_kv and add_zero_attn are not supported")
        super().__init__(
            embed_dim,
            num_heads,
            kdim=kdim,
            vdim=vdim,
            bias=bias,
            dropout=dropout,
            attention=attention,
            favor=favor,
            layer_index=layer_index,
            device=device,
            dtype=dtype,
        )
        self.batch_first = batch_first
        if dropout > 0 and attention == "favor":
            warnings.warn(
                f"MultiheadFavorAttention: attention-weight dropout ({dropout}) has no FAVOR+ "
                "equivalent and is not applied by the FAVOR+ backend (the exact and local backends "
                "apply it); pass dropout=0.0 to silence this",
                AttentionDropoutWarning,
                stacklevel=_caller_stacklevel(),
            )

    @classmethod
    def from_multihead_attention(
        cls,
        mha: nn.MultiheadAttention,
        *,
        attention: str = "favor",
        favor: FavorConfig | None = None,
        layer_index: int = 0,
    ) -> MultiheadFavorAttention:
        """A module with the sizes, options and weights of ``mha``, running ``attention`` with
        the FAVOR options ``favor``."""
        weight = mha.out_proj.weight
        module = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            add_bias_kv=mha.bias_k is not None,
            add_zero_attn=mha.add_zero_attn,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
            device=weight.device,
            dtype=weight.dtype,
            attention=attention,
            favor=favor,
            layer_index=layer_index,
        )
        module.load_multihead_attention_weights(mha)
        module.train(mha.training)
        return module

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        """``nn.MultiheadAttention.forward``: ``(L, B, E)`` inputs, or ``(B, L, E)`` with ``batch_first``.

        Args:
            query: ``(Lq, B, E)``; key: ``(Lk, B, kdim)``; value: ``(Lk, B, vdim)`` (batch first
                when ``batch_first``; unbatched ``(L, E)`` also accepted).
            key_padding_mask: ``(B, Lk)``, bool True = padded, or float added to the logits.
            need_weights, average_attn_weights: accepted for compatibility; no weights are returned.
            attn_mask: ``(Lq, Lk)`` or ``(B·H, Lq, Lk)``, bool True = blocked or float additive.
            is_causal: causal attention; ``attn_mask`` is then taken to be the causal mask (as
                the ``nn.MultiheadAttention`` hint says) and need not be given.

        Returns:
            ``(attn_output, None)``, ``attn_output`` shaped like ``query``.
        """
        del need_weights, average_attn_weights
        self._check_inputs(query, key, value)
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, lq, _ = query.shape
        lk = key.shape[1]

        causal = bool(is_causal)
        attn_bias = None
        if attn_mask is not None and not causal:
            if self.attention == "favor":
                if not _is_causal_mask(attn_mask, lq, lk):
                    raise ValueError(
                        "FAVOR+ attention supports attn_mask only when it is the causal mask; "
                        "use attention='exact' for other masks"
                    )
                causal = True
            else:
                attn_bias = _additive_attn_mask(attn_mask, b, self.num_heads, lq, lk, query.dtype)

        padding = key_padding_mask
        if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
            if self.attention == "favor":
                blocked = torch.isneginf(key_padding_mask)
                if bool((key_padding_mask.masked_fill(blocked, 0.0) != 0).any()):
                    raise ValueError(
                        "FAVOR+ attention accepts a float key_padding_mask only with values 0 and -inf"
                    )
                padding = blocked
            else:
                extra = key_padding_mask.to(query.dtype)[:, None, None, :]
                attn_bias = extra if attn_bias is None else attn_bias + extra
                padding = None
        check_padding_mask(padding, b, lk)

        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        out, _ = self._attend(q, k, v, is_causal=causal, key_padding_mask=padding, attn_bias=attn_bias)
        out = self.out_proj(self._merge_heads(out))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, None

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        """Sizes as ``nn.MultiheadAttention`` expects them: a ValueError naming the expected size
        (``embed_dim``, ``kdim``, ``vdim``) and the one given, before any projection runs."""
        if query.dim() not in (2, 3):
            raise ValueError(
                f"query must be (L, E), (L, B, E) or with batch_first (B, L, E), got {tuple(query.shape)}"
            )
        for name, t, size, option in (
            ("query", query, self.embed_dim, "embed_dim"),
            ("key", key, self.kdim, "kdim"),
            ("value", value, self.vdim, "vdim"),
        ):
            if t.dim() != query.dim():
                raise ValueError(
                    f"query, key and value must have the same number of dimensions; got query "
                    f"{tuple(query.shape)}, {name} {tuple(t.shape)}"
                )
            if t.shape[-1] != size:
                raise ValueError(
                    f"was expecting {name} embedding dimension of {size} ({option} of this "
                    f"module), but got {t.shape[-1]} ({name} of shape {tuple(t.shape)})"
                )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", batch_first={self.batch_first}"
