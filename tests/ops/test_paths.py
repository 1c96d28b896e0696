"""Every path of favor_attention against the naive references of its direction
(performers.ops.bidirectional.naive, performers.ops.causal.naive; built on performers.ops.naive).

Outputs and gradients (float64), path chosen by name through the private ``_favor_attention``;
float64 gradchecks of every hand-written backward (fused bidirectional, fused causal across
several segments with a partial last chunk, the fused stabilized features, the decayed prefix
scan), all with key padding.
"""

from dataclasses import replace

import pytest
import torch

from performers.ops import (
    KERNELS,
    favor_attention,
    favor_attention_step,
    feature_map,
    get_kernel,
    naive_favor_attention,
    orthogonal_projection,
)
from performers.ops.attention import _favor_attention
from performers.ops.bidirectional.naive import naive_bidirectional_attention
from performers.ops.causal.generic import decayed_prefix_scan
from performers.ops.causal.naive import naive_causal_attention, naive_recurrent_linear_attention
from performers.ops.features import stabilized_exp_features
from tests.helpers.numerics import generator

DT = torch.float64
EXP_KERNELS = [name for name, kern in KERNELS.items() if kern.exp_form is not None]
OTHER_KERNELS = [name for name, kern in KERNELS.items() if kern.exp_form is None]


def test_the_exponential_kernels_are_the_positive_and_hyperbolic_maps():
    assert EXP_KERNELS == ["softmax", "softmax-hyperbolic", "gaussian", "gaussian-hyperbolic"]


def inputs(b=2, h=2, lq=13, lk=None, d=4, dv=3, seed=0, requires_grad=False):
    g = generator(seed)
    lk = lq if lk is None else lk
    shapes = ((b, h, lq, d), (b, h, lk, d), (b, h, lk, dv))
    return tuple(torch.randn(s, generator=g, dtype=DT, requires_grad=requires_grad) for s in shapes)


def padding(b, length):
    """Right padding in sample 0, left padding in sample 1 (causally: queries that see nothing)."""
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[0, length - length // 4 :] = True
    if b > 1:
        mask[1, : length // 3] = True
    return mask


def projection(m=6, d=4, seed=1, requires_grad=False):
    return orthogonal_projection(m, d, generator=generator(seed), dtype=DT).requires_grad_(requires_grad)


# ---------------------------------------------------------------------------------------------
# Outputs


@pytest.mark.parametrize("kernel", EXP_KERNELS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("path", ["fused", "generic"])
def test_exponential_kernels_on_both_paths_equal_naive(kernel, causal, path):
    # Several fused blocks / segments and a partial last chunk (13 = 3·4 + 1).
    q, k, v = inputs(lq=13, lk=13 if causal else 17, d=8, dv=5)
    w = projection(m=16, d=8)
    mask = padding(2, k.shape[2])
    sizes = {"chunk_size": 4, "block_size": 5, "segment_chunks": 2}
    out = _favor_attention(
        q, k, v, w, path=path, causal=causal, kernel=kernel, key_padding_mask=mask, **sizes
    )
    expected = naive_favor_attention(q, k, v, w, causal=causal, kernel=kernel, key_padding_mask=mask)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel", [*OTHER_KERNELS, torch.sigmoid])
@pytest.mark.parametrize("causal", [False, True])
def test_generic_path_equals_naive_for_every_other_kernel(kernel, causal):
    q, k, v = inputs(lq=13, lk=13 if causal else 9, d=8, dv=5)
    w = projection(m=16, d=8)
    mask = padding(2, k.shape[2])
    out = _favor_attention(
        q,
        k,
        v,
        w,
        path="generic",
        causal=causal,
        kernel=kernel,
        key_padding_mask=mask,
        chunk_size=4,
        scale=0.3,
    )
    expected = naive_favor_attention(
        q, k, v, w, causal=causal, kernel=kernel, key_padding_mask=mask, scale=0.3
    )
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel", EXP_KERNELS)
def test_automatic_path_is_fused_where_it_can_be(kernel):
    q, k, v = inputs(lq=9)
    w = projection()
    for causal in (False, True):
        auto = favor_attention(q, k, v, w, causal=causal, kernel=kernel, chunk_size=4)
        fused = _favor_attention(q, k, v, w, path="fused", causal=causal, kernel=kernel, chunk_size=4)
        assert torch.equal(auto, fused)


@pytest.mark.parametrize("kernel", ["softmax", "gaussian-hyperbolic", "favor++", "trig"])
def test_recurrent_step_and_continuation_equal_naive(kernel):
    # The step path (causal.recurrent) and a continued state (generic causal path).
    q, k, v = inputs(lq=9)
    w = projection()
    expected = naive_favor_attention(q, k, v, w, causal=True, kernel=kernel)
    head, state = _favor_attention(
        q[:, :, :4],
        k[:, :, :4],
        v[:, :, :4],
        w,
        path="generic",
        causal=True,
        kernel=kernel,
        return_state=True,
    )
    tail = favor_attention(
        q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], w, causal=True, kernel=kernel, initial_state=state
    )
    torch.testing.assert_close(torch.cat([head, tail], 2), expected, rtol=1e-10, atol=1e-10)
    state, outs = None, []
    for t in range(9):
        out, state = favor_attention_step(
            q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state, w, kernel=kernel
        )
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), expected, rtol=1e-10, atol=1e-10)


def _true_sums(state):
    """A state's sums in units of exp(0)."""
    scale = torch.exp(state.log_offset)
    return state.kv * scale[..., None, None], state.normalizer * scale[..., None]


@pytest.mark.parametrize("kernel", ["softmax", "gaussian", "relu", "trig"])
def test_the_direction_references_and_the_causal_recurrence(kernel):
    # The references of each direction agree with the definitions; every causal path's output
    # and state (parallel, continued, stepped) agree with the recurrence they stand for.
    q, k, v = inputs(lq=9)
    w = projection()
    kern = get_kernel(kernel)
    root = q.shape[-1] ** -0.25
    q_features, k_features = feature_map(q * root, w, kern), feature_map(k * root, w, kern)
    expected, expected_state = naive_recurrent_linear_attention(q_features, k_features, v)
    torch.testing.assert_close(naive_causal_attention(q, k, v, w, kernel=kernel), expected)
    torch.testing.assert_close(
        naive_bidirectional_attention(q, k, v, w, kernel=kernel),
        naive_favor_attention(q, k, v, w, kernel=kernel),
    )
    head_out, head_state = naive_recurrent_linear_attention(
        q_features[:, :, :4], k_features[:, :, :4], v[:, :, :4]
    )
    tail_out, _ = naive_recurrent_linear_attention(
        q_features[:, :, 4:], k_features[:, :, 4:], v[:, :, 4:], initial_state=head_state
    )
    torch.testing.assert_close(torch.cat([head_out, tail_out], 2), expected)
    for path in ("fused", "generic") if kern.exp_form is not None else ("generic",):
        cut = [t[:, :, :4] for t in (q, k, v)], [t[:, :, 4:] for t in (q, k, v)]
        options = dict(path=path, causal=True, kernel=kernel, chunk_size=3, return_state=True)
        head, state = _favor_attention(*cut[0], w, **options)
        tail, state = _favor_attention(*cut[1], w, initial_state=state, **options)
        torch.testing.assert_close(torch.cat([head, tail], 2), expected, rtol=1e-10, atol=1e-10)
        for got, want in zip(_true_sums(state), expected_state[:2], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    state = None
    for t in range(9):
        _, state = favor_attention_step(
            q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state, w, kernel=kernel
        )
    for got, want in zip(_true_sums(state), expected_state[:2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Gradients: the paths against the naive reference, and gradchecks of the hand-written backwards


def _grads(fn, q, k, v, w):
    out = fn(q, k, v, w)
    weights = torch.linspace(-1, 1, out.numel(), dtype=DT).reshape(out.shape)
    return torch.autograd.grad((out * weights).sum(), (q, k, v, w))


@pytest.mark.parametrize(
    "kernel,path",
    [
        *((kern, p) for kern in EXP_KERNELS for p in ("fused", "generic")),
        ("trig", "generic"),
        ("favor++", "generic"),
    ],
)
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_equal_the_naive_gradients(kernel, path, causal):
    q, k, v = inputs(lq=11, lk=11 if causal else 7, requires_grad=True)
    w = projection(requires_grad=True)
    mask = padding(2, k.shape[2])

    def fast(q, k, v, w):
        sizes = {"chunk_size": 3, "block_size": 2, "segment_chunks": 2}
        return _favor_attention(
            q, k, v, w, path=path, causal=causal, kernel=kernel, key_padding_mask=mask, **sizes
        )

    def naive(q, k, v, w):
        return naive_favor_attention(q, k, v, w, causal=causal, kernel=kernel, key_padding_mask=mask)

    for got, expected in zip(_grads(fast, q, k, v, w), _grads(naive, q, k, v, w), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel", EXP_KERNELS)
def test_gradcheck_fused_bidirectional(kernel):
    q, k, v = inputs(b=2, lq=5, lk=7, requires_grad=True)
    w = projection(requires_grad=True)
    mask = padding(2, 7)

    def fn(q, k, v, w):
        return _favor_attention(q, k, v, w, path="fused", kernel=kernel, key_padding_mask=mask, block_size=2)

    assert torch.autograd.gradcheck(fn, (q, k, v, w))


@pytest.mark.parametrize("kernel", EXP_KERNELS)
@pytest.mark.parametrize(
    "length,chunk,segment_chunks",
    # 3 and 4 segments ending in a partial chunk (11 = 5·2 + 1 = 3·3 + 2); one whole chunk; one position
    [(11, 2, 2), (11, 3, 1), (6, 6, 16), (1, 4, 16)],
)
def test_gradcheck_fused_causal(kernel, length, chunk, segment_chunks):
    q, k, v = inputs(b=2, lq=length, requires_grad=True)
    w = projection(requires_grad=True)
    mask = padding(2, length)

    def fn(q, k, v, w):
        sizes = {"chunk_size": chunk, "segment_chunks": segment_chunks}
        return _favor_attention(
            q, k, v, w, path="fused", causal=True, kernel=kernel, key_padding_mask=mask, **sizes
        )

    assert torch.autograd.gradcheck(fn, (q, k, v, w))


@pytest.mark.parametrize("kernel", ["softmax", "gaussian-hyperbolic"])
def test_fused_causal_continues_a_state_with_gradients_through_both_states(kernel):
    # A prefix state (from the generic path) continued on the fused path: outputs, the final
    # state and the gradients through both states equal one generic pass; gradcheck in float64.
    q, k, v = inputs(b=2, lq=11, requires_grad=True)
    w = projection(requires_grad=True)
    mask = padding(2, 11)

    def run(q, k, v, w, path):
        head, state = _favor_attention(
            q[:, :, :4], k[:, :, :4], v[:, :, :4], w, path="generic", causal=True, kernel=kernel,
            key_padding_mask=mask[:, :4], return_state=True,
        )  # fmt: skip
        tail, final = _favor_attention(
            q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], w, path=path, causal=True, kernel=kernel,
            key_padding_mask=mask[:, 4:], initial_state=state, return_state=True, chunk_size=2,
            segment_chunks=2,
        )  # fmt: skip
        # The final state in absolute units (its offset is a stabilizer, not a value).
        scale = final.log_offset.exp()[..., None]
        return torch.cat([head, tail], 2), final.kv * scale[..., None], final.normalizer * scale

    fused, generic = run(q, k, v, w, "fused"), run(q, k, v, w, "generic")
    for a, b in zip(fused, generic, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    expected = naive_favor_attention(q, k, v, w, causal=True, kernel=kernel, key_padding_mask=mask)
    torch.testing.assert_close(fused[0], expected, rtol=1e-10, atol=1e-10)
    weights = [torch.linspace(-1, 1, t.numel(), dtype=DT).reshape(t.shape) for t in fused]
    grads = [
        torch.autograd.grad(sum((t * wt).sum() for t, wt in zip(out, weights, strict=True)), (q, k, v, w))
        for out in (run(q, k, v, w, "fused"), generic)
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(lambda q, k, v, w: run(q, k, v, w, "fused"), (q, k, v, w))


@pytest.mark.parametrize("kernel", EXP_KERNELS)
@pytest.mark.parametrize("role,causal", [("query", False), ("key", False), ("key", True)])
def test_gradcheck_fused_stabilized_features_and_their_values(kernel, role, causal):
    x = torch.randn(2, 2, 5, 4, generator=generator(3), dtype=DT, requires_grad=True)
    w = projection(requires_grad=True)
    mask = padding(2, 5)
    kern = KERNELS[kernel]

    def fn(x, w):
        features, offsets = stabilized_exp_features(
            x, kern.exp_form(w), scale=0.7, role=role, causal=causal, key_padding_mask=mask
        )
        if role == "query":  # a per-row factor is free: compare row-normalized features
            return features / features.sum(-1, keepdim=True)
        return features * offsets.exp().unsqueeze(-1)  # the true (unstabilized) features

    assert torch.autograd.gradcheck(fn, (x, w))
    plain = feature_map(x * 0.7, w, kernel)
    if role == "query":
        plain = plain / plain.sum(-1, keepdim=True)
    else:
        plain = plain.masked_fill(mask[:, None, :, None], 0.0)
    torch.testing.assert_close(fn(x, w), plain, rtol=1e-12, atol=1e-12)


def test_gradcheck_decayed_prefix_scan():
    g = generator(4)
    summaries = torch.randn(1, 2, 4, 3, 2, generator=g, dtype=DT, requires_grad=True)
    init = torch.randn(1, 2, 3, 2, generator=g, dtype=DT, requires_grad=True)
    decay = torch.rand(1, 2, 4, generator=g, dtype=DT)
    assert torch.autograd.gradcheck(lambda s, i: decayed_prefix_scan(s, decay, i), (summaries, init))


# ---------------------------------------------------------------------------------------------
# Choosing a path by name


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (
            {"kernel": "trig"},
            r"path='fused' cannot serve these inputs: kernel 'trig' has no exponential form",
        ),
        ({"kernel": "favor++"}, r"kernel 'favor\+\+' has no exponential form"),
        ({"kernel": "relu", "projection": None}, r"no exponential form"),
    ],
)
def test_fused_path_says_why_it_cannot_serve_the_inputs(kwargs, pattern):
    kwargs = dict(kwargs)
    q, k, v = inputs(lq=5, requires_grad=kwargs.pop("grad", False))
    w = kwargs.pop("projection", projection())
    if kwargs.get("initial_state") == "state":
        _, kwargs["initial_state"] = favor_attention(q, k, v, w, causal=True, return_state=True)
    with pytest.raises(ValueError, match=pattern):
        _favor_attention(q, k, v, w, path="fused", **kwargs)
    _favor_attention(q, k, v, w, path="generic", **kwargs)  # the generic path serves everything


def test_unknown_path_and_bad_segment_chunks_are_rejected():
    q, k, v = inputs(lq=5)
    with pytest.raises(ValueError, match=r"path must be None, 'fused' or 'generic', got 'triton'"):
        _favor_attention(q, k, v, projection(), path="triton")
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ValueError, match=r"segment_chunks must be an int >= 1"):
            _favor_attention(q, k, v, projection(), causal=True, segment_chunks=bad)


def test_a_user_kernel_with_an_exponential_form_takes_the_fused_path():
    mine = replace(get_kernel("softmax"), name="my-softmax")
    q, k, v = inputs(lq=9)
    w = projection()
    out = _favor_attention(q, k, v, w, path="fused", kernel=mine, causal=True, chunk_size=4)
    torch.testing.assert_close(out, naive_favor_attention(q, k, v, w, kernel=mine, causal=True))


def test_state_carry_factors_with_an_empty_incoming_state():
    """An incoming state of offset -inf (nothing before: context parallelism's first shard) is
    carried with factor 1 on the diagonal and 0 below, never NaN."""
    from performers.ops.numerics import state_carry_factors

    ends = torch.tensor([[[0.5, 1.0, 1.0]]])
    factors = state_carry_factors(ends, torch.tensor([[float("-inf")]]))
    assert torch.isfinite(factors).all()
    assert torch.equal(factors[0, 0].diagonal(), torch.ones(4))
    assert (factors[0, 0, 1:, 0] == 0).all() and (factors[0, 0].triu(1) == 0).all()
    assert torch.allclose(factors[0, 0, 3, 1:], torch.exp(ends[0, 0] - 1.0))
