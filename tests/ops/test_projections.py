import math

import pytest
import torch

from performers import gaussian_projection, make_projection, orthogonal_projection
from tests.helpers.numerics import Z, generator


@pytest.mark.parametrize("m,d", [(1, 4), (4, 4), (10, 4), (64, 16), (256, 64), (7, 1)])
def test_shapes_and_block_orthogonality(m, d):
    w = orthogonal_projection(m, d, generator=generator(1), dtype=torch.float64)
    assert w.shape == (m, d)
    for start in range(0, m, d):
        block = w[start : start + d]
        gram = block @ block.T
        norms_sq = (block * block).sum(-1)
        torch.testing.assert_close(gram, torch.diag(norms_sq), atol=1e-10, rtol=0)


def test_sqrt_d_norms_are_exact():
    w = orthogonal_projection(100, 16, row_norms="sqrt_d", generator=generator(), dtype=torch.float64)
    torch.testing.assert_close(w.norm(dim=-1), torch.full((100,), 4.0, dtype=torch.float64))


def test_seeded_reproducible_and_dtype_device():
    a = orthogonal_projection(40, 8, generator=generator(3))
    b = orthogonal_projection(40, 8, generator=generator(3))
    c = orthogonal_projection(40, 8, generator=generator(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.get_default_dtype()
    half = orthogonal_projection(40, 8, generator=generator(3), dtype=torch.bfloat16, device="cpu")
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), a, atol=0.05, rtol=0.02)
    g = gaussian_projection(5, 3, generator=generator(3), dtype=torch.float64)
    assert g.shape == (5, 3) and torch.equal(
        g, gaussian_projection(5, 3, generator=generator(3), dtype=torch.float64)
    )


def test_blocks_are_independent_draws():
    w = orthogonal_projection(32, 8, row_norms="sqrt_d", generator=generator(), dtype=torch.float64)
    blocks = w.reshape(4, 8, 8)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(blocks[i], blocks[j])


def test_chi_norms_moments():
    # E‖ω‖² = d (variance 2d) and E‖ω‖ = √2 Γ((d+1)/2)/Γ(d/2) for χ_d norms.
    d, n = 16, 64_000
    w = orthogonal_projection(n, d, generator=generator(5), dtype=torch.float64)
    sq = (w * w).sum(-1)
    assert abs(sq.mean().item() - d) < Z * math.sqrt(2 * d / n)
    chi_mean = math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
    chi_var = d - chi_mean**2
    assert abs(w.norm(dim=-1).mean().item() - chi_mean) < Z * math.sqrt(chi_var / n)


@pytest.mark.parametrize("row_norms", ["chi", "sqrt_d"])
def test_rows_are_isotropic(row_norms):
    # E[ω] = 0 and E[ωωᵀ] = I for each row position inside a block (the sign fix at work).
    d, reps = 6, 20_000
    w = orthogonal_projection(reps * d, d, row_norms=row_norms, generator=generator(7), dtype=torch.float64)
    rows = w.reshape(reps, d, d)  # (draw, row within block, coordinate)
    mean = rows.mean(0)
    # Each coordinate has variance 1 (E[ωωᵀ] = I); Bonferroni over the d² means.
    z = Z + math.sqrt(2 * math.log(d * d))
    assert mean.abs().max().item() < z / math.sqrt(reps)
    second = torch.einsum("nrd,nre->rde", rows, rows) / reps
    # Largest variance of an entry of ωωᵀ: Var(ω_a²) = E[ω_a⁴] - 1, which is 3 - 1 = 2 for
    # Gaussian rows (chi norms) and 3d/(d+2) - 1 < 2 for rows on the √d-sphere.
    eye = torch.eye(d, dtype=torch.float64)
    assert (second - eye).abs().max().item() < z * math.sqrt(2 / reps)


def raw_qr_projection(reps: int, d: int, seed: int) -> torch.Tensor:
    """The reference implementation's construction: raw QR without the sign fix, χ norms."""
    g = generator(seed)
    q, _ = torch.linalg.qr(torch.randn(reps, d, d, generator=g, dtype=torch.float64))
    norms = torch.randn(reps, d, d, generator=g, dtype=torch.float64).norm(dim=-1, keepdim=True)
    return q.transpose(-2, -1) * norms


def test_raw_qr_sign_is_skewed_and_fixed():
    reps, d = 4000, 8
    raw = raw_qr_projection(reps, d, 0)
    assert (raw[:, 0, 0] <= 0).all()  # LAPACK's convention: the first row lives in a half-space
    fixed = orthogonal_projection(reps * d, d, generator=generator(), dtype=torch.float64).reshape(reps, d, d)
    frac = (fixed[:, 0, 0] > 0).double().mean().item()
    assert abs(frac - 0.5) < Z * math.sqrt(0.25 / reps)


def test_make_projection_and_errors():
    assert make_projection(8, 4, kind="iid", generator=generator()).shape == (8, 4)
    assert make_projection(8, 4, generator=generator()).shape == (8, 4)
    with pytest.raises(ValueError, match="num_features"):
        orthogonal_projection(0, 4)
    with pytest.raises(ValueError, match="dim"):
        gaussian_projection(4, 0)
    with pytest.raises(TypeError, match="num_features"):
        orthogonal_projection(2.5, 4)
    with pytest.raises(ValueError, match="row_norms"):
        orthogonal_projection(4, 4, row_norms="unit")
    with pytest.raises(ValueError, match="kind"):
        make_projection(4, 4, kind="hadamard")
