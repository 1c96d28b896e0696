"""``torch.compile(dynamic=True)`` of the attention modules and a small model: no recompilation
per sequence length, forward and backward equal to eager. (Recompilations are decided by
dynamo's guards, so the cheap ``eager`` backend counts them; see tests/ops/test_compile.py.)"""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from performers import FavorAttention, FavorConfig, MultiheadFavorAttention, PerformerConfig, PerformerModel
from tests.helpers.numerics import generator
from tests.ops.test_compile import LENGTHS

FAVOR = FavorConfig(num_features=8, seed=0)
# The larger modules trace for seconds per graph: three lengths still cross the chunk size.
FEW_LENGTHS = (5, 70, 133)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def check_lengths(module, call, make_inputs, lengths=LENGTHS) -> int:
    """Compiled ``call(module, inputs)`` against eager at every length (output and the
    gradients of the inputs and parameters); returns the graphs compiled after the first length."""
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(module, backend=counter, dynamic=True)
    params = [p for p in module.parameters() if p.requires_grad]
    first = None
    for length in lengths:
        inputs = make_inputs(length)
        leaves = [t for t in inputs if t.requires_grad] + params
        results = []
        for fn in (compiled, module):
            out = call(fn, inputs)
            results.append((out, torch.autograd.grad(out.square().sum(), leaves)))
        (out, grads), (expected, expected_grads) = results
        torch.testing.assert_close(out, expected)
        for grad, expected_grad in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, expected_grad)
        first = counter.frame_count if first is None else first
    return counter.frame_count - first


def test_favor_attention_module_compiles_once():
    module = FavorAttention(4, FAVOR)

    def make(length):
        g = generator(length)
        return [torch.randn(2, 2, length, 4, generator=g, requires_grad=True) for _ in range(3)]

    assert check_lengths(module, lambda m, x: m(*x, causal=True), make) <= 1


def test_multihead_favor_attention_compiles_once():
    module = MultiheadFavorAttention(8, 2, batch_first=True, favor=FAVOR)

    def make(length):
        return [torch.randn(2, length, 8, generator=generator(length), requires_grad=True)]

    def call(m, x):
        return m(x[0], x[0], x[0], need_weights=False)[0]

    assert check_lengths(module, call, make, FEW_LENGTHS) <= 1


def test_performer_model_compiles_once():
    config = PerformerConfig(
        vocab_size=11, d_model=8, num_layers=1, num_heads=2, d_ff=16, dropout=0.0,
        max_position_embeddings=256, favor=FAVOR,
    )  # fmt: skip
    model = PerformerModel(config)

    def make(length):
        return [torch.randint(0, 11, (2, length), generator=generator(length))]

    def call(m, x):
        return m(x[0], is_causal=True).last_hidden_state

    assert check_lengths(model, call, make, FEW_LENGTHS) <= 1
