"""``torch.compile(dynamic=True)`` of FAVOR attention: one graph serves every sequence length.

Recompilations are decided by dynamo's guards, not by the backend, so the counts use the cheap
``aot_eager`` backend (which also traces the backward) instead of inductor; what inductor gains
is measured by ``performers bench compile`` (docs/guides/attention.md, torch.compile)."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from performers import favor_attention, orthogonal_projection
from tests.helpers.numerics import generator

# Five lengths across the fused paths' block and chunk boundaries (64): below, at, above, and
# not multiples of them. (Sizes 0 and 1 are always specialized by dynamo.)
LENGTHS = (5, 9, 64, 70, 133)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def recompiles(compiled, eager, make_inputs, counter) -> int:
    """Run ``compiled`` forward and backward at every length of ``LENGTHS``, checking it against
    ``eager`` (outputs and input gradients); returns the graphs compiled after the first length."""
    first = None
    for length in LENGTHS:
        inputs = make_inputs(length)
        out = compiled(*inputs)
        grads = torch.autograd.grad(out.sum(), inputs)
        expected = eager(*inputs)
        expected_grads = torch.autograd.grad(expected.sum(), inputs)
        # The same operations in the same order (the compiled graph calls the eager paths, or
        # traces the bidirectional generic one op for op): equal up to float32 rounding.
        torch.testing.assert_close(out, expected)
        for grad, expected_grad in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, expected_grad)
        first = counter.frame_count if first is None else first
    return counter.frame_count - first


def qkv(length: int, d: int = 8):
    g = generator(length)
    return tuple(torch.randn(1, 2, length, d, generator=g, requires_grad=True) for _ in range(3))


@pytest.mark.parametrize("causal", [False, True])
def test_favor_attention_compiles_once_for_every_length(causal):
    # Softmax takes the fused paths (a Python loop over blocks of positions): the compiled graph
    # calls them as they run eagerly instead of unrolling the loop for each length.
    w = orthogonal_projection(16, 8, generator=generator(1))
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(favor_attention, backend=counter, dynamic=True)
    eager = lambda q, k, v: favor_attention(q, k, v, w, causal=causal)
    assert recompiles(lambda q, k, v: compiled(q, k, v, w, causal=causal), eager, qkv, counter) <= 1


def test_traced_generic_path_compiles_once_for_every_length():
    # A kernel without an exponential form takes the bidirectional generic path, which the
    # compiled graph traces (no Python loop): its shapes stay symbolic.
    w = orthogonal_projection(16, 8, generator=generator(1))
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(favor_attention, backend=counter, dynamic=True)
    mask = lambda length: torch.arange(length) >= length - 2  # two padded keys

    def run(fn, q, k, v):
        return fn(q, k, v, w, kernel="relu", key_padding_mask=mask(q.shape[2])[None])

    eager = lambda q, k, v: run(favor_attention, q, k, v)
    assert recompiles(lambda q, k, v: run(compiled, q, k, v), eager, qkv, counter) <= 1
    assert counter.op_count > 0  # the attention itself is in the graph
