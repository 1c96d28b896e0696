"""Exact identities of FAVOR attention (float64 unless stated)."""

import pytest
import torch

from performers import (
    exact_attention,
    favor_attention,
    favor_attention_step,
    feature_map,
    gaussian_projection,
    linear_attention,
    orthogonal_projection,
)
from performers.ops import get_kernel, kernel_attention, naive_favor_attention
from performers.ops.attention import _favor_attention
from performers.ops.features import stabilize_keys, stabilize_queries
from tests.helpers.numerics import generator

DT = torch.float64
ALL_KERNELS = ["softmax", "softmax-hyperbolic", "trig", "relu", "elu", "abs", "exp"]


def inputs(b=2, h=3, lq=37, lk=None, d=8, dv=5, dtype=DT, seed=0, norm=1.0):
    g = generator(seed)
    lk = lq if lk is None else lk
    q = norm * torch.randn(b, h, lq, d, generator=g, dtype=dtype)
    k = norm * torch.randn(b, h, lk, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, lk, dv, generator=g, dtype=dtype)
    return q, k, v


def projection(m=32, d=8, dtype=DT, seed=1):
    return orthogonal_projection(m, d, generator=generator(seed), dtype=dtype)


def explicit(q, k, v, w, kernel, causal, mask=None, scale=None):
    """The naive quadratic reference (performers.ops.naive), positional shorthand."""
    return naive_favor_attention(q, k, v, w, causal=causal, kernel=kernel, scale=scale, key_padding_mask=mask)


@pytest.mark.parametrize("kernel", ALL_KERNELS)
@pytest.mark.parametrize("causal", [False, True])
def test_linear_form_equals_explicit_quadratic_form(kernel, causal):
    q, k, v = inputs()
    w = projection()
    out = favor_attention(q, k, v, w, causal=causal, kernel=kernel, chunk_size=8)
    torch.testing.assert_close(out, explicit(q, k, v, w, kernel, causal), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel", ["relu", "elu", "abs"])
@pytest.mark.parametrize("causal", [False, True])
def test_generalized_without_projection_is_exact_kernel_attention(kernel, causal):
    q, k, v = inputs()
    out = favor_attention(q, k, v, None, causal=causal, kernel=kernel, chunk_size=5)
    torch.testing.assert_close(out, explicit(q, k, v, None, kernel, causal), rtol=1e-10, atol=1e-10)


def test_callable_kernel_and_custom_scale():
    q, k, v = inputs()
    w = projection()
    out = favor_attention(q, k, v, w, kernel=torch.sigmoid, scale=0.3)
    torch.testing.assert_close(out, explicit(q, k, v, w, torch.sigmoid, False, scale=0.3))


def test_cross_attention_lengths_differ():
    q, k, v = inputs(lq=11, lk=29)
    w = projection()
    out = favor_attention(q, k, v, w)
    assert out.shape == (2, 3, 11, 5)
    torch.testing.assert_close(out, explicit(q, k, v, w, "softmax", False))


@pytest.mark.parametrize("length,chunk", [(1, 64), (7, 3), (64, 64), (65, 64), (100, 1), (37, 200)])
@pytest.mark.parametrize("kernel", ["softmax", "trig", "relu"])
def test_causal_chunking_any_length(length, chunk, kernel):
    q, k, v = inputs(lq=length)
    w = projection()
    out = favor_attention(q, k, v, w, causal=True, kernel=kernel, chunk_size=chunk)
    torch.testing.assert_close(out, explicit(q, k, v, w, kernel, True), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel", ["softmax", "softmax-hyperbolic", "trig", "relu"])
def test_recurrent_step_equals_parallel(kernel):
    q, k, v = inputs(lq=23)
    w = projection()
    parallel, final = favor_attention(q, k, v, w, causal=True, kernel=kernel, chunk_size=4, return_state=True)
    state, outs = None, []
    for t in range(q.shape[2]):
        out, state = favor_attention_step(
            q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state, w, kernel=kernel
        )
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), parallel, rtol=1e-9, atol=1e-9)
    assert state.kernel == final.kernel  # the name, beside the tensors
    for a, b in zip(state[:4], final[:4], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_prefill_then_continue_equals_full():
    q, k, v = inputs(lq=50)
    w = projection()
    full = favor_attention(q, k, v, w, causal=True, chunk_size=8)
    head, state = favor_attention(
        q[:, :, :21], k[:, :, :21], v[:, :, :21], w, causal=True, chunk_size=8, return_state=True
    )
    tail = favor_attention(
        q[:, :, 21:], k[:, :, 21:], v[:, :, 21:], w, causal=True, chunk_size=8, initial_state=state
    )
    torch.testing.assert_close(torch.cat([head, tail], 2), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel", ["softmax", "softmax-hyperbolic", "trig", "relu"])
def test_future_tokens_never_change_past_outputs_bitwise(kernel):
    # float32, stabilizer on, positions 0..t unchanged while t+1.. are replaced by larger inputs
    # (which raise the running maximum of the key stabilizer at the next positions).
    q, k, v = inputs(lq=90, dtype=torch.float32)
    w = projection(dtype=torch.float32)
    for t in (0, 13, 31, 32, 63, 88):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        g = generator(t)
        q2[:, :, t + 1 :] = 3 * torch.randn(q2[:, :, t + 1 :].shape, generator=g)
        k2[:, :, t + 1 :] = 3 * torch.randn(k2[:, :, t + 1 :].shape, generator=g)
        v2[:, :, t + 1 :] = 3 * torch.randn(v2[:, :, t + 1 :].shape, generator=g)
        a = favor_attention(q, k, v, w, causal=True, kernel=kernel, chunk_size=32)
        b = favor_attention(q2, k2, v2, w, causal=True, kernel=kernel, chunk_size=32)
        assert torch.equal(a[:, :, : t + 1], b[:, :, : t + 1])
        assert not torch.equal(a[:, :, t + 1 :], b[:, :, t + 1 :])


@pytest.mark.parametrize("kernel", ALL_KERNELS)
@pytest.mark.parametrize("causal", [False, True])
def test_constant_values_give_ones(kernel, causal):
    q, k, _ = inputs()
    v = torch.ones(2, 3, 37, 4, dtype=DT)
    out = favor_attention(q, k, v, projection(), causal=causal, kernel=kernel, chunk_size=8)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_one_hot_values_recover_stochastic_attention_matrix(causal):
    # V = I_L returns the implied attention matrix (the paper's App. C.4 trick).
    q, k, _ = inputs(lq=20)
    eye = torch.eye(20, dtype=DT).expand(2, 3, 20, 20)
    attn = favor_attention(q, k, eye, projection(), causal=causal, chunk_size=6)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 20, dtype=DT))
    if causal:
        assert torch.equal(attn.triu(1), torch.zeros_like(attn))


@pytest.mark.parametrize("causal", [False, True])
def test_stabilizers_cancel_exactly(causal):
    # Outputs with the stabilizers equal the unstabilized formula (plain exp features).
    q, k, v = inputs(norm=2.0)
    w = projection()
    s = 8**-0.25
    plain_q = feature_map(q * s, w)
    plain_k = feature_map(k * s, w)
    reference = linear_attention(plain_q, plain_k, v, causal=causal, chunk_size=8)
    out = favor_attention(q, k, v, w, causal=causal, chunk_size=8)
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    # Where the plain features underflow in float32 (‖x·D^{-1/4}‖ ≈ 13: every exp(ωᵀx - ‖x‖²/2)
    # of a token is tiny), the unstabilized formula is wrong and the stabilized one is not.
    big_q, big_k, v32, w32 = 4 * q.float(), 4 * k.float(), v.float(), w.float()
    ref64 = explicit(4 * q, 4 * k, v, w, "softmax", causal)
    plain32 = linear_attention(feature_map(big_q * s, w32), feature_map(big_k * s, w32), v32, causal=causal)
    assert (plain32.double() - ref64).abs().max() > 0.5
    out32 = favor_attention(big_q, big_k, v32, w32, causal=causal, chunk_size=8)
    # float32 rounding of exponents of size ~100 gives relative feature errors ~1e-5.
    torch.testing.assert_close(out32.double(), ref64, rtol=1e-4, atol=1e-4)


def test_per_key_stabilizer_would_not_cancel():
    # Negative control: dividing each key by its own maximum changes the output.
    q, k, v = inputs(norm=2.0)
    w = projection()
    s = 8**-0.25
    kern = get_kernel("softmax")
    qf = stabilize_queries(kern(q * s, w))
    log = kern(k * s, w).log
    per_key = torch.exp(log - log.amax(-1, keepdim=True))
    kf, _ = stabilize_keys(kern(k * s, w), causal=False)
    good = linear_attention(qf, kf, v)
    bad = linear_attention(qf, per_key, v)
    torch.testing.assert_close(good, favor_attention(q, k, v, w))
    assert (good - bad).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["softmax", "trig", "relu"])
def test_padded_keys_have_no_influence(causal, kernel):
    q, k, v = inputs(lq=30)
    w = projection()
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, 25:] = True  # right padding
    mask[1, :4] = True  # left padding
    out = favor_attention(q, k, v, w, causal=causal, kernel=kernel, key_padding_mask=mask, chunk_size=8)
    k2, v2 = k.clone(), v.clone()
    k2[mask[:, None, :, None].expand_as(k2)] = 50.0  # garbage far above the real keys
    v2[mask[:, None, :, None].expand_as(v2)] = 1e6
    out2 = favor_attention(q, k2, v2, w, causal=causal, kernel=kernel, key_padding_mask=mask, chunk_size=8)
    assert torch.equal(out, out2)
    torch.testing.assert_close(out, explicit(q, k, v, w, kernel, causal, mask=mask), rtol=1e-9, atol=1e-9)
    if not causal:  # the right-padded sample equals attention over its unpadded keys
        trimmed = favor_attention(q[:1], k[:1, :, :25], v[:1, :, :25], w, kernel=kernel)
        torch.testing.assert_close(out[:1], trimmed)
    else:  # left-padded queries before any real key see nothing: output 0
        assert torch.equal(out[1, :, :4], torch.zeros_like(out[1, :, :4]))


def test_linear_attention_padding_and_states():
    _, _, v = inputs(lq=16)
    qf, kf = torch.rand(2, 3, 16, 6, dtype=DT), torch.rand(2, 3, 16, 6, dtype=DT)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, -3:] = True
    out = linear_attention(qf, kf, v, key_padding_mask=mask)
    torch.testing.assert_close(out, kernel_attention(qf, kf, v, key_padding_mask=mask))
    full = linear_attention(qf, kf, v, causal=True, chunk_size=4)
    a, state = linear_attention(qf[:, :, :9], kf[:, :, :9], v[:, :, :9], causal=True, return_state=True)
    b = linear_attention(qf[:, :, 9:], kf[:, :, 9:], v[:, :, 9:], causal=True, initial_state=state)
    torch.testing.assert_close(torch.cat([a, b], 2), full)


def test_default_scale_is_inverse_sqrt_d():
    q, k, v = inputs()
    w = gaussian_projection(16, 8, generator=generator(2), dtype=DT)
    torch.testing.assert_close(favor_attention(q, k, v, w), favor_attention(q, k, v, w, scale=8**-0.5))


def test_converges_to_exact_softmax_attention():
    # Error of the attention output falls with M (ratio far from 1 for a 16x increase in M).
    q, k, v = inputs(lq=64, d=16, norm=0.5)
    errors = []
    for m in (64, 1024):
        w = orthogonal_projection(m, 16, generator=generator(m), dtype=DT)
        errors.append((favor_attention(q, k, v, w) - exact_attention(q, k, v)).pow(2).mean().sqrt())
    assert errors[1] < errors[0] / 2
    assert errors[1] < 0.05


@pytest.mark.parametrize("kernel", ["softmax", "softmax-hyperbolic"])
@pytest.mark.parametrize("block", [1, 5, 64])
def test_blockwise_bidirectional_matches_explicit(kernel, block):
    # The fused path streams keys in blocks with a running maximum; any block size agrees.
    q, k, v = inputs(lq=13, lk=29, norm=1.5)
    w = projection()
    mask = torch.zeros(2, 29, dtype=torch.bool)
    mask[0, 20:] = True
    mask[1, :7] = True
    out = favor_attention(q, k, v, w, kernel=kernel, key_padding_mask=mask, block_size=block)
    torch.testing.assert_close(out, explicit(q, k, v, w, kernel, False, mask=mask), rtol=1e-10, atol=1e-10)


def test_blockwise_all_keys_padded_gives_zero_and_finite_gradients():
    q, k, v = (t.requires_grad_() for t in inputs(lq=6))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1] = True
    out = favor_attention(q, k, v, projection(), key_padding_mask=mask, block_size=4)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("kernel", ["softmax", "trig", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, DT])
def test_queries_without_visible_keys_give_zero_and_finite_gradients(kernel, dtype):
    # Causal left padding: the first positions of sample 1 see no key at all.
    q, k, v = (t.requires_grad_() for t in inputs(lq=12, dtype=dtype))
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[1, :5] = True
    out = favor_attention(q, k, v, projection(dtype=dtype), causal=True, kernel=kernel, key_padding_mask=mask)
    assert torch.equal(out[1, :, :5], torch.zeros_like(out[1, :, :5]))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("segment_chunks", [1, 3])
def test_fused_causal_segments_match_explicit(segment_chunks):
    q, k, v = inputs(lq=45, norm=1.5)
    w = projection()
    out = _favor_attention(q, k, v, w, path="fused", segment_chunks=segment_chunks, causal=True, chunk_size=4)
    torch.testing.assert_close(out, explicit(q, k, v, w, "softmax", True), rtol=1e-10, atol=1e-10)
