import pytest
import torch

from performers.ops import favor_attention, favor_attention_step, linear_attention, orthogonal_projection
from performers.ops.attention import _favor_attention
from tests.helpers.numerics import generator

DT = torch.float64


def leaf_inputs(lq, lk=None, b=1, h=2, d=4, dv=3, seed=0):
    g = generator(seed)
    lk = lq if lk is None else lk
    q = torch.randn(b, h, lq, d, generator=g, dtype=DT, requires_grad=True)
    k = torch.randn(b, h, lk, d, generator=g, dtype=DT, requires_grad=True)
    v = torch.randn(b, h, lk, dv, generator=g, dtype=DT, requires_grad=True)
    return q, k, v


W = orthogonal_projection(6, 4, generator=generator(1), dtype=DT)


@pytest.mark.parametrize("kernel", ["softmax", "softmax-hyperbolic", "trig", "relu", "elu"])
@pytest.mark.parametrize("causal,length,chunk", [(False, 5, 64), (True, 1, 4), (True, 7, 3), (True, 8, 4)])
def test_gradcheck(kernel, causal, length, chunk):
    q, k, v = leaf_inputs(length)

    def fn(q, k, v):
        return favor_attention(q, k, v, W, causal=causal, kernel=kernel, chunk_size=chunk)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_gradcheck_cross_attention_with_padding():
    q, k, v = leaf_inputs(3, lk=6)
    mask = torch.tensor([[False, False, False, False, True, True]])
    assert torch.autograd.gradcheck(
        lambda q, k, v: favor_attention(q, k, v, W, key_padding_mask=mask), (q, k, v)
    )


def test_gradcheck_causal_with_initial_state_and_projection():
    q, k, v = leaf_inputs(5)
    w = W.clone().requires_grad_(True)
    _, state = favor_attention(q.detach(), k.detach(), v.detach(), W, causal=True, return_state=True)

    def fn(q, k, v, w):
        return favor_attention(q, k, v, w, causal=True, chunk_size=2, initial_state=state)

    assert torch.autograd.gradcheck(fn, (q, k, v, w))


def test_gradcheck_step_and_linear_attention():
    q, k, v = leaf_inputs(1)
    _, state = favor_attention(
        *(t.detach() for t in leaf_inputs(4, seed=2)), W, causal=True, return_state=True
    )
    assert torch.autograd.gradcheck(lambda q, k, v: favor_attention_step(q, k, v, state, W)[0], (q, k, v))
    qf = torch.rand(1, 2, 6, 5, dtype=DT, requires_grad=True)
    kf = torch.rand(1, 2, 6, 5, dtype=DT, requires_grad=True)
    vv = torch.randn(1, 2, 6, 3, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: linear_attention(a, b, c, causal=True, chunk_size=4), (qf, kf, vv)
    )


@pytest.mark.parametrize("kernel", ["softmax", "softmax-hyperbolic"])
def test_gradcheck_blockwise_bidirectional_with_padding_and_projection(kernel):
    q, k, v = leaf_inputs(5, lk=7)
    w = W.clone().requires_grad_(True)
    mask = torch.tensor([[False, False, True, False, False, False, True]])

    def fn(q, k, v, w):
        return favor_attention(q, k, v, w, kernel=kernel, key_padding_mask=mask, block_size=2)

    assert torch.autograd.gradcheck(fn, (q, k, v, w))


@pytest.mark.parametrize("kernel", ["softmax", "softmax-hyperbolic"])
@pytest.mark.parametrize("length,chunk", [(7, 3), (6, 6), (1, 4)])
def test_gradcheck_fused_causal_with_padding_and_projection(kernel, length, chunk):
    q, k, v = leaf_inputs(length, b=2)
    w = W.clone().requires_grad_(True)
    mask = torch.zeros(2, length, dtype=torch.bool)
    mask[1, : length // 2] = True  # left padding in the second sample

    def fn(q, k, v, w):
        return favor_attention(
            q, k, v, w, causal=True, kernel=kernel, key_padding_mask=mask, chunk_size=chunk
        )

    assert torch.autograd.gradcheck(fn, (q, k, v, w))


def test_state_returned_with_gradients_takes_the_autograd_path():
    q, k, v = leaf_inputs(5)
    _, state = favor_attention(q, k, v, W, causal=True, return_state=True)
    state.kv.sum().backward()  # the state (a function of k and v) is differentiable
    assert k.grad is not None and v.grad is not None
    assert k.grad.abs().sum() > 0 and v.grad.abs().sum() > 0


def test_returned_state_carries_gradients_to_values_and_projection():
    # The state depends on k, v and the projection: it must be differentiable whenever one of
    # them requires grad (before, only q or k did: with v alone the state came back detached).
    q, k, v = (t.detach() for t in leaf_inputs(5))
    v.requires_grad_(True)
    w = W.clone().requires_grad_(True)
    _, state = favor_attention(q, k, v, w, causal=True, return_state=True)
    (state.kv.sum() + state.normalizer.sum()).backward()
    assert v.grad.abs().sum() > 0 and w.grad.abs().sum() > 0


@pytest.mark.parametrize("segment_chunks", [1, 2])
def test_gradcheck_fused_causal_across_segments(segment_chunks):
    # Several segments (the state carried between them, forward and backward).
    q, k, v = leaf_inputs(11, b=2)
    w = W.clone().requires_grad_(True)
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[1, :3] = True

    def fn(q, k, v, w):
        return _favor_attention(
            q,
            k,
            v,
            w,
            path="fused",
            segment_chunks=segment_chunks,
            causal=True,
            key_padding_mask=mask,
            chunk_size=2,
        )

    assert torch.autograd.gradcheck(fn, (q, k, v, w))
