"""The kernel registry: behaviour comes from a Kernel's fields (never from function identity)."""

from dataclasses import replace

import pytest
import torch

from performers.ops import (
    KERNELS,
    FeatureMapOutput,
    Kernel,
    feature_map,
    naive_favor_attention,
    orthogonal_projection,
    register_kernel,
)
from performers.ops.features import exp_log_features
from tests.helpers.numerics import generator

DT = torch.float64
W = orthogonal_projection(6, 4, generator=generator(1), dtype=DT)


def test_feature_dim_is_the_feature_width_and_num_features_is_gone():
    # ``num_features`` means M (projection rows) everywhere else in the project; M' is feature_dim.
    assert KERNELS["softmax"].feature_dim(W, 4) == 6
    assert KERNELS["softmax-hyperbolic"].feature_dim(W, 4) == 12
    assert KERNELS["trig"].feature_dim(W, 4) == 12
    assert KERNELS["relu"].feature_dim(None, 4) == 4
    assert not hasattr(Kernel, "num_features")
    for name, kern in KERNELS.items():
        x = torch.randn(3, 4, dtype=DT)
        params = None if kern.parameters is None else -0.1
        width = feature_map(x, W, kern, params).shape[-1]
        assert width == kern.feature_dim(W, 4), name


@pytest.mark.parametrize("name", [name for name, kern in KERNELS.items() if kern.exp_form is not None])
def test_exp_form_describes_the_same_map_as_fn(name):
    # The fused paths use exp_form, the naive reference uses fn: they must be one map.
    kern = KERNELS[name]
    x = torch.randn(2, 5, 4, generator=generator(2), dtype=DT)
    form = kern.exp_form(W)
    via_form = FeatureMapOutput(log=exp_log_features(x, *form), linear=None).materialize()
    torch.testing.assert_close(via_form, kern(x, W).materialize(), rtol=1e-13, atol=0)


def test_a_user_kernel_gets_the_parameter_check_of_favor_plus_plus():
    # feature_map used to pick FAVOR++'s check of A by function identity: a kernel wrapping the
    # same map (or registered by a user) silently skipped it and returned NaN features.
    favor = KERNELS["favor++"]
    mine = replace(favor, name="my-favor++", fn=lambda x, w, a: favor.fn(x, w, a))
    x = torch.randn(1, 3, 4, dtype=DT)
    with pytest.raises(ValueError, match=r"A must be < 1/4"):
        feature_map(x, W, mine, 0.3)
    torch.testing.assert_close(feature_map(x, W, mine, -0.2), feature_map(x, W, "favor++", -0.2))
    # Without check_params nothing is checked (the attention path never checks: no host sync).
    unchecked = replace(mine, check_params=None)
    assert torch.isnan(feature_map(x, W, unchecked, 0.3)).all()


def test_registered_kernels_work_everywhere_by_name():
    mine = register_kernel(replace(KERNELS["gaussian"], name="test-gaussian-copy"))
    try:
        q, k, v = (torch.randn(1, 2, 7, 4, generator=generator(s), dtype=DT) for s in range(3))
        out = naive_favor_attention(q, k, v, W, kernel="test-gaussian-copy", causal=True)
        torch.testing.assert_close(out, naive_favor_attention(q, k, v, W, kernel=mine, causal=True))
        with pytest.raises(ValueError, match="already registered"):
            register_kernel(mine)
        with pytest.raises(TypeError, match="kernel must be a Kernel"):
            register_kernel("softmax")
    finally:
        del KERNELS["test-gaussian-copy"]
