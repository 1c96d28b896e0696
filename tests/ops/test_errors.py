"""Bad input raises ValueError/TypeError naming the argument and the expected shape."""

import math

import pytest
import torch

from performers.ops import (
    favor_attention,
    favor_attention_step,
    gaussian_hyperbolic_features,
    gaussian_positive_features,
    gaussian_trigonometric_features,
    generalized_features,
    get_kernel,
    hyperbolic_softmax_features,
    linear_attention,
    optimal_positive_features,
    orthogonal_projection,
    positive_softmax_features,
    trigonometric_softmax_features,
)

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
        ({"scale": -1.0}, ValueError, r"scale must be a positive finite number"),
        ({"scale": math.inf}, ValueError, r"scale must be a positive finite number, got inf"),
        ({"scale": math.nan}, ValueError, r"scale must be a positive finite number, got nan"),
        # A meta projection with CPU inputs used to return uninitialised memory.
        ({"projection": W.to("meta")}, ValueError, r"projection is on device meta but q is on cpu"),
        (
            {"key_padding_mask": torch.zeros(2, 10, dtype=torch.bool, device="meta")},
            ValueError,
            r"key_padding_mask is on device meta but q is on cpu",
        ),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be an int >= 1"),
        # A negative block size used to leave the fused loops empty and return uninitialised
        # memory; 0 silently meant "default"; True passed as 1.
        ({"block_size": -1}, ValueError, r"block_size must be None or an int >= 1, got -1"),
        ({"block_size": 0}, ValueError, r"block_size must be None or an int >= 1, got 0"),
        ({"block_size": True}, ValueError, r"block_size must be None or an int >= 1, got True"),
        ({"block_size": 2.0}, ValueError, r"block_size must be None or an int >= 1, got 2.0"),
        ({"return_state": True}, ValueError, r"only defined for is_causal=True"),
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


FEATURE_MAPS = [
    positive_softmax_features,
    hyperbolic_softmax_features,
    trigonometric_softmax_features,
    gaussian_positive_features,
    gaussian_hyperbolic_features,
    gaussian_trigonometric_features,
    lambda x, w: optimal_positive_features(x, w, -0.1),
]
FEATURE_MAP_NAMES = [
    "positive_softmax_features",
    "hyperbolic_softmax_features",
    "trigonometric_softmax_features",
    "gaussian_positive_features",
    "gaussian_hyperbolic_features",
    "gaussian_trigonometric_features",
    "optimal_positive_features",
]


@pytest.mark.parametrize("fn,name", list(zip(FEATURE_MAPS, FEATURE_MAP_NAMES, strict=True)))
def test_feature_maps_raise_typed_errors_not_asserts(fn, name):
    # These were `assert`s (AssertionError, and nothing at all under python -O).
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=rf"{name} needs a projection of shape \(M, D\), got None"):
        fn(x, None)
    with pytest.raises(ValueError, match=rf"{name} needs a projection of shape \(M, D\) matching x"):
        fn(x, torch.randn(4, 6))
    with pytest.raises(ValueError, match=rf"{name} needs a projection of shape \(M, D\) matching x"):
        fn(x, torch.randn(8))
    with pytest.raises(TypeError, match=rf"{name}: projection must be a torch.Tensor"):
        fn(x, [[1.0] * 8])


def test_generalized_features_check_a_given_projection():
    x = torch.randn(2, 5, 8)
    assert generalized_features(x, None, f=torch.relu).linear.shape == (2, 5, 8)
    with pytest.raises(
        ValueError, match=r"generalized_features needs a projection of shape \(M, D\) matching"
    ):
        generalized_features(x, torch.randn(4, 6), f=torch.relu)
