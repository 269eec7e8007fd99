"""Unit tests of nysact.linalg.lowrank: validation, init, Brand's degenerate branches, float32.

Oracles are dense float64 NumPy/SciPy computations, never the module's own output.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.linalg as sla
import torch

from nysact.linalg.lowrank import (
    DiagPlusLowRank,
    brand_rank_one_update,
    diag_plus_low_rank,
    ginger_direction,
    ginger_update,
    random_semi_orthogonal,
)

EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)


def _orthonormal(d: int, tau: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, tau)))
    return q


def _state64(d: int = 10, tau: int = 3, gamma: float = 0.5, seed: int = 0) -> DiagPlusLowRank:
    u = torch.from_numpy(_orthonormal(d, tau, seed))
    sigma = torch.linspace(3.0, 1.0, tau, dtype=torch.float64)
    return diag_plus_low_rank(gamma, u, sigma)


def _dense(gamma: float, u: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    return gamma * np.eye(u.shape[0]) + (u * sigma) @ u.T


def re_num(x: float) -> str:
    return re.escape(repr(x))


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# --------------------------------------------------------------------------------------------
# Validation: bad input raises ValueError naming the argument (and its value where scalar).
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, -1.0, math.nan, math.inf])
def test_gamma_must_be_positive_finite(gamma: float) -> None:
    u = torch.from_numpy(_orthonormal(6, 2, 0))
    with pytest.raises(ValueError, match=r"Invalid gamma: " + re_num(gamma)):
        diag_plus_low_rank(gamma, u, torch.ones(2, dtype=torch.float64))


def test_basis_with_nan_is_rejected() -> None:
    u = torch.from_numpy(_orthonormal(6, 2, 0))
    u[3, 1] = math.nan
    with pytest.raises(ValueError, match=r"basis has 1 non-finite"):
        diag_plus_low_rank(1.0, u, torch.ones(2, dtype=torch.float64))


def test_non_orthonormal_basis_is_rejected_with_its_error() -> None:
    u = torch.from_numpy(_orthonormal(6, 2, 0) * 1.01)  # max|UᵀU − I| = 1.01² − 1 = 0.0201
    with pytest.raises(ValueError, match=r"Invalid basis: .*= 2\.010e-02"):
        diag_plus_low_rank(1.0, u, torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(6,), (3, 4), (5, 0)])
def test_basis_shape_is_checked(shape: tuple[int, ...]) -> None:
    u = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"basis"):
        diag_plus_low_rank(1.0, u, torch.ones(2, dtype=torch.float64))


def test_sigma_negative_nan_length_dtype_are_rejected() -> None:
    u = torch.from_numpy(_orthonormal(6, 2, 0))
    with pytest.raises(ValueError, match=r"Invalid sigma: min entry -0\.5 < 0"):
        diag_plus_low_rank(1.0, u, torch.tensor([1.0, -0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"sigma has 1 non-finite"):
        diag_plus_low_rank(1.0, u, torch.tensor([1.0, math.nan], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"Invalid sigma: shape \(3,\); must be \(2,\)"):
        diag_plus_low_rank(1.0, u, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"Invalid sigma: torch.float32"):
        diag_plus_low_rank(1.0, u, torch.ones(2, dtype=torch.float32))


def test_operand_shapes_are_checked() -> None:
    state = _state64()
    with pytest.raises(ValueError, match=r"x must have shape \(10,\)"):
        state.solve(torch.ones(9, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must have shape \(10,\)"):
        ginger_direction(state, torch.ones(9, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"g must have shape \(m, 10\)"):
        state.inverse().rmatmat(torch.ones(2, 9, dtype=torch.float64))


@pytest.mark.parametrize(
    ("rank", "bound"), [(0, "Must be >= 1"), (5, "Must be <= .*min\\(4, 10\\) = 4")]
)
def test_brand_rank_out_of_range(rank: int, bound: str) -> None:
    u = torch.from_numpy(_orthonormal(10, 3, 0))
    vals = torch.ones(3, dtype=torch.float64)
    v = torch.ones(10, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"Invalid rank: {rank}\. {bound}"):
        brand_rank_one_update(u, vals, v, 1.0, rank)


def test_brand_rank_above_dim_when_basis_is_square() -> None:
    u = torch.from_numpy(_orthonormal(4, 4, 0))
    with pytest.raises(ValueError, match=r"Invalid rank: 5\. .*min\(5, 4\) = 4"):
        brand_rank_one_update(u, torch.ones(4, dtype=torch.float64), torch.ones(4).double(), 1, 5)


def test_brand_bad_values_vector_coefficient() -> None:
    u = torch.from_numpy(_orthonormal(10, 3, 0))
    vals = torch.ones(3, dtype=torch.float64)
    v = torch.ones(10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"Invalid coefficient: -0\.1"):
        brand_rank_one_update(u, vals, v, -0.1, 3)
    with pytest.raises(ValueError, match=r"Invalid coefficient: nan"):
        brand_rank_one_update(u, vals, v, torch.tensor(math.nan), 3)
    with pytest.raises(ValueError, match=r"Invalid values: min entry -1\.0"):
        brand_rank_one_update(u, -vals, v, 1.0, 3)
    with pytest.raises(ValueError, match=r"Invalid vector: shape \(9,\); must be \(10,\)"):
        brand_rank_one_update(u, vals, v[:9], 1.0, 3)
    v_nan = v.clone()
    v_nan[0] = math.inf
    with pytest.raises(ValueError, match=r"vector has 1 non-finite"):
        brand_rank_one_update(u, vals, v_nan, 1.0, 3)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.2, 1.5, math.nan])
def test_ginger_alpha_must_be_in_open_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"Invalid alpha: " + re_num(alpha)):
        ginger_update(_state64(), torch.ones(10, dtype=torch.float64), alpha)


def test_ginger_d_vec_and_rank_are_checked() -> None:
    state = _state64()
    with pytest.raises(ValueError, match=r"d_vec must be 1-dimensional, got shape \(10, 1\)"):
        ginger_update(state, torch.ones(10, 1, dtype=torch.float64), 0.9)
    with pytest.raises(ValueError, match=r"Invalid d_vec: shape \(11,\)"):
        ginger_update(state, torch.ones(11, dtype=torch.float64), 0.9, check=False)
    bad = torch.ones(10, dtype=torch.float64)
    bad[2] = math.nan
    with pytest.raises(ValueError, match=r"d_vec has 1 non-finite"):
        ginger_update(state, bad, 0.9)
    with pytest.raises(ValueError, match=r"Invalid rank: 5\."):
        ginger_update(state, torch.ones(10, dtype=torch.float64), 0.9, rank=5)


def test_random_semi_orthogonal_bad_sizes() -> None:
    with pytest.raises(ValueError, match=r"Invalid rank: 6\. Must be <= dim = 5"):
        random_semi_orthogonal(5, 6)
    with pytest.raises(ValueError, match=r"Invalid dim: 0"):
        random_semi_orthogonal(0, 1)


# --------------------------------------------------------------------------------------------
# random_semi_orthogonal
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 20 * EPS64), (torch.float32, 1e-6)])
def test_random_semi_orthogonal_is_orthonormal(dtype: torch.dtype, tol: float) -> None:
    u = random_semi_orthogonal(50, 7, generator=torch.Generator().manual_seed(3), dtype=dtype)
    assert u.dtype == dtype
    a = u.double().numpy()
    err = np.abs(a.T @ a - np.eye(7)).max()
    assert err <= tol, f"max|UᵀU − I| = {err:.3e} > {tol:.1e} (d=50, τ=7, seed=3, {dtype})"


def test_random_semi_orthogonal_is_reproducible_from_a_seed() -> None:
    def draw(seed: int) -> np.ndarray:
        g = torch.Generator().manual_seed(seed)
        return random_semi_orthogonal(20, 4, generator=g, dtype=torch.float64).numpy()

    a, b, c = draw(11), draw(11), draw(12)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1, "different seeds gave (nearly) the same basis"
    # Same seed, float32: the float64 draw rounded once (drawn on the CPU in float64).
    g = torch.Generator().manual_seed(11)
    a32 = random_semi_orthogonal(20, 4, generator=g, dtype=torch.float32).double().numpy()
    np.testing.assert_allclose(a32, a, rtol=0, atol=EPS32)


def test_random_semi_orthogonal_matches_sign_fixed_qr_of_the_gaussian_draw() -> None:
    """Oracle: numpy QR of the same Gaussian matrix, columns signed so that diag(R) > 0."""
    z = torch.randn(15, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    q, r = np.linalg.qr(z.numpy())
    expected = q * np.sign(np.diag(r))
    u = random_semi_orthogonal(15, 5, generator=torch.Generator().manual_seed(7))
    np.testing.assert_allclose(u.double().numpy(), expected, rtol=0, atol=4 * EPS32)


# --------------------------------------------------------------------------------------------
# Brand: degenerate branches
# --------------------------------------------------------------------------------------------


def _top(a: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    w, v = sla.eigh(a)
    return w[::-1][:rank], v[:, ::-1][:, :rank]


@pytest.mark.parametrize("scale_out", [0.0, 1e-13, 1e-9])
def test_brand_vector_in_span_keeps_basis_orthonormal_and_exact(scale_out: float) -> None:
    """v = U a (+ a component of relative size ≤ 1e-9 outside): ρ ≈ 0."""
    d, tau = 12, 4
    rng = np.random.default_rng(5)
    u = _orthonormal(d, tau, 1)
    vals = np.array([4.0, 2.5, 1.0, 0.3])
    w = rng.standard_normal(d)
    w -= u @ (u.T @ w)
    v = u @ rng.standard_normal(tau) + scale_out * w
    c = 0.8
    a = (u * vals) @ u.T + c * np.outer(v, v)
    for rank in (tau, tau + 1):
        nb, nv = brand_rank_one_update(
            torch.from_numpy(u), torch.from_numpy(vals), torch.from_numpy(v), c, rank
        )
        b, lam = nb.numpy(), nv.numpy()
        ctx = f"(d={d}, τ={tau}, rank={rank}, ‖p‖/‖v‖≈{scale_out:.0e})"
        orth = np.abs(b.T @ b - np.eye(rank)).max()
        assert orth <= 20 * EPS64, f"max|U'ᵀU' − I| = {orth:.3e} {ctx}"
        w_ref, v_ref = _top(a, rank)
        np.testing.assert_allclose(lam, w_ref, rtol=0, atol=50 * EPS64 * w_ref[0], err_msg=ctx)
        # rank = τ + 1 reproduces A; rank = τ its best rank-τ part, which differs from A only
        # by O(‖p‖·‖v‖·c) when ρ = ‖p‖ > 0, and is unambiguous (λ_τ ≥ 0.3 > λ_{τ+1} ≈ 0).
        atol = 50 * EPS64 * w_ref[0]
        np.testing.assert_allclose(
            (b * lam) @ b.T, (v_ref * w_ref) @ v_ref.T, rtol=0, atol=atol, err_msg=ctx
        )


def test_brand_zero_vector_and_zero_coefficient_return_the_old_pairs() -> None:
    d, tau = 9, 3
    u = _orthonormal(d, tau, 2)
    vals = np.array([0.5, 3.0, 1.5])  # unsorted on purpose
    v = np.random.default_rng(0).standard_normal(d)
    dense = (u * vals) @ u.T
    w_ref, _ = _top(dense, tau + 1)
    for vec, c in ((np.zeros(d), 1.0), (v, 0.0)):
        nb, nv = brand_rank_one_update(
            torch.from_numpy(u), torch.from_numpy(vals), torch.from_numpy(vec), c, tau + 1
        )
        b, lam = nb.numpy(), nv.numpy()
        np.testing.assert_allclose(lam, w_ref, rtol=0, atol=20 * EPS64 * 3.0)
        np.testing.assert_allclose((b * lam) @ b.T, dense, rtol=0, atol=20 * EPS64 * 3.0)
        assert np.abs(b.T @ b - np.eye(tau + 1)).max() <= 20 * EPS64


def test_brand_square_basis_uses_the_core_only() -> None:
    """τ = d: range(U) = ℝᵈ, no complement exists; the result is the full eigendecomposition."""
    d = 5
    u = _orthonormal(d, d, 4)
    vals = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    v = np.random.default_rng(1).standard_normal(d)
    a = (u * vals) @ u.T + 0.5 * np.outer(v, v)
    for rank in (d, 2):
        nb, nv = brand_rank_one_update(
            torch.from_numpy(u), torch.from_numpy(vals), torch.from_numpy(v), 0.5, rank
        )
        w_ref, v_ref = _top(a, rank)
        np.testing.assert_allclose(nv.numpy(), w_ref, rtol=0, atol=40 * EPS64 * w_ref[0])
        rec = (nb.numpy() * nv.numpy()) @ nb.numpy().T
        np.testing.assert_allclose(rec, (v_ref * w_ref) @ v_ref.T, rtol=0, atol=1e-13)


def test_brand_complement_vector_is_deterministic() -> None:
    """The ρ = 0 branch picks the same P every time: the same U' bit for bit."""
    u = torch.from_numpy(_orthonormal(8, 3, 9))
    vals = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    v = u @ torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    b1, l1 = brand_rank_one_update(u, vals, v, 1.0, 4)
    b2, l2 = brand_rank_one_update(u.clone(), vals.clone(), v.clone(), 1.0, 4)
    torch.testing.assert_close(b1, b2, rtol=0, atol=0)
    torch.testing.assert_close(l1, l2, rtol=0, atol=0)
    assert float(l1[-1]) == 0.0
    # The new direction is orthogonal to range(U) (oracle: the numpy projector).
    un = u.numpy()
    p = b1.numpy()[:, -1]
    assert np.linalg.norm(un.T @ p) <= 10 * EPS64


# --------------------------------------------------------------------------------------------
# Ginger: the β of the update (eq. 17 vs the algorithm box), exact one-step update, clamp
# --------------------------------------------------------------------------------------------


def _ginger_case() -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    d, tau = 12, 4
    return 0.3, 0.8, _orthonormal(d, tau, 0), np.array([5.0, 2.0, 0.7, 0.1]), rng.standard_normal(d)


def test_beta_of_the_algorithm_box_is_right_and_eq17_is_not() -> None:
    """The documented finding, checked on dense float64 algebra only.

    (γI + αG + (1−α)ddᵀ)⁻¹ = γ⁻¹I − [U α⁻¹K_{γ/α} Uᵀ + β h hᵀ], h = (γ/α·I + G)⁻¹d, holds with
    β = (α⁻¹ − 1)/(α + (1−α)hᵀd) (the box) and fails with eq. 17's α⁻¹/(α + (1−α)hᵀd).
    """
    gamma, alpha, u, sigma, dv = _ginger_case()
    d = u.shape[0]
    g = (u * sigma) @ u.T
    exact = sla.inv(gamma * np.eye(d) + alpha * g + (1 - alpha) * np.outer(dv, dv))
    g2 = gamma / alpha
    k = sigma / (g2**2 + g2 * sigma)
    h = sla.solve(g2 * np.eye(d) + g, dv)

    def model(beta: float) -> np.ndarray:
        return np.eye(d) / gamma - ((u * (k / alpha)) @ u.T + beta * np.outer(h, h))

    box = (1 / alpha - 1) / (alpha + (1 - alpha) * h @ dv)
    eq17 = (1 / alpha) / (alpha + (1 - alpha) * h @ dv)
    assert _max_rel(model(box), exact) <= 1e-13
    assert _max_rel(model(eq17), exact) >= 0.5


def test_ginger_update_without_truncation_is_exact_sherman_morrison() -> None:
    """rank = τ + 1: the new inverse equals scipy's inverse of γI + αG + (1−α)ddᵀ."""
    gamma, alpha, u, sigma, dv = _ginger_case()
    d, tau = u.shape
    state = diag_plus_low_rank(gamma, torch.from_numpy(u), torch.from_numpy(sigma))
    new = ginger_update(state, torch.from_numpy(dv), alpha, rank=tau + 1)
    target = gamma * np.eye(d) + alpha * (u * sigma) @ u.T + (1 - alpha) * np.outer(dv, dv)
    np.testing.assert_allclose(
        new.inverse().to_dense().numpy(), sla.inv(target), rtol=0, atol=1e-13 / gamma
    )
    np.testing.assert_allclose(new.to_dense().numpy(), target, rtol=0, atol=1e-12 * 12)


def test_ginger_sigma_stays_finite_and_nonnegative_when_k_rounds_to_one_over_gamma() -> None:
    """float32, σ/γ ≈ 1e10 ≫ 1/ε: γK rounds to 1. σ is clamped finite ≥ 0 and G_γ⁻¹ is right.

    Tolerance for the inverse: 100·ε₃₂/γ absolute (norm-relative 100·ε₃₂ ≈ 1.2e-5).
    """
    d, tau, gamma, alpha = 16, 3, 1e-6, 0.9
    rng = np.random.default_rng(3)
    u0 = random_semi_orthogonal(d, tau, generator=torch.Generator().manual_seed(0))
    state = diag_plus_low_rank(gamma, u0, torch.zeros(tau))
    g = np.zeros((d, d))
    for _ in range(3):
        dv = 1e2 * rng.standard_normal(d).astype(np.float32).astype(np.float64)
        state = ginger_update(state, torch.from_numpy(dv).float(), alpha)
        g = alpha * g + (1 - alpha) * np.outer(dv, dv)
    s = state.sigma.double().numpy()
    assert np.all(np.isfinite(s)) and np.all(s >= 0), f"σ = {s}"
    assert s.max() <= gamma / EPS32 * 1.0001
    exact = sla.inv(gamma * np.eye(d) + g)  # 3 updates ≤ τ: no truncation
    err = np.abs(state.inverse().to_dense().double().numpy() - exact).max()
    assert err <= 100 * EPS32 / gamma, f"max|P − P_exact| = {err:.3e} > {100 * EPS32 / gamma:.3e}"


# --------------------------------------------------------------------------------------------
# float32 path, with looser stated tolerances (oracles in float64)
# --------------------------------------------------------------------------------------------


def test_float32_operator_solve_inverse() -> None:
    """Tolerances: matmat 20·d·ε₃₂·‖M‖‖x‖; solve / inverse 20·d·ε₃₂·‖x‖/γ (κ-free)."""
    d, tau, gamma = 40, 6, 1e-2
    u = _orthonormal(d, tau, 6)
    sigma = np.logspace(3, -1, tau)
    m = _dense(gamma, u, sigma)
    state = diag_plus_low_rank(gamma, torch.from_numpy(u).float(), torch.from_numpy(sigma).float())
    x = np.random.default_rng(0).standard_normal((d, 3))
    xt = torch.from_numpy(x).float()
    xn = np.linalg.norm(x, axis=0).max()
    np.testing.assert_allclose(
        state.matmat(xt).double().numpy(), m @ x, rtol=0, atol=20 * d * EPS32 * 1e3 * xn
    )
    ref = sla.solve(m, x, assume_a="pos")
    atol = 20 * d * EPS32 * xn / gamma
    np.testing.assert_allclose(state.solve(xt).double().numpy(), ref, rtol=0, atol=atol)
    np.testing.assert_allclose(state.solve(xt[:, 0]).double().numpy(), ref[:, 0], rtol=0, atol=atol)
    np.testing.assert_allclose(
        state.inverse().to_dense().double().numpy(), sla.inv(m), rtol=0, atol=20 * d * EPS32 / gamma
    )
    np.testing.assert_allclose(
        state.inverse().rmatmat(xt.mT).double().numpy(), ref.T, rtol=0, atol=atol
    )


def test_float32_brand_update() -> None:
    """Tolerances: eigenvalues 50·ε₃₂·‖A‖; reconstruction 100·ε₃₂·‖A‖ (gap ≥ 0.1·‖A‖)."""
    d, tau = 60, 5
    u = _orthonormal(d, tau, 8)
    vals = np.array([8.0, 6.0, 4.0, 2.0, 1.0])
    v = np.random.default_rng(2).standard_normal(d) / math.sqrt(d)
    a = (u * vals) @ u.T + 3.0 * np.outer(v, v)
    w_ref, v_ref = _top(a, tau)
    assert (w_ref[-1] - sla.eigvalsh(a)[::-1][tau]) >= 0.1 * w_ref[0]
    nb, nv = brand_rank_one_update(
        torch.from_numpy(u).float(),
        torch.from_numpy(vals).float(),
        torch.from_numpy(v).float(),
        3.0,
        tau,
    )
    b, lam = nb.double().numpy(), nv.double().numpy()
    np.testing.assert_allclose(lam, w_ref, rtol=0, atol=50 * EPS32 * w_ref[0])
    np.testing.assert_allclose(
        (b * lam) @ b.T, (v_ref * w_ref) @ v_ref.T, rtol=0, atol=100 * EPS32 * w_ref[0]
    )
    assert np.abs(b.T @ b - np.eye(tau)).max() <= 20 * EPS32


def test_float32_ginger_matches_float64_dense_recursion() -> None:
    """Five truncated updates in float32 vs the dense float64 recursion.

    Tolerance: ‖P₃₂ − P₆₄‖_max ≤ 1e-4/γ (the recursion compounds ~5 steps of O(d·ε₃₂) error).
    """
    d, tau, gamma, alpha = 30, 3, 0.05, 0.9
    rng = np.random.default_rng(4)
    u0 = random_semi_orthogonal(d, tau, generator=torch.Generator().manual_seed(1))
    state = diag_plus_low_rank(gamma, u0, torch.zeros(tau))
    g = np.zeros((d, d))
    for _ in range(5):
        dv = (rng.standard_normal(d) * np.linspace(2, 0.1, d)).astype(np.float32).astype(float)
        state = ginger_update(state, torch.from_numpy(dv).float(), alpha)
        inv = sla.inv(gamma * np.eye(d) + alpha * g + (1 - alpha) * np.outer(dv, dv))
        bracket = np.eye(d) / gamma - inv
        k, q = _top(0.5 * (bracket + bracket.T), tau)
        g = (q * (gamma**2 * k / (1 - gamma * k))) @ q.T
    p_ref = np.eye(d) / gamma - (q * k) @ q.T
    err = np.abs(state.inverse().to_dense().double().numpy() - p_ref).max()
    assert err <= 1e-4 / gamma, f"max|P₃₂ − P₆₄| = {err:.3e} > {1e-4 / gamma:.3e}"
