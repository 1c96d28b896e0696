"""FAVOR++ (optimal positive random features) and the Gaussian-kernel estimators.

Statistical checks follow tests/ops/test_estimators.py: a Monte Carlo mean over R independent
projections is compared with its expectation within Z standard errors, the standard error
coming from the theoretical variance where it is known (iid features), else from the sample.
Formulas: Likhosherstov et al., "Chefs' Random Tables", NeurIPS 2022 (see ops/theory.py).
"""

import math

import pytest
import torch

from performers import FavorConfig, PerformerConfig, PerformerForCausalLM, PerformerForMaskedLM
from performers.ops import (
    exact_attention,
    favor_attention,
    favor_attention_step,
    favor_plus_plus_parameters,
    feature_map,
    gaussian_projection,
    naive_favor_attention,
    optimal_positive_features,
    orthogonal_projection,
    theory,
)
from performers.ops.favor_plus_plus import pair_mean_sq_norm
from tests.helpers.numerics import Z, generator

# The spec's reference pair (tests/ops/test_estimators.py): ‖x+y‖² = 1.46, SM(x, y) = exp(0.3).
from tests.ops.test_estimators import DT, D, X, Y

PHI = ((X + Y) ** 2).sum().item()
A_STAR = theory.optimal_positive_parameter(PHI, D).item()


def estimates(kernel: str, w: torch.Tensor, params=None, x=X, y=Y) -> torch.Tensor:
    """One kernel estimate φ(x)ᵀφ(y) per projection in the batch w: (R, M, D) → (R,)."""
    if params is not None:
        params = torch.full((w.shape[0],), params, dtype=DT)
    fx = feature_map(x[None, None, :], w, kernel, params)
    fy = feature_map(y[None, None, :], w, kernel, params)
    return (fx * fy).sum(-1)[:, 0]


def iid(reps: int, m: int, seed: int) -> torch.Tensor:
    return gaussian_projection(reps * m, D, generator=generator(seed), dtype=DT).reshape(reps, m, D)


def ortho(reps: int, seed: int) -> torch.Tensor:
    return orthogonal_projection(reps * D, D, generator=generator(seed), dtype=DT).reshape(reps, D, D)


# ---------------------------------------------------------------------------------------------
# A*, the variance formula and the pair-mean identity


@pytest.mark.parametrize("phi,d", [(0.01, 1), (1.46, 16), (1.0, 64), (4.0, 64), (16.0, 64), (300.0, 8)])
def test_optimal_parameter_is_the_numeric_argmin(phi, d):
    optimize = pytest.importorskip("scipy.optimize")

    def log_second_moment(a: float) -> float:
        return math.log(theory.gerf_second_moment_ratio(torch.tensor(phi, dtype=DT), a, d).item())

    numeric = optimize.minimize_scalar(
        log_second_moment, bounds=(-10.0, 0.1249), method="bounded", options={"xatol": 1e-12}
    )
    a_star = theory.optimal_positive_parameter(phi, d).item()
    assert a_star == pytest.approx(numeric.x, abs=1e-6)
    assert log_second_moment(a_star) <= log_second_moment(numeric.x) + 1e-12
    # The root of 16dA² + (4φ − 2d)A − φ = 0 below 1/8, and the official "expplus" form
    # A = (1 − 1/t)/8 with t = (√((2φ+d)² + 8dφ) − 2φ − d)/(4φ).
    assert 16 * d * a_star**2 + (4 * phi - 2 * d) * a_star - phi == pytest.approx(0.0, abs=1e-9 * max(phi, d))
    t = (math.sqrt((2 * phi + d) ** 2 + 8 * d * phi) - 2 * phi - d) / (4 * phi)
    assert a_star == pytest.approx((1 - 1 / t) / 8, rel=1e-6, abs=1e-12)
    assert a_star <= 0 and 1 - 8 * a_star > 0


def test_optimal_parameter_limits_and_gradient():
    assert theory.optimal_positive_parameter(0.0, 16).item() == 0.0
    phi = torch.tensor([1e-12, 1.0, 1e6], dtype=DT, requires_grad=True)
    a = theory.optimal_positive_parameter(phi, 16)
    assert torch.all(torch.isfinite(a)) and torch.all(a <= 0)
    assert torch.autograd.gradcheck(lambda p: theory.optimal_positive_parameter(p, 16), (phi,))


def test_pair_mean_identity_equals_brute_force():
    g = generator(3)
    x = torch.randn(2, 3, 7, 5, generator=g, dtype=DT) + 0.5
    y = torch.randn(2, 3, 11, 5, generator=g, dtype=DT) - 0.2
    brute = ((x[..., :, None, :] + y[..., None, :, :]) ** 2).sum(-1).mean((-2, -1))
    torch.testing.assert_close(pair_mean_sq_norm(x, y), brute, rtol=1e-12, atol=1e-12)
    # With masks: only the kept positions count.
    x_keep = torch.rand(2, 1, 7, generator=g) > 0.4
    y_keep = torch.rand(2, 1, 11, generator=g) > 0.4
    x_keep[..., 0], y_keep[..., 0] = True, True
    pair = (x_keep[..., :, None] & y_keep[..., None, :]).to(DT)
    brute = (((x[..., :, None, :] + y[..., None, :, :]) ** 2).sum(-1) * pair).sum((-2, -1)) / pair.sum(
        (-2, -1)
    )
    torch.testing.assert_close(pair_mean_sq_norm(x, y, x_keep, y_keep), brute, rtol=1e-12, atol=1e-12)


def test_attention_parameters_use_the_pair_mean_of_nonpadded_tokens():
    g = generator(4)
    q, k = torch.randn(2, 3, 9, 4, generator=g, dtype=DT), torch.randn(2, 3, 9, 4, generator=g, dtype=DT)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, :3] = True
    a = favor_plus_plus_parameters(q, k, key_padding_mask=mask)
    for b in range(2):
        keep = ~mask[b]
        qb, kb = q[b][:, keep], k[b][:, keep]
        phi = ((qb[:, :, None] + kb[:, None]) ** 2).sum(-1).mean((-2, -1))
        torch.testing.assert_close(a[b], theory.optimal_positive_parameter(phi, 4))
    # Causal: the first non-padded position alone.
    a = favor_plus_plus_parameters(q, k, causal=True, key_padding_mask=mask)
    for b, p in ((0, 0), (1, 3)):
        phi = ((q[b, :, p] + k[b, :, p]) ** 2).sum(-1)
        torch.testing.assert_close(a[b], theory.optimal_positive_parameter(phi, 4))


# ---------------------------------------------------------------------------------------------
# Unbiasedness and variance (Monte Carlo over projections)


@pytest.mark.parametrize("a", [A_STAR, -0.2])
@pytest.mark.parametrize("m", [1, 8])
def test_gerf_unbiased_with_the_variance_formula(a, m):
    reps = 40_000
    est = estimates("favor++", iid(reps, m, seed=20 + m), params=a)
    sm = theory.softmax_kernel_value(X, Y).item()
    variance = theory.mse_optimal_positive(X, Y, m, a).item()
    assert abs(est.mean().item() - sm) < Z * math.sqrt(variance / reps)
    sq_err = (est - sm) ** 2
    se = sq_err.std().item() / math.sqrt(reps)
    assert abs(sq_err.mean().item() - variance) < Z * se


def test_favor_plus_plus_beats_favor_plus_and_orthogonal_is_unbiased():
    reps, sm = 40_000, theory.softmax_kernel_value(X, Y).item()
    # Theory: Var(A*) < Var(A=0) (0.2875 vs 0.3765 here, spec §6).
    assert theory.mse_optimal_positive(X, Y, 1).item() < theory.mse_positive(X, Y, 1).item()
    assert theory.mse_optimal_positive(X, Y, 1, 0.0).item() == pytest.approx(
        theory.mse_positive(X, Y, 1).item()
    )
    # (The formula itself is checked by Monte Carlo above for A* and A = -0.2, and for A = 0 in
    # tests/ops/test_estimators.py; a direct Monte Carlo comparison of the two MSEs is dominated by the
    # heavy tail of FAVOR+'s squared error and would need far more draws.)
    # Sign-fixed orthogonal blocks with χ norms: still unbiased (sample standard error).
    est = estimates("favor++", ortho(reps // 4, seed=31), params=A_STAR)
    assert abs(est.mean().item() - sm) < Z * est.std().item() / math.sqrt(reps // 4)


GAUSSIAN = {
    "gaussian": theory.mse_positive,
    "gaussian-hyperbolic": theory.mse_hyperbolic,
    "gaussian-trig": theory.mse_trigonometric,
    "gaussian-favor++": theory.mse_optimal_positive,
}


@pytest.mark.parametrize("kernel", list(GAUSSIAN))
def test_gaussian_kernel_estimators_unbiased(kernel):
    reps, m = 40_000, 4
    params = A_STAR if kernel.endswith("++") else None
    est = estimates(kernel, iid(reps, m, seed=40), params=params)
    target = theory.gaussian_kernel_value(X, Y).item()
    variance = theory.gaussian_mse(GAUSSIAN[kernel](X, Y, m), X, Y).item()
    assert abs(est.mean().item() - target) < Z * math.sqrt(variance / reps)
    sq_err = (est - target) ** 2
    assert abs(sq_err.mean().item() - variance) < Z * sq_err.std().item() / math.sqrt(reps)


def test_causal_estimates_unbiased_for_every_query():
    # The causal A is a function of the inputs, not of W: each query's kernel estimates are
    # unbiased. Checked on three (query, key) pairs of one sequence, scaled as attention does.
    g = generator(5)
    q, k = (0.8 * torch.randn(1, 1, 12, D, generator=g, dtype=DT) for _ in range(2))
    s = D**-0.25
    a = favor_plus_plus_parameters(q * s, k * s, causal=True)[0, 0]
    reps = 20_000
    w = iid(reps, 4, seed=50)
    fq = feature_map(q[0, 0] * s, w, "favor++", torch.full((reps,), a.item(), dtype=DT))  # (R, L, M)
    fk = feature_map(k[0, 0] * s, w, "favor++", torch.full((reps,), a.item(), dtype=DT))
    for i, j in ((0, 0), (5, 2), (11, 11)):
        est = (fq[:, i] * fk[:, j]).sum(-1)
        x, y = q[0, 0, i] * s, k[0, 0, j] * s
        target = theory.softmax_kernel_value(x, y).item()
        variance = theory.mse_optimal_positive(x, y, 4, a).item()
        assert abs(est.mean().item() - target) < Z * math.sqrt(variance / reps)


# ---------------------------------------------------------------------------------------------
# Attention: explicit form, causality, recurrent decoding, gradients, modules


def inputs(b=2, h=3, length=29, d=8, dv=5, dtype=DT, seed=0):
    g = generator(seed)
    return tuple(torch.randn(b, h, length, dd, generator=g, dtype=dtype) for dd in (d, d, dv))


W = orthogonal_projection(32, 8, generator=generator(1), dtype=DT)


@pytest.mark.parametrize(
    "kernel", ["favor++", "gaussian-favor++", "gaussian", "gaussian-hyperbolic", "gaussian-trig"]
)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_explicit_kernel_attention(kernel, causal):
    q, k, v = inputs()
    mask = torch.zeros(2, 29, dtype=torch.bool)
    mask[1, :4] = True  # left padding: causally, the statistic starts at position 4
    out = favor_attention(q, k, v, W, causal=causal, kernel=kernel, key_padding_mask=mask, chunk_size=8)
    # The naive reference computes A as attention does (kernel.parameters of the scaled inputs).
    expected = naive_favor_attention(q, k, v, W, causal=causal, kernel=kernel, key_padding_mask=mask)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_favor_plus_plus_closer_to_exact_than_favor_plus():
    # Same projections (paired); the attention error is random, so compare means over draws.
    # Inputs N(0, 0.5²): with N(0, 1) at D = 16 attention is nearly one-hot and every
    # estimator's relative error exceeds 1 at these M (see docs/results/approximation.md).
    q, k, v = inputs(b=1, h=2, length=64, d=16, seed=6)
    q, k = 0.5 * q, 0.5 * k
    exact = exact_attention(q, k, v)
    errors = {"softmax": [], "favor++": []}
    for seed in range(20):
        w = gaussian_projection(64, 16, generator=generator(100 + seed), dtype=DT)
        for kernel in errors:
            errors[kernel].append(
                ((favor_attention(q, k, v, w, kernel=kernel) - exact).norm() / exact.norm()).item()
            )
    diff = torch.tensor(errors["favor++"]) - torch.tensor(errors["softmax"])
    assert diff.mean().item() + Z * diff.std().item() / math.sqrt(len(diff)) < 0


def test_causal_favor_plus_plus_never_reads_the_future_bitwise():
    q, k, v = inputs(length=70, dtype=torch.float32)
    w = W.float()
    for t in (0, 31, 32):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        g = generator(t)
        for tensor in (q2, k2, v2):
            tensor[:, :, t + 1 :] = 3 * torch.randn(tensor[:, :, t + 1 :].shape, generator=g)
        a = favor_attention(q, k, v, w, causal=True, kernel="favor++", chunk_size=32)
        b = favor_attention(q2, k2, v2, w, causal=True, kernel="favor++", chunk_size=32)
        assert torch.equal(a[:, :, : t + 1], b[:, :, : t + 1])
        assert not torch.equal(a[:, :, t + 1 :], b[:, :, t + 1 :])


def test_recurrent_step_and_prefill_reproduce_the_parallel_pass():
    q, k, v = inputs(length=23)
    parallel, final = favor_attention(
        q, k, v, W, causal=True, kernel="favor++", chunk_size=4, return_state=True
    )
    assert final.kernel_params is not None and final.kernel_params.shape == (2, 3)
    state, outs = None, []
    for t in range(23):
        out, state = favor_attention_step(
            q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state, W, kernel="favor++"
        )
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), parallel, rtol=1e-9, atol=1e-9)
    assert state.kernel == final.kernel  # the name, beside the tensors
    for a, b in zip(state[:4], final[:4], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    head, state = favor_attention(
        q[:, :, :9],
        k[:, :, :9],
        v[:, :, :9],
        W,
        causal=True,
        kernel="favor++",
        chunk_size=4,
        return_state=True,
    )
    tail = favor_attention(
        q[:, :, 9:], k[:, :, 9:], v[:, :, 9:], W, causal=True, kernel="favor++", initial_state=state
    )
    torch.testing.assert_close(torch.cat([head, tail], 2), parallel, rtol=1e-10, atol=1e-10)
    # A state built by another kernel has no A to continue with: refused by the kernel it
    # records, and (for a state that records none) by its missing kernel_params.
    _, plain = favor_attention(q, k, v, W, causal=True, return_state=True)
    with pytest.raises(ValueError, match=r"built by kernel 'softmax'.*'favor\+\+'"):
        favor_attention_step(q[:, :, :1], k[:, :, :1], v[:, :, :1], plain, W, kernel="favor++")
    with pytest.raises(ValueError, match="kernel_params"):
        unnamed = plain._replace(kernel=None)
        favor_attention_step(q[:, :, :1], k[:, :, :1], v[:, :, :1], unnamed, W, kernel="favor++")


@pytest.mark.parametrize("causal,length", [(False, 4), (True, 5)])
def test_gradcheck_favor_plus_plus(causal, length):
    g = generator(7)
    q, k, v = (torch.randn(1, 2, length, 4, generator=g, dtype=DT, requires_grad=True) for _ in range(3))
    w = orthogonal_projection(6, 4, generator=generator(1), dtype=DT)
    assert torch.autograd.gradcheck(
        lambda q, k, v: favor_attention(q, k, v, w, causal=causal, kernel="favor++", chunk_size=3), (q, k, v)
    )
    x = torch.randn(2, 3, 4, generator=g, dtype=DT, requires_grad=True)
    a = torch.tensor([-0.3, 0.05], dtype=DT, requires_grad=True)
    for gaussian in (False, True):

        def features(x, a, gaussian=gaussian):
            return optimal_positive_features(x, w, a, gaussian=gaussian).materialize()

        assert torch.autograd.gradcheck(features, (x, a))


def test_errors():
    x = torch.randn(1, 3, 4, dtype=DT)
    w = orthogonal_projection(6, 4, generator=generator(1), dtype=DT)
    with pytest.raises(ValueError, match="A must be < 1/4"):
        optimal_positive_features(x, w, 0.25)
    with pytest.raises(ValueError, match="projection"):
        optimal_positive_features(x, None, 0.0)
    with pytest.raises(ValueError, match="pass params"):
        feature_map(x, w, "favor++")
    with pytest.raises(ValueError, match="needs a projection"):
        favor_attention(x[None], x[None], x[None], None, kernel="favor++")


def test_models_by_name():
    kernel = "favor++"
    config = PerformerConfig(
        vocab_size=30, d_model=16, num_layers=2, num_heads=2, d_ff=32, max_position_embeddings=64,
        favor=FavorConfig(8, kernel),
    )  # fmt: skip
    tokens = torch.randint(2, 30, (2, 12), generator=generator(8))
    lm = PerformerForCausalLM(config).eval()
    with torch.no_grad():
        full = lm(tokens).logits
        out = lm(tokens[:, :5], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        for t in range(5, 12):
            out = lm(tokens[:, t : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.past_key_values
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    mlm = PerformerForMaskedLM(config)
    loss = mlm(tokens, labels=tokens).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_causal_continuation_after_an_all_padding_prefix_fixes_a_from_the_first_real_key():
    # Row 1 is left-padded past the end of the first call: its A must come from its first real
    # token (as in the parallel pass), not from a padded position.
    g = generator(7)
    b, h, length, d, m = 2, 2, 9, 8, 16
    q, k, v = (torch.randn(b, h, length, d, dtype=DT, generator=g) * 0.5 for _ in range(3))
    w = orthogonal_projection(m, d, dtype=DT, generator=g)
    pad = torch.zeros(b, length, dtype=torch.bool)
    pad[1, :3] = True
    full = favor_attention(q, k, v, w, causal=True, kernel="favor++", key_padding_mask=pad)
    first, state = favor_attention(
        q[:, :, :2],
        k[:, :, :2],
        v[:, :, :2],
        w,
        causal=True,
        kernel="favor++",
        key_padding_mask=pad[:, :2],
        return_state=True,
    )
    assert not torch.isnan(state.kernel_params[0]).any() and torch.isnan(state.kernel_params[1]).all()
    rest, state = favor_attention(
        q[:, :, 2:],
        k[:, :, 2:],
        v[:, :, 2:],
        w,
        causal=True,
        kernel="favor++",
        key_padding_mask=pad[:, 2:],
        initial_state=state,
        return_state=True,
    )
    assert not torch.isnan(state.kernel_params).any()
    real = ~pad[:, None, :, None].expand_as(full)
    torch.testing.assert_close(torch.cat([first, rest], 2)[real], full[real], rtol=1e-12, atol=1e-12)


def test_bidirectional_favor_plus_plus_float32_matches_float64_at_sharp_attention():
    # Mean |logit| ≈ 29: A* is very negative and A‖ω_f‖² spreads the features by hundreds of
    # nats. Moving each feature's key maximum to the query side (exact) keeps every row's
    # largest term at 1; without it 6 % of the rows underflowed to 0 in float32.
    g = generator(11)
    b, h, length, d, m = 1, 2, 128, 64, 256
    w = orthogonal_projection(m, d, generator=g)
    q, k = (torch.randn(b, h, length, d, generator=g) * 6 for _ in range(2))
    v = torch.randn(b, h, length, d, generator=g)
    single = favor_attention(q, k, v, w, kernel="favor++")
    double = favor_attention(q.double(), k.double(), v.double(), w.double(), kernel="favor++")
    assert bool((single.abs().amax(-1) > 0).all())
    # Rounding bound: each log-feature of size ≤ E is rounded in float32 by ≤ ~4 ulps of E (a
    # few operations), which perturbs every term by a relative δ = 4·eps·E; a normalized mean of
    # values moves by ≤ 2δ·max|v - out| ≤ 4δ·max|v|.
    s = d**-0.25
    q64, k64, w64 = q.double() * s, k.double() * s, w.double()
    a = favor_plus_plus_parameters(q64, k64)
    largest_log = max(optimal_positive_features(x, w64, a).log.abs().max().item() for x in (q64, k64))
    bound = 16 * torch.finfo(torch.float32).eps * largest_log * v.abs().max().item()
    torch.testing.assert_close(single.double(), double, rtol=0, atol=bound)
