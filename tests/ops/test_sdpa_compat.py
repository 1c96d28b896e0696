"""favor_attention takes F.scaled_dot_product_attention's keywords with their meaning there.

Parity with SDPA is checked at M = 16384 iid features in float64, within a tolerance derived
from Lemma 2 (theory.mse_positive): each kernel value is within δ of its relative size
(Z standard errors), so each output row, a weighted mean of the values, is within
``2δ/(1−δ)·max|v|`` of the exact one. The mask factoring itself is checked exactly, against the
same call with ``key_padding_mask`` / ``is_causal``.
"""

import pytest
import torch
import torch.nn.functional as F

from performers.ops import (
    FavorState,
    favor_attention,
    favor_attention_step,
    gaussian_projection,
    linear_attention,
    orthogonal_projection,
    theory,
)
from tests.helpers.numerics import Z, generator

DT = torch.float64
B, H, L, D = 2, 2, 6, 4
M = 16384


def _inputs(heads=H, kv_heads=None, lq=L, lk=L, seed=0, dtype=DT):
    g = generator(seed)
    q = 0.2 * torch.randn(B, heads, lq, D, generator=g, dtype=dtype)
    kv = heads if kv_heads is None else kv_heads
    k = 0.2 * torch.randn(B, kv, lk, D, generator=g, dtype=dtype)
    v = torch.randn(B, kv, lk, D, generator=g, dtype=dtype)
    return q, k, v


W = gaussian_projection(M, D, generator=generator(1), dtype=DT)


def _tolerance(q, k, v) -> float:
    """``2δ/(1−δ)·max|v|`` with ``δ`` = Z relative standard errors of the worst kernel value."""
    root = D**-0.25  # q and k enter the kernel as x·√scale, scale = 1/√D
    x, y = (q * root).unsqueeze(-2), (k * root).unsqueeze(-3)
    relative = theory.mse_positive(x, y, M).sqrt() / theory.softmax_kernel_value(x, y)
    delta = Z * relative.max().item()
    assert delta < 0.2, "the inputs must keep the estimator in its accurate range"
    return 2 * delta / (1 - delta) * v.abs().max().item()


def _padding():
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, -2:] = True  # right padding
    pad[1, 1] = True  # a hole (never the first key: no causal row is left without a key)
    return pad


def _check_sdpa(out, q, k, v, **sdpa_kwargs):
    expected = F.scaled_dot_product_attention(q, k, v, **sdpa_kwargs)
    tol = _tolerance(q, k, v)
    assert (out - expected).abs().max().item() < tol
    return expected, tol


def test_is_causal_matches_sdpa():
    q, k, v = _inputs()
    out = favor_attention(q, k, v, W, is_causal=True)
    _, tol = _check_sdpa(out, q, k, v, is_causal=True)
    # The tolerance tells causal from bidirectional attention: the test can fail.
    assert (out - F.scaled_dot_product_attention(q, k, v)).abs().max().item() > tol


def test_causal_is_the_older_spelling_and_both_is_an_error():
    q, k, v = _inputs()
    assert torch.equal(favor_attention(q, k, v, W, causal=True), favor_attention(q, k, v, W, is_causal=True))
    with pytest.raises(TypeError, match=r"is_causal.*causal, not both"):
        favor_attention(q, k, v, W, is_causal=True, causal=True)
    with pytest.raises(TypeError, match="not both"):
        linear_attention(q.exp(), k.exp(), v, is_causal=True, causal=False)


def _padding_masks():
    keep = ~_padding()
    triangle = torch.ones(L, L, dtype=torch.bool).tril()
    return {
        # (mask, the key padding it means, whether it implies causal attention)
        "(B, 1, 1, Lk)": (keep[:, None, None, :], False),
        "(B, 1, Lq, Lk) rows alike": (keep[:, None, None, :].expand(B, 1, L, L), False),
        "(B, H, 1, Lk) heads alike": (keep[:, None, None, :].expand(B, H, 1, L), False),
        "(B, 1, Lq, Lk) padding and triangle": (keep[:, None, None, :] & triangle, True),
    }


@pytest.mark.parametrize("form", list(_padding_masks()))
def test_accepted_masks_factor_into_key_padding(form):
    mask, causal = _padding_masks()[form]
    q, k, v = _inputs()
    out = favor_attention(q, k, v, W, attn_mask=mask)
    # Exactly the call with the factored key padding (the opposite convention) and causality.
    torch.testing.assert_close(
        out,
        favor_attention(q, k, v, W, key_padding_mask=_padding(), is_causal=causal),
        rtol=1e-13,
        atol=1e-13,
    )
    _, tol = _check_sdpa(out, q, k, v, attn_mask=mask)
    # SDPA with the mask read the other way round (True = blocked) is far outside the tolerance.
    assert (
        out - F.scaled_dot_product_attention(q, k, v, attn_mask=~mask & mask.any(-1, keepdim=True))
    ).abs().max() > tol


def test_two_dimensional_masks_are_sdpa_query_by_key():
    q, k, v = _inputs()
    triangle = torch.ones(L, L, dtype=torch.bool).tril()  # (Lq, Lk), as SDPA reads a 2-D mask
    out = favor_attention(q, k, v, W, attn_mask=triangle)
    torch.testing.assert_close(out, favor_attention(q, k, v, W, is_causal=True), rtol=1e-13, atol=1e-13)
    _check_sdpa(out, q, k, v, attn_mask=triangle)
    keys = ~_padding()[1]  # (Lk,): one key pattern for every batch and query
    torch.testing.assert_close(
        favor_attention(q, k, v, W, attn_mask=keys),
        favor_attention(q, k, v, W, key_padding_mask=_padding()[1].expand(B, L)),
        rtol=1e-13,
        atol=1e-13,
    )


def test_mask_combines_with_is_causal_and_key_padding_mask():
    q, k, v = _inputs()
    keep = ~_padding()
    extra = torch.zeros(B, L, dtype=torch.bool)
    extra[0, 2] = True
    out = favor_attention(
        q, k, v, W, attn_mask=keep[:, None, None, :], key_padding_mask=extra, is_causal=True
    )
    expected = favor_attention(q, k, v, W, key_padding_mask=_padding() | extra, is_causal=True)
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    "mask,error,pattern",
    [
        (torch.zeros(B, 1, 1, L), TypeError, r"attn_mask must be a bool tensor .*float mask is added to q·k"),
        (
            torch.ones(B, 1, L, L, dtype=torch.bool).triu(),
            ValueError,
            r"neither key padding .* causal lower triangle",
        ),
        (
            torch.ones(L, L, dtype=torch.bool).tril() & torch.ones(L, L, dtype=torch.bool).triu(-1),
            ValueError,
            r"neither key padding",
        ),  # a band (local attention): no FAVOR+ equivalent
        (
            torch.ones(B, 3, 1, L, dtype=torch.bool),
            ValueError,
            r"must broadcast to \(B, H, Lq, Lk\) = \(2, 2, 6, 6\)",
        ),
        (torch.ones(B, L, dtype=torch.bool), ValueError, r"must broadcast to"),  # SDPA reads (Lq, Lk)
        ([[True]], TypeError, r"attn_mask must be a torch.Tensor"),
    ],
)
def test_rejected_masks_say_why(mask, error, pattern):
    q, k, v = _inputs()
    with pytest.raises(error, match=pattern):
        favor_attention(q, k, v, W, attn_mask=mask)


def test_masks_that_differ_between_heads_or_triangles_of_cross_attention_are_refused():
    q, k, v = _inputs()
    per_head = torch.ones(B, H, 1, L, dtype=torch.bool)
    per_head[0, 1, 0, 3] = False
    with pytest.raises(ValueError, match="differs between heads"):
        favor_attention(q, k, v, W, attn_mask=per_head)
    q8, k8, v8 = _inputs(lq=4, lk=8)
    with pytest.raises(ValueError, match=r"needs Lq == Lk, got 4 and 8"):
        favor_attention(q8, k8, v8, W, attn_mask=torch.ones(4, 8, dtype=torch.bool).tril())


def test_dropout_p_is_accepted_as_zero_only():
    q, k, v = _inputs()
    assert torch.equal(favor_attention(q, k, v, W, dropout_p=0.0), favor_attention(q, k, v, W))
    with pytest.raises(ValueError, match="dropout_p must be 0"):
        favor_attention(q, k, v, W, dropout_p=0.1)


W_SMALL = orthogonal_projection(16, D, generator=generator(2), dtype=DT)


@pytest.mark.parametrize("kernel", ["softmax", "relu", "favor++"])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_equals_repeated_keys_and_values(kernel, causal):
    q, k, v = _inputs(heads=4, kv_heads=2)
    pad = _padding()
    out = favor_attention(
        q, k, v, W_SMALL, kernel=kernel, is_causal=causal, enable_gqa=True, key_padding_mask=pad
    )
    k4, v4 = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    expected = favor_attention(q, k4, v4, W_SMALL, kernel=kernel, is_causal=causal, key_padding_mask=pad)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_gqa_matches_sdpa_and_decodes_from_its_state():
    q, k, v = _inputs(heads=4, kv_heads=2)
    out = favor_attention(q, k, v, W, enable_gqa=True)
    _check_sdpa(out, q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    torch.testing.assert_close(
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)),
    )
    # Causal prefill then steps, k and v with their 2 heads: the parallel result, state of 4 heads.
    full = favor_attention(q, k, v, W_SMALL, is_causal=True, enable_gqa=True)
    head, state = favor_attention(
        q[:, :, :3], k[:, :, :3], v[:, :, :3], W_SMALL, is_causal=True, enable_gqa=True, return_state=True
    )
    assert state.kv.shape == (B, 4, 16, D)
    outs = [head]
    for t in range(3, L):
        out_t, state = favor_attention_step(
            q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state, W_SMALL, enable_gqa=True
        )
        outs.append(out_t)
    torch.testing.assert_close(torch.cat(outs, 2), full, rtol=1e-12, atol=1e-12)


def test_gqa_in_linear_attention():
    q, k, v = _inputs(heads=4, kv_heads=2)
    qf, kf = q.exp(), k.exp()
    for causal in (False, True):
        out = linear_attention(qf, kf, v, is_causal=causal, enable_gqa=True)
        expected = linear_attention(
            qf, kf.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=causal
        )
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_gqa_heads_must_divide_and_be_asked_for():
    q, k, v = _inputs(heads=4, kv_heads=3)
    with pytest.raises(ValueError, match=r"Hkv = 3\) to divide that of q \(H = 4\)"):
        favor_attention(q, k, v, W_SMALL, enable_gqa=True)
    q, k, v = _inputs(heads=4, kv_heads=2)
    with pytest.raises(ValueError, match=r"pass enable_gqa=True"):
        favor_attention(q, k, v, W_SMALL)


@pytest.mark.parametrize("which", ["k", "v"])
def test_mixed_dtypes_are_refused_as_sdpa_does(which):
    q, k, v = _inputs()
    tensors = {"q": q.float(), "k": k.float(), "v": v.float()}
    tensors[which] = tensors[which].double()
    with pytest.raises(RuntimeError, match="same dtype"):
        F.scaled_dot_product_attention(tensors["q"], tensors["k"], tensors["v"])
    with pytest.raises(TypeError, match=r"q, k and v must have the same dtype .*got q torch.float32"):
        favor_attention(tensors["q"], tensors["k"], tensors["v"], W)
    one = {name: t[:, :, :1] for name, t in tensors.items()}
    with pytest.raises(TypeError, match="same dtype"):
        favor_attention_step(one["q"], one["k"], one["v"], None, W)
    with pytest.raises(TypeError, match="same dtype"):
        linear_attention(tensors["q"].exp(), tensors["k"].exp(), tensors["v"])


def test_the_projection_dtype_never_sets_the_output_dtype():
    q, k, v = _inputs(dtype=torch.float32)
    assert favor_attention(q, k, v, W_SMALL).dtype == torch.float32  # float64 projection
    half = [t.bfloat16() for t in (q, k, v)]
    out = favor_attention(*half, W_SMALL.float(), is_causal=True)  # float32 projection, as autocast
    assert out.dtype == torch.bfloat16
    _, state = favor_attention(*half, W_SMALL.float(), is_causal=True, return_state=True)
    assert isinstance(state, FavorState) and state.kv.dtype == torch.float32
