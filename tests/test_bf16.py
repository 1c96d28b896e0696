"""bfloat16 inputs on the fused bidirectional path: products in bfloat16, sums and maxima in
float32 (ops.bidirectional_fused). Compared with the float64 computation of the same estimator
on the same (bfloat16-valued) inputs, with tolerances derived from bfloat16's unit roundoff,
and with exact softmax attention against the float32 path's error."""

import pytest
import torch

from conftest import bf16_relative_bound
from performers import favor_attention, orthogonal_projection
from performers.ops.naive import exact_attention, naive_favor_attention


def _inputs(length=96, dim=32, features=64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, 3, length, dim, generator=g) * scale for _ in range(2))
    v = torch.randn(2, 3, length, dim, generator=g)
    w = orthogonal_projection(features, dim, generator=g)
    # Work on bfloat16 values throughout so that the reference sees the same inputs.
    return [t.bfloat16() for t in (q, k, v)], w.bfloat16()


def test_bf16_inputs_take_the_bf16_path_and_return_bf16():
    (q, k, v), w = _inputs()
    out = favor_attention(q, k, v, w.float())
    assert out.dtype == torch.bfloat16
    # float32 inputs are untouched by the bfloat16 path (bit for bit the float32 computation).
    out32 = favor_attention(q.float(), k.float(), v.float(), w.float())
    assert out32.dtype == torch.float32 and not torch.equal(out32.bfloat16(), out)


@pytest.mark.parametrize("kernel", ["softmax", "gaussian-hyperbolic"])
def test_bf16_outputs_and_gradients_within_derived_bounds(kernel):
    (q, k, v), w = _inputs()
    pad = torch.zeros(2, q.shape[2], dtype=torch.bool)
    pad[1, -9:] = True
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = favor_attention(*inputs, w.float(), kernel=kernel, key_padding_mask=pad)
    reference = [t.double().requires_grad_() for t in (q, k, v)]
    expected = naive_favor_attention(*reference, w.double(), kernel=kernel, key_padding_mask=pad)
    bound = bf16_relative_bound(q, k, 2.0 if "gaussian" in kernel else 1.0)
    assert (out.double() - expected).abs().max().item() <= bound * expected.abs().max().item()
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out.float() * g).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * g.double()).sum(), reference)
    for got, want in zip(grads, expected_grads, strict=True):
        # Backward recomputes the features and rounds its own products: twice the error.
        assert (got.double() - want).abs().max().item() <= 2 * bound * want.abs().max().item()


def test_bf16_error_against_exact_softmax_within_1_1x_of_float32():
    """The rounding is invisible next to the random-feature error (the issue's criterion)."""
    (q, k, v), _ = _inputs(length=256, dim=64, scale=0.5)
    exact = exact_attention(q.double(), k.double(), v.double())
    for features in (64, 256, 1024):
        w = orthogonal_projection(features, 64, generator=torch.Generator().manual_seed(features))

        def error(out):
            return ((out.double() - exact).norm() / exact.norm()).item()

        float32 = error(favor_attention(q.float(), k.float(), v.float(), w))
        bfloat16 = error(favor_attention(q, k, v, w))
        assert bfloat16 <= 1.1 * float32, (features, bfloat16, float32)
