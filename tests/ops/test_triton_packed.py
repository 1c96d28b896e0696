"""Packed (``cu_seqlens``) calls on the varlen Triton kernels, under the interpreter.

A packed call runs every pass of :mod:`performers.ops.triton.bidirectional` and
:mod:`performers.ops.triton.causal` once for all its sequences, each program reading its
sequence's bounds (causal: its chunks, which stop at each boundary) from a table. It must equal
one unpacked call per sequence: outputs against the naive per-sequence reference, gradients
(first and second order), causal states in and out and their gradients against unpacked calls
per sequence, in float64 (sums of at most a few hundred
terms of size <= 1, so 1e-10 leaves ~10⁵ ulps of slack, while a key read across a boundary, or
one stabilizer shared by two sequences, moves outputs by ~1e-2: the longest sequence's keys are
3× larger, see ``tests/ops/test_packed.py``). Tiles of 16 positions, and reductions cut every
16 positions, put several programs in one sequence, and leave the shorter sequences empty
segments; lengths include 1. Launches are counted: one per pass, not one per sequence.
"""

from __future__ import annotations

import pytest
import torch

from performers import favor_attention
from performers.ops import FavorState
from performers.ops.naive import naive_favor_attention
from tests.helpers.numerics import generator
from tests.ops.test_packed import TOL, _cu
from tests.ops.test_packed import _inputs as _two_head_inputs

pytest.importorskip("triton")

from performers.ops.triton import bidirectional, causal
from performers.ops.triton.bidirectional import triton_bidirectional_attention
from performers.ops.triton.causal import triton_causal_attention
from performers.ops.triton.launch import Blocks

LENGTHS = [1, 9, 33, 5]
# 16-position tiles and reductions split every 32 positions: sequence 33 spans 3 tiles and 2
# segments, the others 1 segment and an empty one.
SMALL = Blocks(rows=16, features=16, span=32)


def _inputs(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """tests/ops/test_packed.py's packed inputs (the longest sequence's keys 3× larger), one
    head: the interpreter's time grows with the programs, B·H per tile."""
    return tuple(t[:, :1] if t.dim() == 4 else t for t in _two_head_inputs(lengths, seed))


def _per_sequence(fn, tensors, lengths):
    """``fn`` on each sequence's slices of ``tensors`` (positions on dim 2), concatenated."""
    pieces = zip(*(t.split(lengths, dim=2) for t in tensors), strict=True)
    return torch.cat([fn(*piece) for piece in pieces], dim=2)


def _leaves(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """favor_attention's Triton calls take :data:`SMALL` tiles (the reductions split too)."""
    monkeypatch.setattr(Blocks, "for_dims", classmethod(lambda cls, *args, **kwargs: SMALL))


@pytest.mark.parametrize("kernel, lengths", [("softmax", LENGTHS), ("relu", [1, 6, 3])])
def test_packed_triton_equals_one_call_per_sequence(
    kernel: str, lengths: list[int], small_tiles: None
) -> None:
    """Through favor_attention (the varlen launch of _run_packed), with tiles and reduction
    splits smaller than the longest sequence (the host combines a sequence's segments to one
    per-feature maximum): outputs = the naive per-sequence reference, gradients = those of one
    unpacked call per sequence (on the torch path, which the unpacked kernels equal at TOL:
    tests/ops/test_packed.py)."""
    q, k, v, w = _leaves(_inputs(lengths))
    out = favor_attention(q, k, v, w, kernel=kernel, cu_seqlens=_cu(lengths), backend="triton")
    expected = _per_sequence(
        lambda a, b, c: naive_favor_attention(a, b, c, w, kernel=kernel), (q, k, v), lengths
    )
    torch.testing.assert_close(out, expected, rtol=TOL, atol=TOL)

    weight = torch.randn(out.shape, generator=generator(5), dtype=out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v, w))
    leaves = _leaves((q, k, v, w))

    def one(a, b, c):
        return favor_attention(a, b, c, leaves[3], kernel=kernel, backend="torch")

    reference = _per_sequence(one, leaves[:3], lengths)
    expected_grads = torch.autograd.grad((reference * weight).sum(), leaves)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_one_sequence_as_cu_seqlens_equals_the_unpacked_kernels() -> None:
    """The varlen kernels on one sequence (several tiles and segments) equal the unpacked ones:
    outputs and gradients."""
    lengths = [20]
    q, k, v, w = _leaves(_inputs(lengths, seed=3))
    options = dict(scale=0.7, norm=1.0, blocks=SMALL)
    out = triton_bidirectional_attention(q, k, v, w, cu_seqlens=(0, 20), **options)
    leaves = _leaves((q, k, v, w))
    reference = triton_bidirectional_attention(*leaves, **options)
    torch.testing.assert_close(out, reference, rtol=TOL, atol=TOL)
    weight = torch.randn(out.shape, generator=generator(6), dtype=out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v, w))
    expected = torch.autograd.grad((reference * weight).sum(), leaves)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("is_causal", [False, True])
def test_packed_triton_with_grouped_key_value_heads(is_causal: bool) -> None:
    """Grouped key/value heads (GQA) packed: equal to the naive per-sequence reference."""
    lengths = [3, 7]
    q, k, v, w = _two_head_inputs(lengths, seed=4)
    k, v = k[:, :1], v[:, :1]  # 2 query heads over 1 key/value head
    out = favor_attention(
        q, k, v, w, cu_seqlens=_cu(lengths), backend="triton", enable_gqa=True, is_causal=is_causal
    )
    expected = _per_sequence(
        lambda a, b, c: naive_favor_attention(a, b.expand_as(a), c.expand_as(a), w, is_causal=is_causal),
        (q, k, v),
        lengths,
    )
    torch.testing.assert_close(out, expected, rtol=TOL, atol=TOL)


def test_packed_triton_second_derivatives_equal_one_call_per_sequence() -> None:
    """create_graph=True differentiates the PyTorch recomputation, one per sequence."""
    lengths = [2, 5]
    q, k, v, w = _leaves(_inputs(lengths, seed=7))
    options = dict(scale=0.7, norm=1.0, blocks=SMALL)

    def second(out, inputs):
        grad_q = torch.autograd.grad(out.square().sum(), inputs[0], create_graph=True)[0]
        return torch.autograd.grad(grad_q.square().sum(), inputs)

    got = second(
        triton_bidirectional_attention(q, k, v, w, cu_seqlens=tuple(_cu(lengths).tolist()), **options),
        (q, k, v, w),
    )
    leaves = _leaves((q, k, v, w))
    reference = _per_sequence(
        lambda a, b, c: triton_bidirectional_attention(a, b, c, leaves[3], **options), leaves[:3], lengths
    )
    for g, want in zip(got, second(reference, leaves), strict=True):
        torch.testing.assert_close(g, want, rtol=TOL, atol=TOL)


class _CountedKernel:
    """A kernel whose launches (``kernel[grid](...)``) are counted, then run."""

    def __init__(self, kernel) -> None:
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def test_packed_triton_launches_each_pass_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward: one key-summary and one readout launch; backward: two of each — for 3 sequences
    (the per-sequence loop launched 3× as many)."""
    counted = {name: _CountedKernel(getattr(bidirectional, name)) for name in ("row_pass", "feature_pass")}
    for name, kernel in counted.items():
        monkeypatch.setattr(bidirectional, name, kernel)
    lengths = [1, 3, 2]
    q, k, v, w = _leaves(_inputs(lengths, seed=8))
    out = favor_attention(q, k, v, w, cu_seqlens=_cu(lengths), backend="triton")
    assert {name: c.launches for name, c in counted.items()} == {"row_pass": 1, "feature_pass": 1}
    out.sum().backward()
    assert {name: c.launches for name, c in counted.items()} == {"row_pass": 3, "feature_pass": 3}


def _states(lengths: list[int], seed: int, m: int) -> FavorState:
    """Per-sequence initial states ``(N, 1, M', Dv)`` (positive sums, offsets of either sign)."""
    g = generator(seed)
    n = len(lengths)
    kv = torch.rand(n, 1, m, 4, generator=g, dtype=torch.float64)
    normalizer = 1.0 + torch.rand(n, 1, m, generator=g, dtype=torch.float64)
    return FavorState(kv, normalizer, torch.randn(n, 1, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("kernel, lengths", [("softmax", LENGTHS), ("relu", [1, 6, 3])])
def test_packed_causal_triton_equals_one_call_per_sequence(
    kernel: str, lengths: list[int], small_tiles: None
) -> None:
    """Causal, from per-sequence initial states, returning per-sequence states: outputs equal
    the naive per-sequence reference from empty states; outputs, final states and the gradients
    of q, k, v, P and the initial states equal one unpacked call per sequence (torch path)."""
    q, k, v, w = _leaves(_inputs(lengths, seed=9))
    options = dict(kernel=kernel, is_causal=True, backend="triton")
    out = favor_attention(q, k, v, w, cu_seqlens=_cu(lengths), **options)
    expected = _per_sequence(
        lambda a, b, c: naive_favor_attention(a, b, c, w, kernel=kernel, is_causal=True), (q, k, v), lengths
    )
    torch.testing.assert_close(out, expected, rtol=TOL, atol=TOL)

    start = _states(lengths, 10, 8 if kernel == "relu" else w.shape[0])
    kv, normalizer = (t.clone().requires_grad_() for t in (start.kv, start.normalizer))
    out, final = favor_attention(
        q, k, v, w, cu_seqlens=_cu(lengths), initial_state=FavorState(kv, normalizer, start.log_offset),
        return_state=True, **options,
    )  # fmt: skip
    weight = torch.randn(out.shape, generator=generator(11), dtype=out.dtype)
    loss = (out * weight).sum() + final.kv.square().sum() + final.normalizer.sum()
    grads = torch.autograd.grad(loss, (q, k, v, w, kv, normalizer))

    leaves = _leaves((q, k, v, w, start.kv, start.normalizer))
    outs, finals = [], []
    for i, piece in enumerate(zip(*(t.split(lengths, dim=2) for t in leaves[:3]), strict=True)):
        state = FavorState(leaves[4][i : i + 1], leaves[5][i : i + 1], start.log_offset[i : i + 1])
        one, final_one = favor_attention(
            *piece, leaves[3], initial_state=state, return_state=True, **{**options, "backend": "torch"}
        )
        outs.append(one)
        finals.append(final_one)
    reference = torch.cat(outs, dim=2)
    torch.testing.assert_close(out, reference, rtol=TOL, atol=TOL)
    # Final states in one unit (each path may keep its own offset).
    offsets = torch.cat([f.log_offset for f in finals], dim=0)
    scale = torch.exp(final.log_offset - offsets)
    kv_want, normalizer_want = (
        torch.cat([getattr(f, n) for f in finals], dim=0) for n in ("kv", "normalizer")
    )
    torch.testing.assert_close(final.kv * scale[..., None, None], kv_want, rtol=TOL, atol=TOL)
    torch.testing.assert_close(final.normalizer * scale[..., None], normalizer_want, rtol=TOL, atol=TOL)
    ref_loss = (reference * weight).sum()
    ref_loss = ref_loss + sum(f.kv.square().sum() + f.normalizer.sum() for f in finals)
    expected_grads = torch.autograd.grad(ref_loss, leaves)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_one_sequence_as_cu_seqlens_equals_the_unpacked_causal_kernels() -> None:
    """The causal varlen kernels on one sequence of several chunks, from a state, equal the
    unpacked ones: output, final state, gradients (initial state included)."""
    q, k, v, w = _leaves(_inputs([20], seed=12))
    start = _states([20], 13, w.shape[0])
    options = dict(scale=0.7, norm=1.0, blocks=SMALL, initial_offset=start.log_offset)

    def run(q, k, v, w, kv, normalizer, **extra):
        out, kv, normalizer, offset = triton_causal_attention(
            q, k, v, w, initial_kv=kv, initial_normalizer=normalizer, **options, **extra
        )
        return (out, kv, normalizer), offset

    inputs = _leaves((q, k, v, w, start.kv, start.normalizer))
    got, got_offset = run(*inputs, cu_seqlens=(0, 20))
    leaves = _leaves(inputs)
    want, want_offset = run(*leaves)
    torch.testing.assert_close(got_offset, want_offset, rtol=0, atol=0)
    weights = [torch.randn(t.shape, generator=generator(14 + i), dtype=t.dtype) for i, t in enumerate(want)]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
    grads = torch.autograd.grad(sum((t * wt).sum() for t, wt in zip(got, weights, strict=True)), inputs)
    expected = torch.autograd.grad(sum((t * wt).sum() for t, wt in zip(want, weights, strict=True)), leaves)
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


def test_packed_causal_triton_second_derivatives_equal_one_call_per_sequence() -> None:
    """create_graph=True differentiates the PyTorch recomputation, one per sequence."""
    lengths = [2, 5]
    q, k, v, w = _leaves(_inputs(lengths, seed=15))
    options = dict(scale=0.7, norm=1.0, blocks=SMALL)

    def second(out, inputs):
        grad_q = torch.autograd.grad(out.square().sum(), inputs[0], create_graph=True)[0]
        return torch.autograd.grad(grad_q.square().sum(), inputs)

    bounds = tuple(_cu(lengths).tolist())
    got = second(triton_causal_attention(q, k, v, w, cu_seqlens=bounds, **options)[0], (q, k, v, w))
    leaves = _leaves((q, k, v, w))

    def one(a, b, c):
        return triton_causal_attention(a, b, c, leaves[3], **options)[0]

    for g, want in zip(got, second(_per_sequence(one, leaves[:3], lengths), leaves), strict=True):
        torch.testing.assert_close(g, want, rtol=TOL, atol=TOL)


def test_packed_causal_triton_launches_each_pass_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward: key row maxima, states, outputs; backward: adjoints, input and projection
    gradients — one launch each for 3 sequences, states in and out."""
    names = ("row_pass", "state_pass", "output_pass", "adjoint_pass", "input_grad_pass", "param_grad_pass")
    counted = {name: _CountedKernel(getattr(causal, name)) for name in names}
    for name, kernel in counted.items():
        monkeypatch.setattr(causal, name, kernel)
    lengths = [1, 3, 2]
    q, k, v, w = _leaves(_inputs(lengths, seed=16))
    start = _states(lengths, 17, w.shape[0])
    out, final = favor_attention(
        q, k, v, w, cu_seqlens=_cu(lengths), is_causal=True, initial_state=start, return_state=True,
        backend="triton",
    )  # fmt: skip
    assert [counted[name].launches for name in names] == [1, 1, 1, 0, 0, 0]
    (out.sum() + final.kv.sum()).backward()
    assert [counted[name].launches for name in names] == [1, 1, 1, 1, 1, 1]
