"""The pieces of a Performer Transformer: pre-LayerNorm block, feed-forward network, LM head,
and the token loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from performers.layers import LayerCache, PerformerSelfAttention
from performers.models.config import PerformerConfig
from performers.utils import IGNORE_INDEX

__all__ = ["FeedForward", "LMHead", "PerformerBlock", "token_loss"]


def token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits`` ``(N, V)`` against ``labels`` ``(N,)``, -100 ignored.

    Half-precision logits are upcast to float32 first (a softmax over a large vocabulary in
    float16 loses most of the small probabilities); float32/float64 stay as they are.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class FeedForward(nn.Module):
    """Position-wise ``Linear(E, d_ff) → activation → dropout → Linear(d_ff, E)`` on ``(B, L, E)``."""

    def __init__(self, config: PerformerConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.activation = _ACTIVATIONS[config.activation]()
        self.dropout = nn.Dropout(config.dropout)
        self.fc_out = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.dropout(self.activation(self.fc_in(x))))


class PerformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x + Attn(LN(x))``, then ``x + FFN(LN(x))``, dropout on both branches."""

    def __init__(self, config: PerformerConfig, layer_index: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = PerformerSelfAttention(
            config.d_model,
            config.num_heads,
            rotary=config.position == "rotary",
            rotary_base=config.rotary_base,
            bias=config.bias,
            attention=config.attention,
            window=config.attention_window,
            favor=config.favor,
            layer_index=layer_index,
        )
        self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

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
        """``x``: ``(B, L, E)`` → ``((B, L, E), cache)``; arguments as in :class:`PerformerSelfAttention`."""
        attended, cache = self.attn(
            self.attn_norm(x),
            key_padding_mask=key_padding_mask,
            is_causal=is_causal,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            context_group=context_group,
            cu_seqlens=cu_seqlens,
        )
        x = x + self.dropout(attended)
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, cache


class LMHead(nn.Module):
    """Hidden states ``(B, L, E)`` → logits ``(B, L, V)``.

    With tied embeddings the module has no weight of its own and multiplies by the token
    embedding matrix it is given; the checkpoint then holds that matrix once (safetensors
    refuses tensors that share memory, and a second copy could silently drift).
    """

    def __init__(self, d_model: int, vocab_size: int, *, tied: bool, bias: bool) -> None:
        super().__init__()
        if tied:
            self.register_parameter("weight", None)
        else:
            self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    def forward(self, hidden: Tensor, embedding_weight: Tensor) -> Tensor:
        weight = embedding_weight if self.weight is None else self.weight
        return F.linear(hidden, weight, self.bias)
