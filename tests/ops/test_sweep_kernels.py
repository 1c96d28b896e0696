"""The generalized kernels of the paper's Appendix D.3 sweep (sigmoid, GELU, tanh, cos, identity):
their closed forms, and every path (bidirectional, causal, decode step) against the quadratic
reference in float64."""

import pytest
import torch
import torch.nn.functional as F

from performers import favor_attention, favor_attention_step, feature_map, get_kernel, orthogonal_projection
from performers.ops.features import GENERALIZED_EPS
from performers.ops.naive import naive_favor_attention
from tests.helpers.numerics import generator

CLOSED_FORMS = {
    "sigmoid": torch.sigmoid,
    "gelu": lambda u: 0.5 * u * (1 + torch.erf(u / 2**0.5)),
    "tanh": torch.tanh,
    "cos": torch.cos,
    "identity": lambda u: u,
}


def _inputs(length=29, dim=8, seed=0):
    g = generator(seed)
    q, k, v = (torch.randn(2, 3, length, dim, generator=g, dtype=torch.float64) for _ in range(3))
    return q, k, v, orthogonal_projection(16, dim, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_features_are_the_closed_form_of_the_projection(name):
    q, _, _, w = _inputs()
    u = q @ w.T
    torch.testing.assert_close(feature_map(q, w, name), CLOSED_FORMS[name](u) + GENERALIZED_EPS)
    # Registry metadata: only sigmoid keeps every feature positive among the new names.
    assert get_kernel(name).nonnegative == (name == "sigmoid")
    assert torch.allclose(CLOSED_FORMS["gelu"](u), F.gelu(u))


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
@pytest.mark.parametrize("causal", [False, True])
def test_every_path_equals_the_quadratic_reference(name, causal):
    q, k, v, w = _inputs()
    out = favor_attention(q, k, v, w, kernel=name, causal=causal, chunk_size=8)
    reference = naive_favor_attention(q, k, v, w, kernel=name, causal=causal)
    # Features of either sign: a row's normalizer can be small, so the error is relative to the
    # largest output (float64 sums in different orders).
    torch.testing.assert_close(out, reference, rtol=1e-7, atol=1e-9 * reference.abs().max().item())


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_decode_steps_equal_the_parallel_causal_pass(name):
    q, k, v, w = _inputs(length=12)
    parallel = favor_attention(q, k, v, w, kernel=name, causal=True)
    state, steps = None, []
    for t in range(q.shape[2]):
        out, state = favor_attention_step(
            q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state, w, kernel=name
        )
        steps.append(out)
    stepped = torch.cat(steps, dim=2)
    torch.testing.assert_close(stepped, parallel, rtol=1e-7, atol=1e-9 * parallel.abs().max().item())
