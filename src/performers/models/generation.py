"""Autoregressive generation for :class:`PerformerForCausalLM` with a constant-cost decoding step.

The prompt is processed once by the parallel path (chunked causal FAVOR+, which also returns
each layer's recurrent state); every further token is one call of the model on a single
position, which updates the per-layer states with :func:`~performers.favor_attention_step`.
The work per token is ``O(num_layers · M · D)``, independent of how long the context is. With
the exact backend (``config.attention == "exact"``) the same loop uses a key/value cache, whose
per-token cost grows with the context: it is the baseline the benchmark compares against.

Batches use **left padding** (``attention_mask`` 0 = padding, all padding before the tokens):
the padding is masked as keys in the prompt pass, positions count from each row's first real
token, and all rows then append their new tokens in the same column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from performers.models.masks import position_ids_from_padding
from performers.ops import flush_underflow_warnings
from performers.utils.validation import is_int

__all__ = ["GenerationMixin", "generate", "sample_next_token"]


class GenerationMixin:
    """Adds :meth:`generate` to a causal LM whose forward takes ``key_padding_mask``,
    ``position_ids``, ``past_key_values``, ``use_cache`` and ``logits_to_keep``
    (:class:`~performers.PerformerForCausalLM`)."""

    def generate(self, input_ids: Tensor, **kwargs) -> Tensor:
        """Autoregressive generation; see :func:`performers.models.generation.generate`."""
        return generate(self, input_ids, **kwargs)


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {temperature!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be > 0 and finite, got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def sample_next_token(
    logits: Tensor,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Choose one token per row from next-token ``logits`` ``(B, V)``; returns ``(B,)`` int64.

    Greedy (``argmax``, first index on ties) unless ``do_sample``. Sampling divides by
    ``temperature``, keeps the ``top_k`` largest logits, then the smallest set of tokens whose
    probability reaches ``top_p`` (nucleus), and draws from what is left with ``generator``.
    """
    _check_sampling(temperature, top_k, top_p)
    if not do_sample:
        return logits.argmax(dim=-1)
    scores = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth_largest = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        # A token is dropped when the more likely tokens already reach top_p; the most likely
        # token has mass_before = 0 < top_p, so at least one token always survives.
        drop_sorted = mass_before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _eos_ids(eos_token_id: int | Sequence[int] | None, device: torch.device) -> Tensor | None:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not ids or any(not is_int(i) or i < 0 for i in ids):
        raise ValueError(f"eos_token_id must be an int >= 0 or a list of them, got {eos_token_id!r}")
    return torch.tensor(ids, dtype=torch.long, device=device)


def _left_padding(attention_mask: Tensor | None, input_ids: Tensor) -> Tensor | None:
    """``(B, L)`` bool padding (True = pad) after checking the mask is left padding, or None."""
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    real = attention_mask != 0
    if not bool(real[:, -1].all()):
        raise ValueError(
            "generate needs left padding: every row's last prompt position must be a token "
            "(attention_mask 0 only before the tokens)"
        )
    if bool((real[:, :-1] & ~real[:, 1:]).any()):
        raise ValueError("generate needs left padding: attention_mask has a 0 after a 1 in some row")
    padding = ~real
    return padding if bool(padding.any()) else None


@torch.no_grad()
def generate(
    model: GenerationMixin,
    input_ids: Tensor,
    max_new_tokens: int = 20,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    attention_mask: Tensor | None = None,
    max_length: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue ``input_ids`` token by token from the per-layer recurrent state.

    Args:
        model: a :class:`PerformerForCausalLM` (FAVOR+ backend: recurrent state; exact
            backend: key/value cache). It runs in eval mode (dropout off); its training flag is
            restored afterwards.
        input_ids: ``(B, L)`` prompt ids, left-padded when rows differ in length.
        max_new_tokens: at most this many tokens are appended.
        do_sample, temperature, top_k, top_p, generator: see :func:`sample_next_token`.
        eos_token_id: id(s) that end a row (default ``model.config.eos_token_id``). A finished
            row keeps receiving ``pad_token_id`` (or the first EOS id when there is no pad id);
            generation stops early once every row has finished.
        pad_token_id: filler for finished rows (default ``model.config.pad_token_id``).
        attention_mask: ``(B, L)``, 1 = token, 0 = left padding.
        max_length: optional cap on the total length ``L + new tokens``.

    Returns:
        ``(B, L + T)`` int64: the prompt (padding included) followed by ``T ≤ max_new_tokens``
        generated tokens.
    """
    if not isinstance(model, GenerationMixin):
        raise TypeError(
            f"generate needs a causal LM such as PerformerForCausalLM, got {type(model).__name__}"
        )
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError("input_ids must be an integer tensor of shape (B, L)")
    if input_ids.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token per row")
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    _check_sampling(temperature, top_k, top_p)
    config = model.config
    prompt_length = input_ids.shape[1]
    if max_length is not None:
        max_new_tokens = min(max_new_tokens, max(0, max_length - prompt_length))
    if config.position == "learned" and prompt_length + max_new_tokens - 1 > config.max_position_embeddings:
        raise ValueError(
            f"prompt ({prompt_length}) + max_new_tokens ({max_new_tokens}) exceeds max_position_embeddings "
            f"({config.max_position_embeddings}) of the learned position embedding"
        )
    input_ids = input_ids.long()
    device = input_ids.device
    eos = _eos_ids(config.eos_token_id if eos_token_id is None else eos_token_id, device)
    if pad_token_id is None:
        pad_token_id = config.pad_token_id
    if pad_token_id is None and eos is not None:
        pad_token_id = int(eos[0])
    padding = _left_padding(attention_mask, input_ids)
    if max_new_tokens == 0:
        return input_ids

    was_training = model.training
    model.eval()
    try:
        # Prompt: one parallel pass, returning every layer's state after the last position.
        out = model(
            input_ids,
            key_padding_mask=padding,
            position_ids=None if padding is None else position_ids_from_padding(padding),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
        new_tokens: list[Tensor] = []
        for step in range(max_new_tokens):
            token = sample_next_token(
                out.logits[:, -1],
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
            )
            if eos is not None:
                token = torch.where(finished, torch.full_like(token, pad_token_id), token)
                finished |= torch.isin(token, eos)
            new_tokens.append(token)
            if step == max_new_tokens - 1 or (eos is not None and bool(finished.all())):
                break
            # One position from the cached state: O(1) in the context length for FAVOR+.
            out = model(token[:, None], past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
    finally:
        model.train(was_training)
    # Underflow counts the GPU made while generating are reported now (the tokens are read).
    flush_underflow_warnings()
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)
