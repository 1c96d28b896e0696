"""bfloat16 inputs on the fused paths (bidirectional and causal): products in bfloat16, sums and maxima in
float32 (ops.bidirectional.fused). Compared with the float64 computation of the same estimator
on the same (bfloat16-valued) inputs, with tolerances derived from bfloat16's unit roundoff,
and with exact softmax attention against the float32 path's error."""

import pytest
import torch

from performers import favor_attention, favor_attention_step, orthogonal_projection
from performers.ops.naive import exact_attention, naive_favor_attention
from tests.helpers.numerics import BF16_UNIT_ROUNDOFF, bf16_relative_bound


def _inputs(length=96, dim=32, features=64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, 3, length, dim, generator=g) * scale for _ in range(2))
    v = torch.randn(2, 3, length, dim, generator=g)
    w = orthogonal_projection(features, dim, generator=g)
    # Work on bfloat16 values throughout so that the reference sees the same inputs.
    return [t.bfloat16() for t in (q, k, v)], w.bfloat16()


def test_bf16_inputs_take_the_bf16_path_and_return_bf16():
    (q, k, v), w = _inputs()
    out = favor_attention(q, k, v, w.float())
    assert out.dtype == torch.bfloat16
    # float32 inputs are untouched by the bfloat16 path (bit for bit the float32 computation).
    out32 = favor_attention(q.float(), k.float(), v.float(), w.float())
    assert out32.dtype == torch.float32 and not torch.equal(out32.bfloat16(), out)


@pytest.mark.parametrize("kernel", ["softmax", "gaussian-hyperbolic"])
def test_bf16_outputs_and_gradients_within_derived_bounds(kernel):
    (q, k, v), w = _inputs()
    pad = torch.zeros(2, q.shape[2], dtype=torch.bool)
    pad[1, -9:] = True
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = favor_attention(*inputs, w.float(), kernel=kernel, key_padding_mask=pad)
    reference = [t.double().requires_grad_() for t in (q, k, v)]
    expected = naive_favor_attention(*reference, w.double(), kernel=kernel, key_padding_mask=pad)
    bound = bf16_relative_bound(q, k, 2.0 if "gaussian" in kernel else 1.0)
    assert (out.double() - expected).abs().max().item() <= bound * expected.abs().max().item()
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out.float() * g).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * g.double()).sum(), reference)
    for got, want in zip(grads, expected_grads, strict=True):
        # Backward recomputes the features and rounds its own products: twice the error.
        assert (got.double() - want).abs().max().item() <= 2 * bound * want.abs().max().item()


def test_bf16_error_against_exact_softmax_within_1_1x_of_float32():
    """The rounding is invisible next to the random-feature error (the issue's criterion)."""
    (q, k, v), _ = _inputs(length=256, dim=64, scale=0.5)
    exact = exact_attention(q.double(), k.double(), v.double())
    for features in (64, 256, 1024):
        w = orthogonal_projection(features, 64, generator=torch.Generator().manual_seed(features))

        def error(out):
            return ((out.double() - exact).norm() / exact.norm()).item()

        float32 = error(favor_attention(q.float(), k.float(), v.float(), w))
        bfloat16 = error(favor_attention(q, k, v, w))
        assert bfloat16 <= 1.1 * float32, (features, bfloat16, float32)


def _causal_bound(q, k):
    # The same first-order bound as bidirectionally; the chunk state adds one float32 sum per
    # chunk (negligible), its bfloat16 copy for the prefix product one more rounding (u).
    return bf16_relative_bound(q, k, 1.0) + BF16_UNIT_ROUNDOFF


@pytest.mark.parametrize("with_initial_state", [False, True])
def test_bf16_causal_outputs_gradients_and_state_within_derived_bounds(with_initial_state):
    (q, k, v), w = _inputs(length=150)
    pad = torch.zeros(2, q.shape[2], dtype=torch.bool)
    pad[1, :7] = True  # leading padding: a placeholder offset until the first real key
    initial = None
    if with_initial_state:
        (pq, pk, pv), _ = _inputs(length=40, seed=3)
        _, initial = favor_attention(
            pq.float(), pk.float(), pv.float(), w.float(), causal=True, return_state=True
        )
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    out, state = favor_attention(
        *inputs, w.float(), causal=True, key_padding_mask=pad, chunk_size=16, initial_state=initial,
        return_state=True,
    )  # fmt: skip
    assert out.dtype == torch.bfloat16 and state.kv.dtype == torch.float32
    reference = [t.double().requires_grad_() for t in (q, k, v)]
    initial64 = (
        None
        if initial is None
        else initial._replace(**{f: getattr(initial, f).double() for f in ("kv", "normalizer", "log_offset")})
    )
    expected, expected_state = favor_attention(
        *reference, w.double(), causal=True, key_padding_mask=pad, chunk_size=16, initial_state=initial64,
        return_state=True, backend="torch",
    )  # fmt: skip
    bound = _causal_bound(q, k)
    assert (out.double() - expected).abs().max().item() <= bound * expected.abs().max().item()
    # The final state in the same units (offsets equal: maxima of the same bfloat16 logs).
    shift = torch.exp(state.log_offset.double() - expected_state.log_offset)[..., None, None]
    kv = state.kv.double() * shift
    assert (kv - expected_state.kv).abs().max().item() <= bound * expected_state.kv.abs().max().item()
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out.float() * g).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * g.double()).sum(), reference)
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == torch.bfloat16
        assert (got.double() - want).abs().max().item() <= 2 * bound * want.abs().max().item()


def test_bf16_causal_is_causal_bit_for_bit():
    (q, k, v), w = _inputs(length=130)
    out = favor_attention(q, k, v, w.float(), causal=True, chunk_size=16)
    # Changing the future (from position 77 on, mid-chunk) leaves every earlier output identical.
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[:, :, 77:] = torch.randn(t[:, :, 77:].shape).bfloat16() * 5
    out2 = favor_attention(q2, k2, v2, w.float(), causal=True, chunk_size=16)
    assert torch.equal(out[:, :, :77], out2[:, :, :77])


def test_bf16_decode_steps_equal_the_parallel_pass_within_the_bound():
    (q, k, v), w = _inputs(length=40)
    parallel = favor_attention(q, k, v, w.float(), causal=True, chunk_size=16)
    state, steps = None, []
    for t in range(q.shape[2]):
        out, state = favor_attention_step(
            q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state, w.float()
        )
        steps.append(out)
    stepped = torch.cat(steps, dim=2)
    assert stepped.dtype == torch.bfloat16
    bound = _causal_bound(q, k)
    assert (
        stepped.double() - parallel.double()
    ).abs().max().item() <= 2 * bound * parallel.abs().max().item()


def test_bf16_causal_error_against_exact_softmax_within_1_1x_of_float32():
    (q, k, v), _ = _inputs(length=256, dim=64, scale=0.5)
    exact = exact_attention(q.double(), k.double(), v.double(), causal=True)
    for features in (64, 256, 1024):
        w = orthogonal_projection(features, 64, generator=torch.Generator().manual_seed(features))

        def error(out):
            return ((out.double() - exact).norm() / exact.norm()).item()

        float32 = error(favor_attention(q.float(), k.float(), v.float(), w, causal=True))
        bfloat16 = error(favor_attention(q, k, v, w, causal=True))
        assert bfloat16 <= 1.1 * float32, (features, bfloat16, float32)


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_autocast_runs_float32_inputs_on_the_bf16_path(causal):
    (q, k, v), w = _inputs()
    q32, k32, v32 = (t.float() for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = favor_attention(q32, k32, v32, w.float(), causal=causal)
    # The same bits as bfloat16 inputs outside autocast (the float32 values are bfloat16-exact).
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, favor_attention(q, k, v, w.float(), causal=causal))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert favor_attention(q32, k32, v32, w.float(), causal=causal).dtype == torch.float32
