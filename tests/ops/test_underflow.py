"""No silent zero rows (issue 16, item 5): bidirectional exponential paths move each feature's
largest key log-feature to the query side, so float32 matches float64 at large logits; causal
rows that still underflow are reported with a FavorUnderflowWarning. Also L = 0 causal."""

import warnings

import pytest
import torch

from performers import favor_attention, linear_attention, orthogonal_projection
from performers.ops import underflow
from performers.ops.attention import _favor_attention
from performers.ops.underflow import FavorUnderflowWarning, count_zero_rows, flush_underflow_warnings
from tests.helpers.numerics import generator


def _large(scale, length=200, dim=64, seed=0):
    g = generator(seed)
    q, k = (torch.randn(2, 8, length, dim, generator=g) * scale for _ in range(2))
    v = torch.randn(2, 8, length, dim, generator=g)
    return q, k, v, orthogonal_projection(256, dim, generator=g)


def _relative_error(out, reference):
    return ((out.double() - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("path", ["fused", "generic"])
@pytest.mark.parametrize("kernel", ["softmax", "softmax-hyperbolic", "gaussian"])
@pytest.mark.parametrize("scale", [1.0, 30.0, 100.0])
def test_bidirectional_float32_matches_float64_at_large_norms(path, kernel, scale):
    q, k, v, w = _large(scale)
    pad = torch.zeros(2, q.shape[2], dtype=torch.bool)
    pad[1, -13:] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", FavorUnderflowWarning)
        out = _favor_attention(q, k, v, w, kernel=kernel, key_padding_mask=pad, path=path)
    reference = favor_attention(*(t.double() for t in (q, k, v, w)), kernel=kernel, key_padding_mask=pad)
    assert (reference.abs().amax(-1) > 0).all()  # float64 has no zero row here ...
    assert (out.abs().amax(-1) > 0).all()  # ... and neither has float32 (it had thousands)
    # Relative error of float32 at logits of size |log| ~ scale²·√D: u·|log| per feature.
    bound = 8 * torch.finfo(torch.float32).eps * max(1.0, scale**2 * 8)
    assert _relative_error(out, reference) <= bound


def test_causal_rows_that_underflow_are_reported_not_silent():
    q, k, v, w = _large(30.0)
    with pytest.warns(
        FavorUnderflowWarning, match=r"query rows underflowed to an all-zero output in torch.float32"
    ):
        out = favor_attention(q, k, v, w, causal=True)
    zero = (out.abs().amax(-1) == 0).sum().item()
    assert zero > 0 and count_zero_rows(out, v) == zero
    # float64 has none at this scale: no warning there.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FavorUnderflowWarning)
        favor_attention(*(t.double() for t in (q, k, v, w)), causal=True)


def test_ordinary_inputs_and_padding_never_warn():
    q, k, v, w = _large(1.0)
    pad = torch.zeros(2, q.shape[2], dtype=torch.bool)
    pad[0, :17] = True  # leading padding: those queries see no key and are legitimately 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", FavorUnderflowWarning)
        out = favor_attention(q, k, v, w, causal=True, key_padding_mask=pad)
    assert (out[0, :, :17] == 0).all()
    assert count_zero_rows(out, v, pad) == 0


def test_count_zero_rows_counts_only_rows_that_saw_a_value():
    v = torch.zeros(1, 1, 4, 2)
    v[0, 0, 2] = 1.0  # positions 2 and 3 see a nonzero value
    out = torch.zeros(1, 1, 4, 2)
    assert count_zero_rows(out, v) == 2
    out[0, 0, 3] = 0.5
    assert count_zero_rows(out, v) == 1


@pytest.mark.parametrize("return_state", [False, True])
@pytest.mark.parametrize("kernel", ["softmax", "relu", "favor++"])
def test_causal_of_zero_positions_is_empty_like_bidirectional(kernel, return_state):
    g = generator(2)
    q, k, v = (torch.randn(2, 3, 0, 8, generator=g, requires_grad=True) for _ in range(3))
    w = orthogonal_projection(16, 8, generator=g)
    result = favor_attention(q, k, v, w, causal=True, kernel=kernel, return_state=return_state)
    out = result[0] if return_state else result
    assert out.shape == (2, 3, 0, 8)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape
    if return_state:
        # The state after no positions continues exactly like no state at all.
        x = torch.randn(2, 3, 5, 8, generator=g)
        after = favor_attention(x, x, x, w, causal=True, kernel=kernel, initial_state=result[1])
        assert torch.allclose(after, favor_attention(x, x, x, w, causal=True, kernel=kernel), atol=1e-6)


def test_causal_zero_positions_keep_a_given_state():
    g = generator(3)
    x = torch.randn(1, 2, 6, 8, generator=g)
    w = orthogonal_projection(16, 8, generator=g)
    _, state = favor_attention(x, x, x, w, causal=True, return_state=True)
    empty = x[:, :, :0]
    out, same = favor_attention(empty, empty, empty, w, causal=True, initial_state=state, return_state=True)
    assert out.shape == (1, 2, 0, 8)
    assert torch.equal(same.kv, state.kv) and torch.equal(same.normalizer, state.normalizer)


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_of_zero_positions_is_empty(causal):
    features = torch.rand(2, 3, 0, 16)
    out = linear_attention(features, features, torch.randn(2, 3, 0, 8), causal=causal)
    assert out.shape == (2, 3, 0, 8)


@pytest.mark.parametrize("scale", [30.0, 100.0])
def test_triton_bidirectional_float32_matches_float64_at_large_norms(scale):
    # The Triton kernels (run here by the interpreter) also keep one key maximum per feature.
    pytest.importorskip("triton")
    q, k, v, w = _large(scale, length=40, dim=16)
    q, k, v = (t[:1, :2] for t in (q, k, v))
    pad = torch.zeros(1, 40, dtype=torch.bool)
    pad[0, -7:] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", FavorUnderflowWarning)
        out = favor_attention(q, k, v, w, key_padding_mask=pad, backend="triton")
    reference = favor_attention(*(t.double() for t in (q, k, v, w)), key_padding_mask=pad, backend="torch")
    assert (out.abs().amax(-1) > 0).all()
    bound = 8 * torch.finfo(torch.float32).eps * max(1.0, scale**2 * 4)
    assert _relative_error(out, reference) <= bound


def test_counts_queued_on_a_gpu_are_reported_when_ready_or_flushed(monkeypatch):
    # The queue of counts a CUDA call leaves (underflow._defer), here with counts whose arrival
    # the test controls: a later call reports those that have arrived, in order; a flush waits.
    arrived, waited = [False, False], []
    queue = underflow._PENDING.__class__()
    monkeypatch.setattr(underflow, "_PENDING", queue)

    def pending(count, i, ready):
        return underflow._Pending(
            torch.tensor(count), ready, lambda: waited.append(i), 40, torch.float32, True
        )

    for i, count in enumerate((3, 5)):
        queue.append(pending(count, i, lambda i=i: arrived[i]))
    q, k, v, w = _large(1.0, length=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FavorUnderflowWarning)
        favor_attention(q, k, v, w, causal=True)  # nothing has arrived: nothing reported yet
    assert len(queue) == 2
    arrived[1] = True  # the second cannot be reported before the first
    with warnings.catch_warnings():
        warnings.simplefilter("error", FavorUnderflowWarning)
        favor_attention(q, k, v, w, causal=True)
    arrived[0] = True
    later = r"^causal FAVOR attention: \d of 40 .* at a later call"
    with pytest.warns(FavorUnderflowWarning, match=later) as record:
        favor_attention(q, k, v, w, causal=True)
    assert [str(r.message).split(":")[1].split(" of")[0] for r in record] == [" 3", " 5"]
    assert not queue and not waited
    queue.append(pending(7, 2, lambda: False))
    with pytest.warns(FavorUnderflowWarning, match=r"7 of 40"):
        assert flush_underflow_warnings() == 7
    assert waited == [2] and not queue
    assert flush_underflow_warnings() == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_counts_are_reported_without_waiting_for_the_gpu():
    flush_underflow_warnings()  # nothing left over from earlier tests
    q, k, v, w = (t.cuda() for t in _large(30.0))
    with warnings.catch_warnings(record=True) as early:
        warnings.simplefilter("always", FavorUnderflowWarning)
        out = favor_attention(q, k, v, w, causal=True)
        # The count of a CUDA call is queued, not read (no host synchronization) ...
        assert underflow.warn_zero_rows(out, v) is None and len(underflow._PENDING) >= 1
    expected = count_zero_rows(out, v)
    assert expected > 0
    with warnings.catch_warnings(record=True) as late:
        warnings.simplefilter("always", FavorUnderflowWarning)
        assert flush_underflow_warnings() >= expected  # ... and reported once it has arrived
    messages = [str(r.message) for r in early + late]
    assert len(messages) == 2 and all(f": {expected} of " in m for m in messages)
    assert not underflow._PENDING


def test_evaluation_and_generation_report_the_counts_still_queued(monkeypatch):
    from performers import PerformerConfig, PerformerForCausalLM
    from performers.training import evaluation_mode

    waited = []
    queue = underflow._PENDING.__class__()
    monkeypatch.setattr(underflow, "_PENDING", queue)

    def queue_one(count):
        queue.append(
            underflow._Pending(
                torch.tensor(count), lambda: False, lambda: waited.append(count), 9, torch.float32, True
            )
        )

    model = PerformerForCausalLM(
        PerformerConfig(vocab_size=11, d_model=16, num_layers=1, num_heads=2, d_ff=32)
    )
    queue_one(4)
    with pytest.warns(FavorUnderflowWarning, match=r"4 of 9"):
        with evaluation_mode(model):
            pass
    queue_one(6)
    with pytest.warns(FavorUnderflowWarning, match=r"6 of 9"):
        model.generate(torch.ones(1, 3, dtype=torch.long), max_new_tokens=2)
    assert waited == [4, 6] and not queue
