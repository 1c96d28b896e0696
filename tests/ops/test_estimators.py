"""Statistical properties of the softmax-kernel estimators against the paper's theory.

Each check compares a Monte Carlo mean over R independent projections with its expectation,
allowing Z standard errors (see conftest). Standard errors come from the theoretical variance
where the paper gives it (iid features: the MSE of an unbiased estimator is its variance),
otherwise from the sample (CLT on the R independent estimates).
"""

import math

import pytest
import torch

from performers.ops import feature_map, gaussian_projection, orthogonal_projection, theory
from tests.helpers.numerics import Z, generator
from tests.ops.test_projections import raw_qr_projection

D = 16
DT = torch.float64
# The spec's reference pair: ‖x+y‖² = 1.46, SM(x, y) = exp(0.3) = 1.3499.
X = torch.zeros(D, dtype=DT)
X[:2] = torch.tensor([0.6, 0.3])
Y = torch.zeros(D, dtype=DT)
Y[0], Y[2] = 0.5, -0.4


def estimates(kernel: str, w: torch.Tensor, x=X, y=Y) -> torch.Tensor:
    """One kernel estimate φ(x)ᵀφ(y) per projection in the batch w: (R, M, D) → (R,)."""
    fx = feature_map(x[None, None, :], w, kernel)  # (R, 1, M')
    fy = feature_map(y[None, None, :], w, kernel)
    return (fx * fy).sum(-1)[:, 0]


def iid(reps: int, m: int, seed: int) -> torch.Tensor:
    return gaussian_projection(reps * m, D, generator=generator(seed), dtype=DT).reshape(reps, m, D)


def ortho(reps: int, m: int, seed: int, row_norms="chi") -> torch.Tensor:
    # Orthogonal blocks are independent across draws, so one call gives `reps` projections
    # of m ≤ D rows each: block r holds the rows of draw r.
    w = orthogonal_projection(reps * D, D, row_norms=row_norms, generator=generator(seed), dtype=DT)
    return w.reshape(reps, D, D)[:, :m]


MSE = {
    "softmax": theory.mse_positive,
    "softmax-hyperbolic": theory.mse_hyperbolic,
    "trig": theory.mse_trigonometric,
}


@pytest.mark.parametrize("kernel", list(MSE))
@pytest.mark.parametrize("m", [1, 8])
def test_iid_unbiased_with_lemma2_variance(kernel, m):
    reps = 40_000
    est = estimates(kernel, iid(reps, m, seed=m))
    sm = theory.softmax_kernel_value(X, Y).item()
    variance = MSE[kernel](X, Y, m).item()
    assert abs(est.mean().item() - sm) < Z * math.sqrt(variance / reps)


@pytest.mark.parametrize("kernel", list(MSE))
@pytest.mark.parametrize("m", [1, 8])
def test_iid_mse_equals_lemma2(kernel, m):
    reps = 40_000
    sq_err = (estimates(kernel, iid(reps, m, seed=100 + m)) - theory.softmax_kernel_value(X, Y)) ** 2
    se = sq_err.std().item() / math.sqrt(reps)
    assert abs(sq_err.mean().item() - MSE[kernel](X, Y, m).item()) < Z * se


@pytest.mark.parametrize("kernel", list(MSE))
def test_orthogonal_sign_fixed_unbiased(kernel):
    reps = 40_000
    est = estimates(kernel, ortho(reps, D, seed=7))
    sm = theory.softmax_kernel_value(X, Y).item()
    se = est.std().item() / math.sqrt(reps)
    assert abs(est.mean().item() - sm) < Z * se


def test_orthogonal_theorem2_bound():
    reps = 40_000
    sq_err = (estimates("softmax", ortho(reps, D, seed=8)) - theory.softmax_kernel_value(X, Y)) ** 2
    se = sq_err.std().item() / math.sqrt(reps)
    bound = theory.orthogonal_mse_bound(X, Y, D).item()
    assert sq_err.mean().item() - Z * se < bound
    # ... and the bound is informative: orthogonal features beat iid ones at m = d.
    assert bound < theory.mse_positive(X, Y, D).item()


def test_raw_qr_bias_detected_and_sign_fix_removes_it():
    reps, sm = 40_000, theory.softmax_kernel_value(X, Y).item()
    raw = estimates("softmax", raw_qr_projection(reps, D, seed=9))
    fixed = estimates("softmax", ortho(reps, D, seed=9))
    se_raw = raw.std().item() / math.sqrt(reps)
    se_fixed = fixed.std().item() / math.sqrt(reps)
    assert abs(raw.mean().item() - sm) > 2 * Z * se_raw  # clearly biased
    assert abs(fixed.mean().item() - sm) < Z * se_fixed
    # Estimators even in ω (hyperbolic) are unbiased even with the raw QR.
    raw_hyp = estimates("softmax-hyperbolic", raw_qr_projection(reps, D, seed=10))
    assert abs(raw_hyp.mean().item() - sm) < Z * raw_hyp.std().item() / math.sqrt(reps)


def test_regularized_norms_estimate_smreg_closed_form():
    scipy_special = pytest.importorskip("scipy.special")
    reps = 40_000
    est = estimates("softmax", ortho(reps, D, seed=11, row_norms="sqrt_d"))
    smreg = theory.regularized_softmax_kernel(X, Y).item()
    assert abs(est.mean().item() - smreg) < Z * est.std().item() / math.sqrt(reps)
    # The series equals the Bessel form Λ Γ(d/2) (2/κ)^{d/2-1} I_{d/2-1}(κ), κ = √d‖x+y‖.
    kappa = math.sqrt(D) * (X + Y).norm().item()
    lam = math.exp(-((X @ X).item() + (Y @ Y).item()) / 2)
    bessel = lam * math.gamma(D / 2) * (2 / kappa) ** (D / 2 - 1) * scipy_special.iv(D / 2 - 1, kappa)
    assert smreg == pytest.approx(bessel, rel=1e-12)
    # Theorem 1: SMREG ≤ SM, and the two differ measurably here.
    sm = theory.softmax_kernel_value(X, Y).item()
    assert smreg < sm and sm - smreg > 2 * Z * est.std().item() / math.sqrt(reps)


def test_positive_beats_trig_where_kernel_is_small():
    # x ≈ -y: SM(x, y) = e^{-1.04} is small, ‖x+y‖ is tiny, ‖x-y‖ is large.
    x = torch.zeros(D, dtype=DT)
    y = torch.zeros(D, dtype=DT)
    x[:2] = torch.tensor([1.0, 0.2])
    y[0] = -1.0
    m, reps = 8, 20_000
    w = iid(reps, m, seed=12)
    sm = theory.softmax_kernel_value(x, y)
    mse_pos = ((estimates("softmax", w, x, y) - sm) ** 2).mean().item()
    mse_trig = ((estimates("trig", w, x, y) - sm) ** 2).mean().item()
    assert theory.mse_positive(x, y, m) < theory.mse_trigonometric(x, y, m) / 100
    assert mse_pos < mse_trig / 100


def test_exact_points():
    # φ_trig(x)ᵀφ_trig(x) = e^{‖x‖²} and φ⁺(x)ᵀφ⁺(-x) = e^{-‖x‖²} for any projection.
    w = gaussian_projection(5, D, generator=generator(13), dtype=DT)
    x = X[None]
    torch.testing.assert_close(
        (feature_map(x, w, "trig") ** 2).sum(), torch.exp((X * X).sum()), rtol=1e-12, atol=0
    )
    for kernel in ("softmax", "softmax-hyperbolic"):
        value = (feature_map(x, w, kernel) * feature_map(-x, w, kernel)).sum()
        torch.testing.assert_close(value, torch.exp(-(X * X).sum()), rtol=1e-12, atol=0)


def test_positive_features_are_positive():
    w = gaussian_projection(64, D, generator=generator(14), dtype=DT)
    x = 3 * torch.randn(100, D, dtype=DT, generator=generator(15))
    for kernel in ("softmax", "softmax-hyperbolic", "relu", "elu", "abs", "exp"):
        assert (feature_map(x, w, kernel) > 0).all()
