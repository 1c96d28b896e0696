import pytest
import torch

from performers import favor_attention, orthogonal_projection
from tests.helpers.numerics import BF16_UNIT_ROUNDOFF, bf16_relative_bound, generator

KERNELS = ["softmax", "softmax-hyperbolic", "trig", "relu", "elu"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("causal", [False, True])
def test_large_norm_inputs_stay_finite_in_float32(kernel, causal):
    d = 64
    g = generator(0)
    q, k = (torch.randn(2, 4, 300, d, generator=g) for _ in range(2))
    # Scale so that ‖x‖·D^{-1/4} = 10 for every token.
    q = q / q.norm(dim=-1, keepdim=True) * 10 * d**0.25
    k = k / k.norm(dim=-1, keepdim=True) * 10 * d**0.25
    v = torch.randn(2, 4, 300, d, generator=g)
    w = orthogonal_projection(256, d, generator=g)
    out = favor_attention(q, k, v, w, causal=causal, kernel=kernel)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_half_precision_under_autocast_accumulates_in_float32(dtype, causal):
    g = generator(1)
    q, k, v = (torch.randn(2, 2, 100, 32, generator=g).to(dtype) for _ in range(3))
    w = orthogonal_projection(64, 32, generator=g)
    with torch.autocast("cpu", dtype=dtype):
        out = favor_attention(q, k, v, w, causal=causal)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    # The same computation done explicitly in float32 on the same (rounded) inputs — except
    # bfloat16 on the fused paths, whose products run in bfloat16 (sums in float32): their
    # first-order bound (the causal state's bfloat16 copy adds u), plus the reference's own
    # rounding to bfloat16.
    reference = favor_attention(q.float(), k.float(), v.float(), w, causal=causal).to(dtype)
    if dtype == torch.bfloat16:
        bound = bf16_relative_bound(q, k, norm=1.0) + (2 if causal else 1) * BF16_UNIT_ROUNDOFF
        error = (out.float() - reference.float()).abs().max().item()
        assert error <= bound * reference.float().abs().max().item()
    else:
        assert torch.equal(out, reference)
