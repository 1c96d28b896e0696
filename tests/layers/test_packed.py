"""Packed attention (:mod:`performers.layers.packed`): each sequence of a packed row alone.

References: the block-diagonal (and causal) mask through one SDPA call, and FAVOR+ on each
slice; float64, outputs and gradients.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from performers.layers import (
    PerformerCrossAttention,
    PerformerSelfAttention,
    cu_seqlens_from_position_ids,
    packed_favor_attention,
    packed_position_ids,
    packed_sdpa_attention,
)
from performers.ops import favor_attention, make_projection

LENGTHS = (4, 1, 6)
CU = torch.tensor([0, 4, 5, 11], dtype=torch.int32)
TOL = {"rtol": 1e-10, "atol": 1e-12}


def _qkv() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(4)
    return tuple(
        torch.randn(1, 2, sum(LENGTHS), 4, generator=generator, dtype=torch.float64, requires_grad=True)
        for _ in range(3)
    )


@pytest.mark.parametrize("causal", [False, True])
def test_packed_sdpa_equals_the_block_diagonal_mask(causal: bool) -> None:
    q, k, v = _qkv()
    segment = torch.repeat_interleave(torch.arange(len(LENGTHS)), torch.tensor(LENGTHS))
    allowed = segment[:, None] == segment[None, :]
    if causal:
        allowed = allowed & torch.ones_like(allowed).tril()
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    got = packed_sdpa_attention(q, k, v, CU, is_causal=causal)
    torch.testing.assert_close(got, want, **TOL)
    grads = torch.autograd.grad(got.sum(), (q, k, v)), torch.autograd.grad(want.sum(), (q, k, v))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("causal", [False, True])
def test_packed_favor_equals_each_slice(causal: bool) -> None:
    q, k, v = _qkv()
    projection = make_projection(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = packed_favor_attention(q, k, v, projection, CU, is_causal=causal)
    offsets = CU.tolist()
    want = torch.cat(
        [
            favor_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], projection, is_causal=causal)
            for a, b in itertools.pairwise(offsets)
        ],
        dim=2,
    )
    torch.testing.assert_close(got, want, **TOL)
    whole = favor_attention(q, k, v, projection, is_causal=causal)
    assert not torch.allclose(got, whole)  # the boundaries matter for these inputs


def test_positions_restart_per_sequence() -> None:
    positions = packed_position_ids(CU, sum(LENGTHS))
    assert positions.tolist() == [[0, 1, 2, 3, 0, 0, 1, 2, 3, 4, 5]]
    assert cu_seqlens_from_position_ids(positions).tolist() == CU.tolist()
    assert cu_seqlens_from_position_ids(torch.arange(3, 9)[None]) is None  # a late start is no packing


def test_packed_attention_refuses_what_it_cannot_honour() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="takes no key_padding_mask"):
        packed_favor_attention(q, k, v, None, CU, key_padding_mask=torch.zeros(1, 11, dtype=torch.bool))
    with pytest.raises(ValueError, match="one packed row"):
        packed_sdpa_attention(q.expand(2, -1, -1, -1), k, v, CU)
    attention = PerformerSelfAttention(8, 2)
    with pytest.raises(ValueError, match="come in one row"):
        attention(torch.randn(2, 11, 8), cu_seqlens=CU)
    with pytest.raises(ValueError, match="take no key_padding_mask"):
        attention(torch.randn(1, 11, 8), cu_seqlens=CU, key_padding_mask=torch.zeros(1, 11, dtype=torch.bool))
    with pytest.raises(ValueError, match="take no cache / use_cache"):
        attention(torch.randn(1, 11, 8), cu_seqlens=CU, is_causal=True, use_cache=True)
    cross = PerformerCrossAttention(8, 2)
    with pytest.raises(ValueError, match="need self-attention"):
        cross._attend(*(t.detach().float() for t in (q, k, v)), is_causal=False, cu_seqlens=CU)
