"""Second derivatives of every path (gradient penalties, Hessian-vector products, meta-learning):
``gradgradcheck`` in float64 against finite differences of the first derivative (with the
first derivative under ``create_graph=True`` equal to the usual one), a gradient penalty against
the naive quadratic reference, and the Triton kernels' second derivatives against the PyTorch
path's.

The hand-written autograd Functions (the fused paths, the Triton kernels, the stabilized
features and the causal prefix scan) recompute their forward with PyTorch operations when a
backward runs with ``create_graph=True``; these tests fail on a backward that treats its
forward's intermediates as constants.
"""

import pytest
import torch

from performers.ops import favor_attention_step, orthogonal_projection
from performers.ops.attention import _favor_attention
from performers.ops.naive import naive_favor_attention
from performers.ops.state import FavorState
from tests.helpers.numerics import generator

DT = torch.float64
# Tiny shapes: B=1, H=1, D=3, M=4 projection rows; fast_mode checks one random direction of
# the second derivative (a wrong one fails it with probability 1).
D, M, DV = 3, 4, 2


def _inputs(lq: int, lk: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = generator(seed)
    lk = lq if lk is None else lk
    q = (0.7 * torch.randn(1, 1, lq, D, generator=g, dtype=DT)).requires_grad_()
    k = (0.7 * torch.randn(1, 1, lk, D, generator=g, dtype=DT)).requires_grad_()
    v = torch.randn(1, 1, lk, DV, generator=g, dtype=DT, requires_grad=True)
    w = orthogonal_projection(M, D, generator=generator(seed + 1), dtype=DT).requires_grad_()
    return q, k, v, w


def _gradgradcheck(fn, inputs) -> None:
    """The second derivatives against finite differences of the first, and the first
    derivatives taken with ``create_graph=True`` equal to the usual ones: gradgradcheck alone
    would accept a differentiable backward that computes a wrong first derivative (e.g. one
    that counts a path from one input to another twice)."""
    outputs = fn(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    weights = [torch.randn(out.shape, generator=generator(9), dtype=DT) for out in outputs]
    loss = sum((out * weight).sum() for out, weight in zip(outputs, weights, strict=True))
    usual = torch.autograd.grad(loss, inputs, retain_graph=True)
    with_graph = torch.autograd.grad(loss, inputs, create_graph=True)
    for got, expected in zip(with_graph, usual, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def _true_state(state: FavorState) -> tuple[torch.Tensor, torch.Tensor]:
    """``kv·e^offset`` and ``z·e^offset``: the state itself, whatever units it is kept in. Its
    tensors are differentiated at a fixed offset (a detached stabilizer, which moves with the
    keys when a new key is the largest): only this product is a function finite differences
    can check."""
    scale = torch.exp(state.log_offset)
    return state.kv * scale[..., None, None], state.normalizer * scale[..., None]


@pytest.mark.parametrize("kernel", ["softmax", "softmax-hyperbolic", "gaussian"])
def test_bidirectional_fused(kernel):
    def fn(q, k, v, w):
        return _favor_attention(q, k, v, w, kernel=kernel, block_size=2, path="fused")

    _gradgradcheck(fn, _inputs(4))


def test_bidirectional_fused_padded_cross_attention_recomputing_features():
    inputs = _inputs(3, lk=5)
    mask = torch.tensor([[False, True, False, False, True]])

    def fn(q, k, v, w):
        return _favor_attention(
            q, k, v, w, key_padding_mask=mask, block_size=2, recompute_features=True, path="fused"
        )

    _gradgradcheck(fn, inputs)


def _state(seed: int = 5) -> FavorState:
    """A state of a preceding prefix, its tensors differentiable (inputs of the check). Its keys
    are small, so that the keys after it raise the running offset (the units of the state)."""
    q, k, v, w = (t.detach() for t in _inputs(3, seed=seed))
    _, state = _favor_attention(q, 0.2 * k, v, w, causal=True, return_state=True, path="fused")
    return FavorState(state.kv.requires_grad_(), state.normalizer.requires_grad_(), state.log_offset)


@pytest.mark.parametrize("path", ["fused", "generic"])
@pytest.mark.parametrize("with_state", [False, True])
def test_causal(path, with_state):
    # Length 5 in chunks of 2 and segments of one chunk: a tail chunk, several segments.
    q, k, v, w = _inputs(5)
    mask = torch.tensor([[False, False, True, False, False]])
    previous = _state()
    options = dict(causal=True, chunk_size=2, segment_chunks=1, key_padding_mask=mask, path=path)

    if not with_state:
        _gradgradcheck(lambda q, k, v, w: _favor_attention(q, k, v, w, **options), (q, k, v, w))
        return

    def fn(q, k, v, w, kv, normalizer):
        initial = FavorState(kv, normalizer, previous.log_offset)
        out, state = _favor_attention(q, k, v, w, initial_state=initial, return_state=True, **options)
        return out, *_true_state(state)

    _gradgradcheck(fn, (q, k, v, w, previous.kv, previous.normalizer))


@pytest.mark.parametrize("kernel", ["favor++", "relu", "softmax"])
def test_bidirectional_generic(kernel):
    _gradgradcheck(lambda q, k, v, w: _favor_attention(q, k, v, w, kernel=kernel, path="generic"), _inputs(4))


@pytest.mark.parametrize("inplace", [False, True])
def test_decode_step(inplace):
    q, k, v, w = _inputs(1)
    previous = _state()

    def fn(q, k, v, w, kv, normalizer):
        state = FavorState(kv, normalizer, previous.log_offset)
        out, new = favor_attention_step(q, k, v, state, w, backend="torch", inplace=inplace)
        return out, *_true_state(new)

    _gradgradcheck(fn, (q, k, v, w, previous.kv, previous.normalizer))


def test_gradient_penalty_matches_the_naive_reference():
    """The issue's case: ∂/∂k of ‖∂L/∂q‖² (a gradient penalty) on the default (fused) paths
    equals the same derivative of the quadratic reference. Both compute one function in float64
    from terms of size ≤ 1 (L = 6, M = 4): their difference is rounding, ~1e-15 relative,
    amplified by a few orders through the two derivatives; 1e-9 leaves a wide margin while a
    derivative that misses the dependence of the forward's intermediates is off by O(1)."""
    q, k, v, w = _inputs(6, seed=3)
    weights = torch.randn(1, 1, 6, DV, generator=generator(7), dtype=DT)

    def penalty_grad(attention, causal):
        out = attention(q, k, v, w, causal=causal)
        (grad_q,) = torch.autograd.grad((out * weights).sum(), q, create_graph=True)
        return torch.autograd.grad(grad_q.square().sum(), (k, v, w))

    for causal in (False, True):
        fused = penalty_grad(lambda *a, **o: _favor_attention(*a, block_size=2, chunk_size=2, **o), causal)
        naive = penalty_grad(naive_favor_attention, causal)
        for got, expected in zip(fused, naive, strict=True):
            scale = expected.abs().max().item()
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * scale)


def _penalty_grads(fn, inputs) -> tuple[torch.Tensor, ...]:
    """∂/∂inputs of ``Σ ‖∂L/∂x‖²`` over every input ``x``, for ``L`` a fixed weighting of the
    outputs: every second derivative of ``fn`` enters (a Hessian-vector product per input)."""
    outputs = fn(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    weights = [torch.randn(out.shape, generator=generator(11), dtype=DT) for out in outputs]
    loss = sum((out * weight).sum() for out, weight in zip(outputs, weights, strict=True))
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    return torch.autograd.grad(sum(g.square().sum() for g in grads), inputs)


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [False, True])
def test_triton(kernel, causal):
    """The Triton kernels (on CPU under the interpreter, where every launch is slow): first
    derivatives with create_graph=True equal their own backward's, and second derivatives
    equal those of the PyTorch path (checked by gradgradcheck above) — both compute one
    function in float64 from terms of size ≤ 1, so they agree to rounding (1e-9 leaves a wide
    margin; a derivative that misses a dependence is off by O(1))."""
    pytest.importorskip("triton")
    from performers.ops.triton import triton_unavailable_reason

    if triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("the Triton kernels need TRITON_INTERPRET=1 on CPU")
    q, k, v, w = _inputs(4)
    mask = torch.tensor([[False, True, False, False]])
    previous = _state()
    inputs = (q, k, v, w) + ((previous.kv, previous.normalizer) if causal else ())

    def attention(backend):
        options = dict(kernel=kernel, key_padding_mask=mask, backend=backend, causal=causal)

        def fn(q, k, v, w, kv=None, normalizer=None):
            if not causal:
                return _favor_attention(q, k, v, w, **options)
            initial = FavorState(kv, normalizer, previous.log_offset)
            out, state = _favor_attention(q, k, v, w, initial_state=initial, return_state=True, **options)
            return out, *_true_state(state)

        return fn

    triton = attention("triton")
    outputs = triton(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = sum((out * torch.randn(out.shape, generator=generator(9), dtype=DT)).sum() for out in outputs)
    usual = torch.autograd.grad(loss, inputs, retain_graph=True)
    with_graph = torch.autograd.grad(loss, inputs, create_graph=True)
    for got, expected in zip(with_graph, usual, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    for got, expected in zip(
        _penalty_grads(triton, inputs), _penalty_grads(attention("torch"), inputs), strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())


def test_triton_causal_recomputation_does_not_depend_on_its_chunks():
    """The Triton kernels' chunks are at least 16 positions, so test_triton reads one chunk:
    here the recomputation behind their second derivatives, over several chunks (a tail
    included) and over one, from an initial state, gives one result."""
    pytest.importorskip("triton")
    from performers.ops.numerics import key_offsets
    from performers.ops.triton.causal import _causal_graph

    q, k, v, w = (t.detach() for t in _inputs(7))
    previous = _state()
    pad = torch.tensor([[0, 0, 1, 0, 0, 0, 0]], dtype=torch.int8)
    log = torch.matmul(k, w.t()) - 0.5 * k.square().sum(-1, keepdim=True)
    masked = log.masked_fill(pad.bool()[:, None, :, None], -torch.inf)
    offsets, _ = key_offsets(masked, causal=True, start=previous.log_offset)
    state = (previous.kv.detach(), previous.normalizer.detach(), previous.log_offset)
    every = [
        _causal_graph(q, k, v, w, *state, offsets, pad, 0.5, 0, 0.0, 1e-300, chunk) for chunk in (2, 3, 7)
    ]
    for result in every[:-1]:
        for got, expected in zip(result, every[-1], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
