"""The loop-free packed causal path (:mod:`performers.ops.causal.packed`) against the per-sequence loop
(``_run_packed_loop``, the reference: one unpacked call per sequence).

Outputs and gradients (q, k, v, the projection, and initial states) in float64, for layouts
that put boundaries everywhere the chunked algorithm could leak across one: a sequence of one
position, a long sequence among short ones (its large keys must not set the others'
stabilizer), boundaries exactly on chunk edges, several boundaries inside one chunk, and
sequences spanning several of the fused path's segments (``segment_chunks=2``). Tolerance: every
path sums a few hundred terms of size <= 1 per sequence, so 1e-10 leaves ~10⁵ ulps while one
key leaking across a boundary moves an output by ~1e-2.
"""

from __future__ import annotations

import pytest
import torch

from performers import favor_attention, favor_attention_step
from performers.ops import FavorState
from performers.ops import attention as attention_module
from performers.ops.attention import _favor_attention, _run_packed_loop
from performers.ops.call import check_favor_call
from performers.ops.causal.packed import segment_cummax
from tests.helpers.numerics import generator
from tests.ops.test_packed import D, H, M, _cu, _inputs

DT = torch.float64
TOL = 1e-10
CHUNK = 8
LAYOUTS = {
    "mixed": [1, 37, 100, 5, 24],
    "chunk-edges": [8, 16, 8, 24],  # every boundary on a chunk edge (CHUNK = 8)
    "within-one-chunk": [3, 1, 2, 1, 9, 20],  # four boundaries inside the first chunk
}
PATHS = [("softmax", "fused"), ("softmax", "generic"), ("favor++", "generic"), ("relu", "generic")]


def _loop(q, k, v, w, path: str, is_causal: bool = True, **options):
    """The reference: one unpacked call per sequence (the function itself, imported before the
    fixture below replaces the module's name for it)."""
    return _run_packed_loop(check_favor_call(q, k, v, w, is_causal=is_causal, **options), path=path)


@pytest.fixture
def no_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packed causal call must not fall back to the per-sequence loop."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the packed causal call ran the per-sequence loop")

    monkeypatch.setattr(attention_module, "_run_packed_loop", refuse)


def _state_fields(state: FavorState) -> list[torch.Tensor]:
    return [t for t in state[:4] if t is not None]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(("kernel", "path"), PATHS)
def test_loop_free_equals_the_loop(kernel: str, path: str, layout: str, no_loop: None) -> None:
    lengths = LAYOUTS[layout]
    leaves = [t.requires_grad_() for t in _inputs(lengths)]
    options = {"kernel": kernel, "cu_seqlens": _cu(lengths), "chunk_size": CHUNK, "segment_chunks": 2}
    out = _favor_attention(*leaves, is_causal=True, path=path, **options)
    weight = torch.randn(out.shape, generator=generator(5), dtype=DT)
    grads = torch.autograd.grad((out * weight).sum(), leaves)

    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    expected = _loop(*ref_leaves, path, **options)
    torch.testing.assert_close(out, expected, rtol=TOL, atol=TOL)
    expected_grads = torch.autograd.grad((expected * weight).sum(), ref_leaves)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize(("kernel", "path"), PATHS)
def test_states_in_and_out(kernel: str, path: str, no_loop: None) -> None:
    """N states in (differentiable), N states out: as the loop gives them, gradients included."""
    lengths = LAYOUTS["mixed"]
    prefix = [2, 9, 1, 17, 4]
    qp, kp, vp, w = _inputs(prefix, seed=3)
    options = {"kernel": kernel, "chunk_size": CHUNK}
    _, start = favor_attention(
        qp, kp, vp, w, is_causal=True, cu_seqlens=_cu(prefix), return_state=True, **options
    )
    q, k, v, _ = _inputs(lengths, seed=4)

    def run(run_packed, leaves):
        q, k, v, w, kv, normalizer = leaves
        initial = start._replace(kv=kv, normalizer=normalizer)
        return run_packed(q, k, v, w, initial)

    def loop_free(q, k, v, w, initial):
        call = {"initial_state": initial, "return_state": True, "cu_seqlens": _cu(lengths)}
        return _favor_attention(q, k, v, w, is_causal=True, path=path, **options, **call)

    def loop(q, k, v, w, initial):
        call = {"initial_state": initial, "return_state": True, "cu_seqlens": _cu(lengths)}
        return _loop(q, k, v, w, path, **options, **call)

    base = [q, k, v, w, start.kv, start.normalizer]
    results = []
    for run_packed in (loop_free, loop):
        leaves = [t.detach().clone().requires_grad_() for t in base]
        out, final = run(run_packed, leaves)
        assert final.kv.shape == (len(lengths), H, M, D) and final.kernel == kernel
        g = generator(6)
        loss = (out * torch.randn(out.shape, generator=g, dtype=DT)).sum()
        loss = loss + sum(
            (f * torch.randn(f.shape, generator=g, dtype=DT)).sum() for f in (final.kv, final.normalizer)
        )
        results.append((out, final, torch.autograd.grad(loss, leaves)))
    (out, final, grads), (expected, expected_final, expected_grads) = results
    torch.testing.assert_close(out, expected, rtol=TOL, atol=TOL)
    for got, want in zip(_state_fields(final), _state_fields(expected_final), strict=True):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("kernel", ["softmax", "favor++"])
def test_decode_after_a_packed_prefill_equals_decode_after_that_sequence_alone(
    kernel: str, no_loop: None
) -> None:
    lengths = LAYOUTS["within-one-chunk"]
    q, k, v, w = _inputs(lengths, seed=7)
    options = {"kernel": kernel, "chunk_size": CHUNK}
    _, states = favor_attention(
        q, k, v, w, is_causal=True, cu_seqlens=_cu(lengths), return_state=True, **options
    )
    step = [torch.randn(1, H, 1, D, generator=generator(8), dtype=DT) for _ in range(3)]
    for i in (1, 3, 5):  # sequences inside the first chunk, and the one running past it
        a, b = sum(lengths[:i]), sum(lengths[: i + 1])
        _, alone = favor_attention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], w, is_causal=True, return_state=True, **options
        )
        got, _ = favor_attention_step(*step, states.select(i), w, kernel=kernel)
        want, _ = favor_attention_step(*step, alone, w, kernel=kernel)
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_single_sequence_and_one_position_sequences(no_loop: None) -> None:
    """One sequence is the unpacked call; sequences of one position read only themselves."""
    q, k, v, w = _inputs([5, 1, 1, 1, 3])
    out = favor_attention(q, k, v, w, is_causal=True, cu_seqlens=_cu([5, 1, 1, 1, 3]), chunk_size=4)
    torch.testing.assert_close(out[:, :, 5:8], v[:, :, 5:8], rtol=TOL, atol=TOL)
    whole = favor_attention(q, k, v, w, is_causal=True, cu_seqlens=_cu([11]))
    torch.testing.assert_close(whole, favor_attention(q, k, v, w, is_causal=True), rtol=0, atol=0)


def test_segment_cummax_restarts_at_each_segment() -> None:
    g = generator(9)
    x = torch.randint(-3, 4, (2, 3, 40), generator=g).to(DT)  # ties
    x[0, 0, 7] = -torch.inf
    seq = torch.repeat_interleave(torch.arange(5), torch.tensor([1, 9, 6, 20, 4]))
    expected = torch.cat(
        [torch.cummax(piece, dim=-1).values for piece in torch.split(x, [1, 9, 6, 20, 4], dim=-1)], dim=-1
    )
    torch.testing.assert_close(segment_cummax(x, seq), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lengths", [[1], [70], [1] * 9, [3, 64, 1, 2, 65, 1, 33], [129, 1, 2]])
def test_segment_cummax_equals_a_running_maximum_per_segment(lengths: list[int], dtype: torch.dtype) -> None:
    """One segment, one-position segments, long and short ones mixed, ids that skip values;
    ties, ±inf, -0.0 and values of both signs, in every dtype (float64 takes the ranks)."""
    g = generator(11)
    x = (torch.randn(2, 3, sum(lengths), generator=g, dtype=torch.float64) * 300).round().to(dtype)
    x[torch.rand(x.shape, generator=g) < 0.1] = -torch.inf
    x[torch.rand(x.shape, generator=g) < 0.02] = torch.inf
    x[torch.rand(x.shape, generator=g) < 0.05] = -0.0
    seq = torch.repeat_interleave(torch.arange(len(lengths)) * 3 + 7, torch.tensor(lengths))
    pieces = torch.split(x, lengths, dim=-1)
    expected = torch.cat([torch.cummax(piece, dim=-1).values for piece in pieces], dim=-1)
    got = segment_cummax(x, seq)
    assert got.dtype == dtype and torch.equal(got, expected)


# softmax takes the packed generic form only with states (without: the fused path, ungrouped).
GROUPED = [("softmax", True), ("favor++", True), ("favor++", False), ("relu", True), ("relu", False)]


@pytest.mark.parametrize(("kernel", "states"), GROUPED)
def test_groups_of_whole_sequences_equal_the_loop(
    kernel: str, states: bool, no_loop: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packed generic form runs a long row as groups of whole sequences (features of the
    whole row would be fresh pages from the OS each call): outputs, N states out and the
    gradients of q, k, v, the projection and the N states in are the loop's."""
    from performers.ops.causal import favor as causal_favor

    # H·40·M elements: groups of at most 40 positions — [1, 37], [100] (longer, alone), [5, 24].
    monkeypatch.setattr(causal_favor, "PACKED_GROUP_ELEMENTS", H * 40 * M)
    layouts = []
    real_layout = causal_favor.packed_layout
    monkeypatch.setattr(causal_favor, "packed_layout", lambda b, d: layouts.append(b) or real_layout(b, d))
    lengths = LAYOUTS["mixed"]
    prefix = [2, 9, 1, 17, 4]
    qp, kp, vp, w = _inputs(prefix, seed=3)
    options = {"kernel": kernel, "chunk_size": CHUNK, "return_state": states, "cu_seqlens": _cu(lengths)}
    _, start = favor_attention(
        qp,
        kp,
        vp,
        w,
        is_causal=True,
        cu_seqlens=_cu(prefix),
        return_state=True,
        kernel=kernel,
        chunk_size=CHUNK,
    )
    base = [*_inputs(lengths, seed=4)[:3], w, start.kv, start.normalizer]
    results = []
    for grouped in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in base]
        q, k, v, w_, kv, normalizer = leaves
        initial = start._replace(kv=kv, normalizer=normalizer) if states else None
        layouts.clear()
        if grouped:
            result = _favor_attention(q, k, v, w_, is_causal=True, initial_state=initial, **options)
            assert layouts == [(0, 1, 38), (0, 100), (0, 5, 29)]  # one sub-row per group
        else:
            result = _loop(q, k, v, w_, "generic", initial_state=initial, **options)
        out, final = result if states else (result, None)
        g = generator(6)
        loss = (out * torch.randn(out.shape, generator=g, dtype=DT)).sum()
        if states:
            loss = loss + sum(
                (f * torch.randn(f.shape, generator=g, dtype=DT)).sum() for f in _state_fields(final)
            )
        results.append((out, final, torch.autograd.grad(loss, leaves if states else leaves[:4])))
    (out, final, grads), (expected, expected_final, expected_grads) = results
    torch.testing.assert_close(out, expected, rtol=TOL, atol=TOL)
    if states:
        assert final.kv.shape == (len(lengths), H, M, D) and final.kernel == kernel
        for got, want in zip(_state_fields(final), _state_fields(expected_final), strict=True):
            torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_groups_have_second_derivatives(no_loop: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """gradgradcheck through the grouped form (split, per-group calls, cat), FAVOR++; first
    derivatives of q, k, v are compared with the loop above. Second derivatives in the values
    only: each numerical input costs a forward and a differentiable backward (q, k, v: 11 s)."""
    from performers.ops.causal import favor as causal_favor

    monkeypatch.setattr(causal_favor, "PACKED_GROUP_ELEMENTS", H * 3 * M)  # groups [2], [1, 2]
    lengths = [2, 1, 2]
    q, k, v, w = _inputs([5], seed=9)
    q, k = 0.5 * q, 0.5 * k

    def attend(v):
        return favor_attention(
            q, k, v, w, is_causal=True, kernel="favor++", cu_seqlens=_cu(lengths), chunk_size=4
        )

    assert torch.autograd.gradgradcheck(attend, (v.detach().requires_grad_(),))
