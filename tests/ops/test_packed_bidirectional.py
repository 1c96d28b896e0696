"""The fused packed bidirectional Functions (:mod:`performers.ops.bidirectional.packed`).

A packed bidirectional call of an exponential kernel runs the whole row in two autograd
Functions; it must give the numbers of the per-sequence loop (``_run_packed_loop``: one unpacked
fused call per sequence, itself tested against the naive reference in ``test_packed.py``) for
outputs and gradients of ``q``, ``k``, ``v`` and the projection, in float64. Tolerance 1e-12:
both sum the same per-sequence terms (<= 200 of size <= 1) in the same blocks, so they agree to
a few ulps, while one key leaking across a boundary, or a stabilizer shared between sequences,
moves outputs by ~1e-2 (the long sequence's keys are 3× larger, see ``_inputs``). Blocks of 7
positions make sequences span several blocks (the streamed maximum's rescaling). Also: grouped
query heads, recomputed query features, bfloat16, gradcheck and second derivatives on a tiny
case, and ``torch.compile``.
"""

from __future__ import annotations

import pytest
import torch

from performers import favor_attention, orthogonal_projection
from performers.ops.attention import _favor_attention, _run_packed_loop
from performers.ops.call import check_favor_call
from performers.ops.naive import naive_favor_attention
from tests.helpers.numerics import generator
from tests.ops.test_packed import _cu, _inputs, _pieces

LENGTHS = [1, 37, 200, 5, 64]
TOL = 1e-12


def _loop(q, k, v, w, **options) -> torch.Tensor:
    """The reference: one unpacked call per sequence on the path the unpacked call takes."""
    return _run_packed_loop(check_favor_call(q, k, v, w, **options), path=None)


def _assert_same_as_loop(q, k, v, w, tol: float = TOL, **options) -> None:
    """Outputs and the gradients of every input equal the loop's (separate leaves each)."""
    ours = [t.detach().clone().requires_grad_() for t in (q, k, v, w)]
    theirs = [t.detach().clone().requires_grad_() for t in (q, k, v, w)]
    out = favor_attention(*ours, **options)
    expected = _loop(*theirs, **options)
    # The fused packed Functions ran (not the loop): one readout node for the whole row (under
    # a view of it for grouped heads).
    node = out.grad_fn
    if type(node).__name__ == "ViewBackward0":
        node = node.next_functions[0][0]
    assert type(node).__name__ == "_PackedExpQueryReadoutBackward"
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    weight = torch.randn(out.shape, generator=generator(5), dtype=out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), ours)
    expected_grads = torch.autograd.grad((expected * weight).sum(), theirs)
    for name, got, want in zip("qkvw", grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("block_size", [None, 7])
@pytest.mark.parametrize("kernel", ["softmax", "softmax-hyperbolic", "gaussian"])
def test_packed_fused_equals_the_per_sequence_loop(kernel: str, block_size: int | None) -> None:
    q, k, v, w = _inputs(LENGTHS)
    _assert_same_as_loop(q, k, v, w, kernel=kernel, block_size=block_size, cu_seqlens=_cu(LENGTHS))


def test_packed_fused_equals_the_naive_reference_per_sequence() -> None:
    q, k, v, w = _inputs(LENGTHS, seed=1)
    out = _favor_attention(q, k, v, w, cu_seqlens=_cu(LENGTHS), block_size=7, path="fused")
    expected = torch.cat(
        [
            naive_favor_attention(qi, ki, vi, w)
            for qi, ki, vi in zip(*(_pieces(t, LENGTHS) for t in (q, k, v)), strict=True)
        ],
        dim=2,
    )
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_heads(kv_heads: int) -> None:
    """4 query heads reading 1 or 2 key/value heads, no copy of the keys: as the loop (which
    groups each sequence's query heads as rows)."""
    q, k, v, w = _inputs(LENGTHS, seed=2)
    q = torch.cat([q, 0.5 * q.flip(2)], dim=1)  # (1, 4, T, D)
    k, v = k[:, :kv_heads], v[:, :kv_heads]
    _assert_same_as_loop(q, k, v, w, enable_gqa=True, block_size=7, cu_seqlens=_cu(LENGTHS))


def test_one_sequence_and_recomputed_features() -> None:
    q, k, v, w = _inputs([1, 40], seed=3)
    _assert_same_as_loop(q, k, v, w, recompute_features=True, block_size=7, cu_seqlens=_cu([1, 40]))
    # A sequence of the row, against the public unpacked call on it.
    q, k, v, w = _inputs([23], seed=3)
    packed = _favor_attention(q, k, v, w, cu_seqlens=_cu([3, 20]), path="fused")
    torch.testing.assert_close(packed[:, :, 3:], favor_attention(*(t[:, :, 3:] for t in (q, k, v)), w))


def test_bfloat16_as_the_loop() -> None:
    """bfloat16 products (float32 sums) as in the unpacked fused call: within bfloat16 rounding
    of the loop, and of the float64 result."""
    q, k, v, w = _inputs(LENGTHS, seed=4)
    low = [t.to(torch.bfloat16) for t in (q, k, v)]
    out = favor_attention(*low, w.float(), cu_seqlens=_cu(LENGTHS))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, _loop(*low, w.float(), cu_seqlens=_cu(LENGTHS)), rtol=0.02, atol=0.02)
    exact = favor_attention(q, k, v, w, cu_seqlens=_cu(LENGTHS))
    torch.testing.assert_close(out.double(), exact, rtol=0.05, atol=0.05)


def test_gradcheck_and_second_derivatives() -> None:
    """gradcheck and gradgradcheck (finite differences, float64) on a tiny row; the first
    derivative under ``create_graph=True`` (the differentiable recomputation) equals the usual one."""
    lengths = [1, 3, 2]
    cu = _cu(lengths)
    g = generator(6)
    q, k, v = (
        torch.randn(1, 1, 6, 2, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    w = orthogonal_projection(4, 2, generator=generator(7), dtype=torch.float64).requires_grad_()

    def fn(q, k, v, w):
        return _favor_attention(q, k, v, w, cu_seqlens=cu, block_size=2, path="fused")

    inputs = (q, k, v, w)
    assert torch.autograd.gradcheck(fn, inputs)
    loss = (fn(*inputs) * torch.randn(1, 1, 6, 2, generator=g, dtype=torch.float64)).sum()
    usual = torch.autograd.grad(loss, inputs, retain_graph=True)
    with_graph = torch.autograd.grad(loss, inputs, create_graph=True)
    for got, want in zip(with_graph, usual, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def test_compiled_call_runs_the_fused_functions_eagerly() -> None:
    q, k, v, w = (t.float() for t in _inputs([3, 9, 4], seed=8))
    cu = _cu([3, 9, 4])
    compiled = torch.compile(favor_attention, backend="eager")
    torch.testing.assert_close(
        compiled(q, k, v, w, cu_seqlens=cu), favor_attention(q, k, v, w, cu_seqlens=cu)
    )
