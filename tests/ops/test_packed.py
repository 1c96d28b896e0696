"""Packed variable-length batches (``cu_seqlens``) in the ops.

A packed call on ``(1, H, T, D)`` inputs holding N sequences back to back must equal one call
per sequence: outputs against the naive per-sequence reference (:func:`naive_favor_attention`,
by definition, in ``O(L²)``), gradients against the per-sequence unpacked calls, in float64
(every path sums at most a few hundred terms of size <= 1 per sequence, so 1e-10 leaves ~10⁵
ulps of slack while a cross-sequence leak — one key of another sequence — moves outputs by
~1e-2). Lengths include 1 (a sequence of one position) and one long sequence among short ones
(its large key logits must not set the stabilizer of the short ones). Also: per-sequence states
in and out, decoding after a packed prefill, ``linear_attention``, every bad ``cu_seqlens``,
Triton (interpreter) and the context-parallel refusal.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from performers import favor_attention, favor_attention_step, linear_attention, orthogonal_projection
from performers.ops import FavorState
from performers.ops.attention import _favor_attention
from performers.ops.naive import naive_favor_attention
from performers.ops.underflow import FavorUnderflowWarning, count_zero_rows
from tests.helpers.numerics import generator

DT = torch.float64
H, D, M = 2, 4, 8
LENGTHS = [1, 13, 40, 5, 16]
TOL = 1e-10


def _cu(lengths: list[int], dtype: torch.dtype = torch.int32) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=dtype)


def _inputs(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = generator(seed)
    t = sum(lengths)
    q = 0.7 * torch.randn(1, H, t, D, generator=g, dtype=DT)
    k = 0.7 * torch.randn(1, H, t, D, generator=g, dtype=DT)
    # The long sequence's keys are large: a stabilizer shared across sequences would underflow
    # the others' features (exp(-|Δ logit|)), which the per-sequence reference would show.
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    start = sum(lengths[:longest])
    k[:, :, start : start + lengths[longest]] *= 3.0
    v = torch.randn(1, H, t, D, generator=g, dtype=DT)
    w = orthogonal_projection(M, D, generator=generator(seed + 1), dtype=DT)
    return q, k, v, w


def _pieces(x: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    return list(torch.split(x, lengths, dim=2))


@pytest.mark.parametrize("path", ["fused", "generic"])
@pytest.mark.parametrize("kernel", ["softmax", "favor++", "relu"])
@pytest.mark.parametrize("causal", [False, True])
def test_packed_equals_one_call_per_sequence(causal: bool, kernel: str, path: str) -> None:
    if path == "fused" and kernel != "softmax":
        pytest.skip("the fused path serves exponential kernels only (refusal tested below)")
    q, k, v, w = (t.requires_grad_() for t in _inputs(LENGTHS))
    out = _favor_attention(q, k, v, w, kernel=kernel, is_causal=causal, cu_seqlens=_cu(LENGTHS), path=path)
    expected = torch.cat(
        [
            naive_favor_attention(qi, ki, vi, w, kernel=kernel, is_causal=causal)
            for qi, ki, vi in zip(*(_pieces(t, LENGTHS) for t in (q, k, v)), strict=True)
        ],
        dim=2,
    )
    torch.testing.assert_close(out, expected, rtol=TOL, atol=TOL)

    # Gradients: those of one unpacked call per sequence, on separate leaves.
    weight = torch.randn(out.shape, generator=generator(5), dtype=DT)
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v, w))
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, w)]
    outs = [
        _favor_attention(qi, ki, vi, leaves[3], kernel=kernel, is_causal=causal, path=path)
        for qi, ki, vi in zip(*(_pieces(t, LENGTHS) for t in leaves[:3]), strict=True)
    ]
    expected_grads = torch.autograd.grad((torch.cat(outs, dim=2) * weight).sum(), leaves)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("causal", [False, True])
def test_single_sequence_is_the_unpacked_call(causal: bool) -> None:
    q, k, v, w = _inputs([23])
    out = favor_attention(q, k, v, w, is_causal=causal, cu_seqlens=_cu([23], torch.int64))
    torch.testing.assert_close(out, favor_attention(q, k, v, w, is_causal=causal), rtol=0, atol=0)


def test_fused_path_refuses_kernels_without_exponential_form() -> None:
    q, k, v, w = _inputs(LENGTHS)
    with pytest.raises(ValueError, match="path='fused' cannot serve"):
        _favor_attention(q, k, v, w, kernel="relu", cu_seqlens=_cu(LENGTHS), path="fused")


@pytest.mark.parametrize("kernel", ["softmax", "favor++"])
def test_states_in_and_out_per_sequence(kernel: str) -> None:
    """A packed causal call continues N prefixes (one state row each) and returns N states,
    each that of the sequence run alone from its own prefix."""
    prefix = [3, 7, 2, 9, 4]
    qp, kp, vp, w = _inputs(prefix, seed=3)
    _, start = favor_attention(
        qp, kp, vp, w, kernel=kernel, is_causal=True, cu_seqlens=_cu(prefix), return_state=True
    )
    assert start.kv.shape == (len(prefix), H, M, D)
    q, k, v, _ = _inputs(LENGTHS, seed=4)
    out, final = favor_attention(
        q,
        k,
        v,
        w,
        kernel=kernel,
        is_causal=True,
        cu_seqlens=_cu(LENGTHS),
        initial_state=start,
        return_state=True,
    )
    assert final.kernel == kernel and final.kv.shape == (len(LENGTHS), H, M, D)
    pieces = zip(*(_pieces(t, LENGTHS) for t in (q, k, v)), strict=True)
    for i, (qi, ki, vi) in enumerate(pieces):
        # The prefix of sequence i, alone, then sequence i from its state.
        a, b = sum(prefix[:i]), sum(prefix[: i + 1])
        _, alone = favor_attention(
            qp[:, :, a:b], kp[:, :, a:b], vp[:, :, a:b], w, kernel=kernel, is_causal=True, return_state=True
        )
        for got, want in zip(start.select(i)[:4], alone[:4], strict=True):
            if want is not None:
                torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
        out_i, state_i = favor_attention(
            qi, ki, vi, w, kernel=kernel, is_causal=True, initial_state=alone, return_state=True
        )
        a, b = sum(LENGTHS[:i]), sum(LENGTHS[: i + 1])
        torch.testing.assert_close(out[:, :, a:b], out_i, rtol=TOL, atol=TOL)
        for got, want in zip(final.select(i)[:4], state_i[:4], strict=True):
            if want is not None:
                torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_decode_after_packed_prefill_equals_decode_after_that_sequence_alone() -> None:
    q, k, v, w = _inputs(LENGTHS, seed=6)
    _, states = favor_attention(q, k, v, w, is_causal=True, cu_seqlens=_cu(LENGTHS), return_state=True)
    g = generator(7)
    step = [torch.randn(1, H, 1, D, generator=g, dtype=DT) for _ in range(3)]
    for i in (0, 2, len(LENGTHS) - 1):
        a, b = sum(LENGTHS[:i]), sum(LENGTHS[: i + 1])
        _, alone = favor_attention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], w, is_causal=True, return_state=True
        )
        out, _ = favor_attention_step(*step, states.select(i), w)
        expected, _ = favor_attention_step(*step, alone, w)
        torch.testing.assert_close(out, expected, rtol=TOL, atol=TOL)
    # select counts from the end like a sequence index, and refuses one past it.
    torch.testing.assert_close(states.select(-1).kv, states.kv[-1:], rtol=0, atol=0)
    with pytest.raises(IndexError):
        states.select(len(LENGTHS))
    # rows(a, b) holds sequences a..b-1; cat joins states back in order, kernel name kept.
    joined = FavorState.cat([states.rows(0, 2), states.select(2), states.rows(3, len(LENGTHS))])
    assert joined.kernel == states.kernel == "softmax"
    for got, want in zip(joined[:4], states[:4], strict=True):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_packed(causal: bool) -> None:
    g = generator(8)
    t = sum(LENGTHS)
    qf, kf = (torch.rand(1, H, t, M, generator=g, dtype=DT) + 0.1 for _ in range(2))
    v = torch.randn(1, H, t, D, generator=g, dtype=DT)
    cu = _cu(LENGTHS)
    options = {"is_causal": causal, "return_state": causal}
    result = linear_attention(qf, kf, v, cu_seqlens=cu, **options)
    alone = [
        linear_attention(*pieces, **options)
        for pieces in zip(*(_pieces(x, LENGTHS) for x in (qf, kf, v)), strict=True)
    ]
    if causal:
        out, state = result
        torch.testing.assert_close(out, torch.cat([r[0] for r in alone], dim=2), rtol=TOL, atol=TOL)
        torch.testing.assert_close(state.kv, torch.cat([r[1].kv for r in alone]), rtol=TOL, atol=TOL)
        # And it continues per-sequence states.
        again = linear_attention(qf, kf, v, cu_seqlens=cu, is_causal=True, initial_state=state)
        first = linear_attention(
            qf[:, :, :1], kf[:, :, :1], v[:, :, :1], is_causal=True, initial_state=state.select(0)
        )
        torch.testing.assert_close(again[:, :, :1], first, rtol=TOL, atol=TOL)
    else:
        torch.testing.assert_close(result, torch.cat(alone, dim=2), rtol=TOL, atol=TOL)


def test_grouped_query_heads_packed() -> None:
    q, k, v, w = _inputs(LENGTHS, seed=9)
    k1, v1 = k[:, :1], v[:, :1]
    cu = _cu(LENGTHS)
    for causal in (False, True):
        out = favor_attention(q, k1, v1, w, is_causal=causal, enable_gqa=True, cu_seqlens=cu)
        expected = favor_attention(q, k1.expand_as(q), v1.expand_as(q), w, is_causal=causal, cu_seqlens=cu)
        torch.testing.assert_close(out, expected, rtol=TOL, atol=TOL)


def test_second_derivatives_packed() -> None:
    lengths = [1, 3, 2]
    q, k, v, w = (
        t[..., :2].contiguous().requires_grad_() if i < 3 else t.requires_grad_()
        for i, t in enumerate(_inputs(lengths))
    )
    w = orthogonal_projection(4, 2, generator=generator(2), dtype=DT).requires_grad_()
    cu = _cu(lengths)
    for causal in (False, True):
        assert torch.autograd.gradgradcheck(
            lambda *x, c=causal: favor_attention(*x, is_causal=c, cu_seqlens=cu), (q, k, v, w), fast_mode=True
        )


@pytest.mark.parametrize(
    ("cu_seqlens", "error", "match"),
    [
        (torch.tensor([0, 40, 13, 75]), ValueError, "strictly increasing"),
        (torch.tensor([0, 13, 13, 75]), ValueError, "strictly increasing"),
        (torch.tensor([1, 13, 75]), ValueError, "start at 0 and end at T = 75"),
        (torch.tensor([0, 13, 70]), ValueError, "start at 0 and end at T = 75"),
        (torch.tensor([0.0, 13.0, 75.0]), TypeError, "int32 or torch.int64"),
        (torch.tensor([[0, 13, 75]]), ValueError, r"1-D of shape \(N\+1,\)"),
        (torch.tensor([0]), ValueError, r"1-D of shape \(N\+1,\)"),
        ([0, 13, 75], TypeError, "cu_seqlens must be a torch.Tensor"),
    ],
)
def test_bad_cu_seqlens(cu_seqlens, error: type[Exception], match: str) -> None:
    q, k, v, w = _inputs(LENGTHS)
    with pytest.raises(error, match=match):
        favor_attention(q, k, v, w, cu_seqlens=cu_seqlens)
    with pytest.raises(error, match=match):
        linear_attention(q.exp(), k.exp(), v, cu_seqlens=cu_seqlens)


def test_packed_layout_errors() -> None:
    q, k, v, w = _inputs(LENGTHS)
    cu = _cu(LENGTHS)
    two = [torch.cat([t, t]) for t in (q, k, v)]
    with pytest.raises(ValueError, match="batch must be 1, got q"):
        favor_attention(*two, w, cu_seqlens=cu)
    with pytest.raises(ValueError, match="must have one length"):
        favor_attention(q, k[:, :, :-1], v[:, :, :-1], w, cu_seqlens=cu)
    padding = torch.zeros(1, q.shape[2], dtype=torch.bool)
    with pytest.raises(ValueError, match="cannot be combined with key_padding_mask or attn_mask"):
        favor_attention(q, k, v, w, cu_seqlens=cu, key_padding_mask=padding)
    with pytest.raises(ValueError, match="cannot be combined with key_padding_mask or attn_mask"):
        favor_attention(q, k, v, w, cu_seqlens=cu, attn_mask=~padding[:, None, None, :])
    state = FavorState(
        torch.zeros(1, H, M, D, dtype=DT), torch.zeros(1, H, M, dtype=DT), torch.zeros(1, H, dtype=DT)
    )
    with pytest.raises(ValueError, match=r"packed as 5 sequences"):
        favor_attention(q, k, v, w, is_causal=True, cu_seqlens=cu, initial_state=state)


def test_triton_packed_under_the_interpreter() -> None:
    """Triton serves packed calls (one launch per pass for all sequences), exponential and
    generalized maps."""
    pytest.importorskip("triton")
    lengths = [1, 6, 3]
    q, k, v, w = _inputs(lengths, seed=10)
    cu = _cu(lengths)
    for causal, kernel in ((False, "softmax"), (True, "softmax"), (True, "relu")):
        options = {"is_causal": causal, "kernel": kernel, "cu_seqlens": cu}
        out = favor_attention(q, k, v, w, backend="triton", **options)
        expected = favor_attention(q, k, v, w, backend="torch", **options)
        torch.testing.assert_close(out, expected, rtol=TOL, atol=TOL)


def test_context_parallel_refuses_cu_seqlens() -> None:
    from performers.distributed import favor_attention as cp_attention

    q, k, v, w = _inputs(LENGTHS)
    with pytest.raises(ValueError, match="does not take cu_seqlens"):
        cp_attention(q, k, v, w, cu_seqlens=_cu(LENGTHS))


def test_underflow_report_restarts_at_each_sequence() -> None:
    """Rows that see no valued key of their own sequence are legitimately 0 (no warning, though
    an earlier sequence had values); rows that underflowed are reported, counted per sequence."""
    q, k, v, w = _inputs(LENGTHS, seed=11)
    v[:, :, LENGTHS[0] : LENGTHS[0] + 3] = 0.0  # the first 3 values of sequence 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", FavorUnderflowWarning)
        out = favor_attention(q, k, v, w, is_causal=True, cu_seqlens=_cu(LENGTHS))
    assert (out[:, :, LENGTHS[0] : LENGTHS[0] + 3] == 0).all()

    g = generator(12)
    q, k = (30.0 * torch.randn(1, 2, 64, 16, generator=g) for _ in range(2))
    v = torch.randn(1, 2, 64, 16, generator=g)
    w = orthogonal_projection(64, 16, generator=g)
    lengths = [24, 40]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FavorUnderflowWarning)
        alone = sum(
            count_zero_rows(favor_attention(qi, ki, vi, w, is_causal=True), vi)
            for qi, ki, vi in zip(*(_pieces(t, lengths) for t in (q, k, v)), strict=True)
        )
    assert alone > 0
    with pytest.warns(FavorUnderflowWarning, match=rf"\b{alone} of 128 query rows"):
        favor_attention(q, k, v, w, is_causal=True, cu_seqlens=_cu(lengths))
