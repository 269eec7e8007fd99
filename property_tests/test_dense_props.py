r"""The dense damped inverse (FOOF/KFAC) and Sherman–Morrison (Eva/MAC) against SciPy.

* :func:`damped_inverse` = ``scipy.linalg.inv(A + ρI)`` to ``4·κ(A+ρI)·d·ε`` (+ the same for
  SciPy's own inverse in float64), max-entry relative to ``max|inv(A+ρI)|``;
* its fallback (Cholesky fails ⇒ float64 ``eigh``, eigenvalues clamped at 0, ``fallback=True``)
  = ``V diag(1/(max(λ,0)+ρ)) Vᵀ`` from ``scipy.linalg.eigh``;
* :func:`rank_one_damped_inverse` applied in O(d) at d = 2·10⁶ (a d × d matrix would need
  32 TB) against the spectral closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from hypothesis import given
from hypothesis import strategies as st

from nysact.linalg import damped_inverse, rank_one_damped_inverse
from nysact.linalg.sherman_morrison import RankOneDampedInverse
from property_tests._matrices import (
    PSDCase,
    assert_allclose_report,
    dampings,
    psd_cases,
    relative_dampings,
)

EPS64 = float(torch.finfo(torch.float64).eps)
EPS32 = float(torch.finfo(torch.float32).eps)


@given(case=psd_cases(), rho=dampings())
def test_damped_inverse_matches_scipy_inv_float64(case: PSDCase, rho: float) -> None:
    """(A + ρI)⁻¹ by Cholesky (FOOF, Benzing 2022; KFAC) = ``scipy.linalg.inv(A + ρI)``.

    Tolerance ``8·κ(A+ρI)·d·ε64`` relative to max|inv| (4 for the Cholesky inverse, 4 for
    SciPy's LU inverse). The Cholesky must succeed (``fallback=False``) whenever
    ``20·d^{3/2}·κ·ε ≤ 1`` (Higham 2002, Thm. 10.7: Cholesky then runs to completion).
    """
    d = case.n
    a = case.dense
    op = damped_inverse(torch.from_numpy(a), rho)
    kappa = case.damped_condition(rho)
    ctx = f"{case.describe()}, ρ={rho:.3e}, κ(A+ρI)={kappa:.3e}, fallback={op.fallback}"
    ref = sla.inv(a + rho * np.eye(d))
    assert op.matrix.dtype == torch.float64 and op.matrix.shape == (d, d), ctx
    assert_allclose_report(op.matrix, ref, rtol=8 * kappa * d * EPS64, ctx=ctx)
    if 20 * d**1.5 * kappa * EPS64 <= 1:
        assert op.fallback is False, ctx


@given(case=psd_cases(), factor=relative_dampings())
def test_damped_inverse_matches_scipy_inv_float32(case: PSDCase, factor: float) -> None:
    """float32 ``damped_inverse`` = ``scipy.linalg.inv(A₃₂ + ρI)`` (float64, rounded A).

    ρ = factor·λ_max(A) with factor ∈ [1e-3, 10] keeps κ ≤ 1001 so that the float32 bound
    ``4·κ(A+ρI)·d·ε32`` (≤ 0.15) is meaningful; SciPy's error (κ·d·ε64) is negligible here.
    """
    lam_max = float(case.eigenvalues.max(initial=0.0))
    rho = factor * (lam_max if lam_max > 0 else 1.0)
    a32 = case.torch(torch.float32)
    d = case.n
    op = damped_inverse(a32, rho)
    kappa = case.damped_condition(rho)
    ctx = f"{case.describe()}, ρ={rho:.3e}, κ(A+ρI)={kappa:.3e}, fallback={op.fallback}"
    ref = sla.inv(a32.double().numpy() + rho * np.eye(d))
    assert op.matrix.dtype == torch.float32, ctx
    assert_allclose_report(op.matrix, ref, rtol=4 * kappa * d * EPS32, ctx=ctx)


def _clamped_inverse(a: np.ndarray, rho: float) -> tuple[np.ndarray, float]:
    """``V diag(1/(max(λ,0)+ρ)) Vᵀ`` from ``scipy.linalg.eigh`` and its κ = (max λ₊ + ρ)/ρ."""
    lam, v = sla.eigh(a)
    lam_plus = np.maximum(lam, 0.0)
    return (v / (lam_plus + rho)) @ v.T, float((lam_plus.max(initial=0.0) + rho) / rho)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@given(
    n=st.integers(1, 200),
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(-4.0, 4.0),
    neg_factor=st.floats(1.5, 100.0),
    rel_rho=relative_dampings(-3.0, 0.0),
)
def test_damped_inverse_fallback_on_indefinite_input(
    dtype: torch.dtype,
    n: int,
    seed: int,
    log_scale: float,
    neg_factor: float,
    rel_rho: float,
) -> None:
    """Documented fallback of ``damped_inverse``: Cholesky of A + ρI fails ⇒ float64 eigh.

    A symmetric A with an eigenvalue −neg_factor·ρ (neg_factor ≥ 1.5, far beyond rounding)
    makes A + ρI indefinite, so the Cholesky must fail in any precision; the result must be
    ``V diag(1/(max(λ,0)+ρ)) Vᵀ`` (``scipy.linalg.eigh`` of the same, rounded, A) with
    ``fallback=True``. Tolerance: ``4·ε`` of the dtype (the final cast) + ``8·κ₊·d·ε64``,
    κ₊ = (max λ₊ + ρ)/ρ, relative to max|ref|.
    """
    rng = np.random.default_rng(seed)
    scale = 10.0**log_scale
    rho = rel_rho * scale
    lam = scale * rng.uniform(0.0, 1.0, n)
    lam[0] = -neg_factor * rho
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q *= np.sign(np.diag(r))
    a = (q * lam) @ q.T
    a = 0.5 * (a + a.T)
    a_t = torch.from_numpy(a).to(dtype)
    op = damped_inverse(a_t, rho)
    ref, kappa = _clamped_inverse(a_t.double().numpy(), rho)
    eps = float(torch.finfo(dtype).eps)
    ctx = f"n={n}, seed={seed}, scale={scale:.3e}, ρ={rho:.3e}, λ_min={lam[0]:.3e}, {dtype}"
    assert op.fallback is True, ctx
    assert op.matrix.dtype == dtype, ctx
    assert_allclose_report(op.matrix, ref, rtol=4 * eps + 8 * kappa * n * EPS64, ctx=ctx)


def test_damped_inverse_fallback_on_float32_covariance_indefinite_by_rounding() -> None:
    """A rank-deficient float32 covariance XᵀX/n with ρ below its rounding (ρ = 1e-9·‖A‖).

    In float32, A + ρI rounds to A (ρ < ε32·‖A‖), which is singular or indefinite by
    rounding: the Cholesky fails on these fixed seeds and the documented fallback must give
    ``V diag(1/(max(λ,0)+ρ)) Vᵀ`` of the float32 A (``scipy.linalg.eigh``, float64), flagged.
    Whatever path a seed takes, the result must equal that reference to ``4·ε32`` relative
    on the fallback path.
    """
    taken = 0
    for seed in range(5):
        x = torch.from_numpy(np.random.default_rng(seed).standard_normal((8, 40))).float()
        a = x.mT @ x / 8  # d = 40, rank ≤ 8: singular in exact arithmetic
        rho = 1e-9 * float(torch.linalg.matrix_norm(a, 2))
        op = damped_inverse(a, rho)
        if op.fallback:
            taken += 1
            ref, kappa = _clamped_inverse(a.double().numpy(), rho)
            assert_allclose_report(
                op.matrix, ref, rtol=4 * EPS32 + 8 * kappa * 40 * EPS64, ctx=f"seed={seed}"
            )
    assert taken >= 3, f"fallback taken on only {taken} of 5 indefinite-by-rounding inputs"


@given(case=psd_cases(max_n=120), rho=dampings())
def test_damped_inverse_is_symmetric_positive_definite(case: PSDCase, rho: float) -> None:
    """(A + ρI)⁻¹ of a PSD A is symmetric with eigenvalues in [1/(λ_max+ρ), 1/ρ].

    Checked with ``scipy.linalg.eigvalsh`` (float64) to ``8·κ·d·ε64`` relative to 1/ρ; the
    asymmetry ``max|P − Pᵀ|`` to ``4·d·ε64/ρ`` (cholesky_inverse is symmetric by construction
    up to rounding).
    """
    op = damped_inverse(case.torch(), rho)
    p = op.matrix.numpy()
    d = case.n
    kappa = case.damped_condition(rho)
    ctx = f"{case.describe()}, ρ={rho:.3e}, κ={kappa:.2e}, fallback={op.fallback}"
    assert np.abs(p - p.T).max() <= 4 * d * EPS64 * kappa / rho, ctx
    mu = sla.eigvalsh(0.5 * (p + p.T))
    lam_max = float(case.eigenvalues.max(initial=0.0))
    tol = 8 * kappa * d * EPS64 / rho
    assert mu.min() >= 1 / (lam_max + rho) - tol and mu.max() <= 1 / rho + tol, (
        f"eig ∈ [{mu.min():.6e}, {mu.max():.6e}]. {ctx}"
    )


# --------------------------------------------------------------------------------------------
# Sherman–Morrison
# --------------------------------------------------------------------------------------------


@given(
    d=st.integers(1, 300),
    seed=st.integers(0, 2**31 - 1),
    log_norm2=st.floats(-8.0, 8.0),
    rho=dampings(),
    k=st.integers(1, 6),
)
def test_rank_one_matches_scipy_solve(
    d: int, seed: int, log_norm2: float, rho: float, k: int
) -> None:
    """Sherman & Morrison (1950), Eva eq. 9: P X = ``scipy.linalg.solve(ρI + vvᵀ, X)``.

    float64; per column ``‖PX − X̃‖ ≤ (4(d+1)ε + 4κdε)·‖x‖/ρ`` with κ = 1 + ‖v‖²/ρ (SciPy's
    solve) — the formula itself works at the scale ‖x‖/ρ (see ``test_operators_props``).
    """
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(d)
    v *= math.sqrt(10.0**log_norm2) / np.linalg.norm(v)
    x = rng.standard_normal((d, k))
    op = rank_one_damped_inverse(torch.from_numpy(v), rho)
    got = op.matmat(torch.from_numpy(x)).numpy()
    ref = sla.solve(rho * np.eye(d) + np.outer(v, v), x, assume_a="pos")
    kappa = 1.0 + float(v @ v) / rho
    err = np.linalg.norm(got - ref, axis=0)
    bound = (4 * (d + 1) + 4 * kappa * d) * EPS64 * np.linalg.norm(x, axis=0) / rho
    assert np.all(err <= bound), (
        f"max err/bound = {np.max(err / bound):.3f}; d={d}, ‖v‖²={float(v @ v):.3e}, ρ={rho:.3e}, "
        f"κ={kappa:.2e}, seed={seed}"
    )


def test_rank_one_is_order_d() -> None:
    """Sherman–Morrison applied at d = 2·10⁶ in O(d) memory and time (Eva's point).

    The operator holds only v (d numbers); a d × d matrix would need 32 TB, so the products
    can only succeed without one. Checked against the spectral closed form
    ``(x − u(uᵀx))/ρ + u(uᵀx)/(ρ + ‖v‖²)`` (u = v/‖v‖) in float64, to ``8·√d·ε·‖x‖/ρ``.
    """
    d = 2_000_000
    rng = np.random.default_rng(0)
    v = rng.standard_normal(d)
    rho = 0.3
    op = rank_one_damped_inverse(torch.from_numpy(v), rho)
    assert isinstance(op, RankOneDampedInverse)
    held = [f for f in vars(op).values() if isinstance(f, torch.Tensor)]
    assert sum(t.numel() for t in held) == d, "the operator must hold only v"
    nv2 = float(v @ v)
    u = v / math.sqrt(nv2)
    x = rng.standard_normal(d)
    got = op.matmat(torch.from_numpy(x)).numpy()
    ux = float(u @ x)
    ref = (x - u * ux) / rho + u * ux / (rho + nv2)
    tol = 8 * math.sqrt(d) * EPS64 * np.linalg.norm(x) / rho
    assert np.linalg.norm(got - ref) <= tol
    g = rng.standard_normal((2, d))
    got_g = op.rmatmat(torch.from_numpy(g)).numpy()
    ug = g @ u
    ref_g = (g - np.outer(ug, u)) / rho + np.outer(ug, u) / (rho + nv2)
    assert np.all(
        np.linalg.norm(got_g - ref_g, axis=1)
        <= 8 * math.sqrt(d) * EPS64 * np.linalg.norm(g, axis=1) / rho
    )
