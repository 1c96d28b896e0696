"""Bad input raises ValueError/TypeError naming the argument and the expected shape."""

import pytest
import torch

from performers import favor_attention, favor_attention_step, linear_attention, orthogonal_projection
from performers.ops import get_kernel

Q = torch.randn(2, 3, 10, 8)
W = orthogonal_projection(16, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        ({"q": torch.randn(3, 10, 8)}, ValueError, r"q must have shape \(B, H, L, D\)"),
        ({"v": torch.randn(2, 3, 10)}, ValueError, r"v must have shape \(B, H, L, D\)"),
        ({"k": torch.randn(1, 3, 10, 8)}, ValueError, r"batch and head sizes \(B, H\)"),
        ({"v": torch.randn(2, 4, 10, 8)}, ValueError, r"batch and head sizes \(B, H\)"),
        ({"k": torch.randn(2, 3, 10, 6)}, ValueError, r"same last dimension D"),
        ({"v": torch.randn(2, 3, 9, 8)}, ValueError, r"same length Lk"),
        (
            {"k": torch.randn(2, 3, 12, 8), "v": torch.randn(2, 3, 12, 8), "causal": True},
            ValueError,
            r"causal attention needs q and k of the same length L",
        ),
        ({"q": torch.randint(0, 5, (2, 3, 10, 8))}, TypeError, r"q must have a floating-point dtype"),
        ({"v": torch.ones(2, 3, 10, 8, dtype=torch.int32)}, TypeError, r"v must have a floating-point"),
        (
            {"key_padding_mask": torch.zeros(2, 9, dtype=torch.bool)},
            ValueError,
            r"key_padding_mask must have shape \(B, Lk\) = \(2, 10\)",
        ),
        ({"key_padding_mask": torch.zeros(2, 10)}, TypeError, r"key_padding_mask must be a bool tensor"),
        ({"projection": W[:0]}, ValueError, r"projection must have M >= 1 rows"),
        ({"projection": torch.randn(16, 6)}, ValueError, r"projection must have shape \(M, D\) with D = 8"),
        ({"projection": torch.randn(16)}, ValueError, r"projection must have shape \(M, D\)"),
        (
            {"projection": None},
            ValueError,
            r"kernel 'softmax' needs a projection of shape \(M, D\) with D = 8",
        ),
        ({"kernel": "laplace"}, ValueError, r"kernel: unknown name 'laplace'; known kernels are"),
        ({"kernel": 3}, TypeError, r"kernel must be a registry name"),
        ({"scale": -1.0}, ValueError, r"scale must be a positive number"),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be an int >= 1"),
        ({"return_state": True}, ValueError, r"only defined for causal=True"),
    ],
)
def test_favor_attention_rejects_bad_input(kwargs, error, pattern):
    args = {"q": Q, "k": Q, "v": Q, "projection": W, **kwargs}
    q, k, v, projection = args.pop("q"), args.pop("k"), args.pop("v"), args.pop("projection")
    with pytest.raises(error, match=pattern):
        favor_attention(q, k, v, projection, **args)


def test_step_and_linear_attention_errors():
    with pytest.raises(ValueError, match=r"one position: q must be \(B, H, 1, D\)"):
        favor_attention_step(Q, Q, Q, None, W)
    with pytest.raises(ValueError, match=r"k and v must have the same length Lk"):
        linear_attention(torch.rand(1, 1, 4, 3), torch.rand(1, 1, 4, 3), torch.rand(1, 1, 5, 2))
    with pytest.raises(ValueError, match="known kernels"):
        get_kernel("softmax_")
