"""Every solver's operator against its dense float64 twin (curvlinops' ``compare_matmat``).

One helper, :func:`compare_with_dense`, checks *any* :class:`~nysact.linalg.SymmetricOperator`
against a float64 d × d matrix that it should equal: ``matmat`` on a vector and on a matrix,
``rmatmat``, batched operands (each slice, or a ``ValueError``), ``to_dense`` and the SciPy
wrapper's ``matvec``/``rmatvec``/``matmat``. It is
applied to every solver, each against an independent oracle built with NumPy/SciPy:

* ``nystrom_tropp`` / ``nystrom_paper`` (both solves): the operator's own factors (U, λ̂, ρ) give
  ``U diag(1/(λ̂+ρ)) Uᵀ + (I − UUᵀ)/ρ`` formed densely in float64 (NysAct Alg. 1 line 19 with
  1/(λ̂+ρ) on the range), *and* ``scipy.linalg.solve(Â + ρI, ·)`` with ``Â = U diag(λ̂) Uᵀ`` —
  the two agree only if U has orthonormal columns and λ̂ ≥ 0, which is checked as well;
* ``damped_inverse``: ``scipy.linalg.inv(A + ρI)`` and ``scipy.linalg.solve(A + ρI, ·)``;
* ``rank_one_damped_inverse``: ``scipy.linalg.solve(ρI + vvᵀ, ·)`` and the spectral closed form
  ``(I − uuᵀ)/ρ + uuᵀ/(ρ + ‖v‖²)``, u = v/‖v‖.

Tolerances (all norm-wise, per column: ``‖Px − P̃x‖₂ ≤ rtol·s·‖x‖₂``, the forward-error form
of a backward-stable product, with s = ‖P̃‖₂ unless stated):

* a factored operator (Nyström ``x/ρ − U diag(λ̂/(ρ(λ̂+ρ))) Uᵀx``, Sherman–Morrison
  ``(x − v(vᵀx)/(ρ+vᵀv))/ρ``) computes at the scale ``s = 1/ρ`` (≥ ‖P‖₂; its subtraction
  cancels on the range, so relative to ‖Px‖ the error is κ(Â+ρI)·rtol — inherent to the form):
  ``rtol = 4·(r+1)·ε`` vs. its float64 formula twin (r = number of factor columns; for
  Sherman–Morrison's d-term dot product ``4·(d+1)·ε``); ε of the operator's dtype; inputs are
  rounded to the dtype first, so only the product's own rounding counts;
* a twin that is an *inverse* computed by SciPy (``solve``/``inv``): ``+ 4·κ·d·ε64``, κ = κ(M)
  of the matrix M inverted (the classic bound for a backward-stable solve);
* ``damped_inverse`` itself (it inverts): ``rtol = 4·κ(A+ρI)·d·ε`` of its dtype (8 in float64,
  where SciPy's ``inv`` adds an error of the same size); float32 is
  drawn with ρ relative to λ_max(A) so that κ ≤ 1001 (a float32 bound κ·d·ε32 ≥ 1 says nothing).
* U has orthonormal columns to ``8·d·ε`` (max entry of UᵀU − I) and λ̂ ≥ 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from hypothesis import given
from hypothesis import strategies as st

from nysact.linalg import (
    LowRankDampedInverse,
    SymmetricOperator,
    damped_inverse,
    nystrom_paper,
    nystrom_tropp,
    rank_one_damped_inverse,
)
from property_tests._matrices import (
    PSDCase,
    dampings,
    draw_test_matrix,
    psd_cases,
    relative_dampings,
)

DTYPES = [torch.float64, torch.float32]
DTYPE_IDS = ["float64", "float32"]


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


EPS64 = _eps(torch.float64)


# --------------------------------------------------------------------------------------------
# The shared helper
# --------------------------------------------------------------------------------------------


def _colwise_check(
    actual: np.ndarray,
    desired: np.ndarray,
    x: np.ndarray,
    opnorm: float,
    rtol: float,
    what: str,
    ctx: str,
) -> None:
    """``‖actual_j − desired_j‖₂ ≤ rtol·opnorm·‖x_j‖₂`` for every column j (or the vector)."""
    assert actual.shape == desired.shape, f"{what}: shape {actual.shape} != {desired.shape}. {ctx}"
    if not np.all(np.isfinite(actual)):
        raise AssertionError(f"{what}: {np.sum(~np.isfinite(actual))} non-finite entries. {ctx}")
    a2 = actual.reshape(actual.shape[0], -1)
    d2 = desired.reshape(desired.shape[0], -1)
    x2 = x.reshape(x.shape[0], -1)
    err = np.linalg.norm(a2 - d2, axis=0)
    bound = rtol * opnorm * np.linalg.norm(x2, axis=0)
    bad = err > bound
    if np.any(bad):
        j = int(np.argmax(err / np.maximum(bound, np.finfo(np.float64).tiny)))
        raise AssertionError(
            f"{what}: column {j}: ‖diff‖ = {err[j]:.3e} > rtol·‖P‖·‖x‖ = {bound[j]:.3e} "
            f"(rtol = {rtol:.2e}, ‖P‖ = {opnorm:.3e}); {int(bad.sum())} of {bad.size} columns "
            f"fail. {ctx}"
        )


def compare_with_dense(
    op: SymmetricOperator,
    dense: np.ndarray,
    *,
    rtol: float,
    seed: int,
    ctx: str,
    scale: float | None = None,
) -> None:
    """Check every product of ``op`` against the float64 matrix ``dense`` it should equal.

    ``matmat`` on a (d,) vector and a (d, k) matrix, ``rmatmat`` on an (m, d) matrix,
    batched (2, d, k) / (2, m, d) operands (slice by slice, or a ``ValueError``), ``to_dense``,
    and ``to_scipy()``'s ``matvec``, ``rmatvec``, ``matmat`` and ``@``. Inputs are
    drawn from ``seed``, rounded to the operator's dtype, and the oracle is applied to those
    rounded inputs in float64, so only the operator's own rounding is measured. Tolerance:
    ``‖Px − P̃x‖₂ ≤ rtol·s·‖x‖₂`` per column, with ``s = scale`` or ``‖P̃‖₂`` by default (a
    factored ``x/ρ − U(…)Uᵀx`` is computed at the scale ``s = 1/ρ ≥ ‖P‖₂``).
    """
    d = op.dim
    assert dense.shape == (d, d), f"oracle shape {dense.shape} for an operator of dim {d}. {ctx}"
    dtype = op.dtype
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 6))
    m = int(rng.integers(1, 6))
    opnorm = scale if scale is not None else (float(np.linalg.norm(dense, 2)) if d else 0.0)

    def rounded(shape: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray]:
        t = torch.from_numpy(rng.standard_normal(shape)).to(dtype)
        return t, t.double().numpy()

    # matmat on a vector and on a matrix.
    v_t, v = rounded((d,))
    out = op.matmat(v_t)
    assert out.shape == (d,) and out.dtype == dtype, f"matmat(vector) {out.shape} {out.dtype}"
    _colwise_check(out.double().numpy(), dense @ v, v, opnorm, rtol, "matmat(vector)", ctx)
    x_t, x = rounded((d, k))
    out = op.matmat(x_t)
    assert out.shape == (d, k) and out.dtype == dtype, f"matmat(matrix) {out.shape} {out.dtype}"
    _colwise_check(out.double().numpy(), dense @ x, x, opnorm, rtol, "matmat(matrix)", ctx)

    # rmatmat: G P, checked row-wise as (G P)ᵀ = P Gᵀ.
    g_t, g = rounded((m, d))
    out = op.rmatmat(g_t)
    assert out.shape == (m, d) and out.dtype == dtype, f"rmatmat {out.shape} {out.dtype}"
    _colwise_check(out.double().numpy().T, (g @ dense).T, g.T, opnorm, rtol, "rmatmat", ctx)

    # to_dense: P e_j column by column.
    full = op.to_dense()
    assert full.shape == (d, d) and full.dtype == dtype, f"to_dense {full.shape} {full.dtype}"
    _colwise_check(full.double().numpy(), dense, np.eye(d), opnorm, rtol, "to_dense", ctx)

    # Batched operands: ``matmat`` accepts (..., d, k) and ``rmatmat`` documents (..., m, d);
    # each slice must be P x_b (or the operand rejected with a ValueError naming it).
    xb_t, xb = rounded((2, d, k))
    try:
        out = op.matmat(xb_t)
    except ValueError as err:
        assert "x must have shape" in str(err), str(err)
    else:
        assert out.shape == (2, d, k), f"batched matmat shape {tuple(out.shape)}. {ctx}"
        for b in range(2):
            _colwise_check(
                out[b].double().numpy(), dense @ xb[b], xb[b], opnorm, rtol, "batched matmat", ctx
            )
    gb_t, gb = rounded((2, m, d))
    try:
        out = op.rmatmat(gb_t)
    except ValueError as err:
        assert "g must have shape" in str(err), str(err)
    else:
        assert out.shape == (2, m, d), f"batched rmatmat shape {tuple(out.shape)}. {ctx}"
        for b in range(2):
            _colwise_check(
                out[b].double().numpy().T,
                (gb[b] @ dense).T,
                gb[b].T,
                opnorm,
                rtol,
                "batched rmatmat",
                ctx,
            )

    # SciPy LinearOperator (float64 in, float64 out).
    lin = op.to_scipy()
    assert lin.shape == (d, d), f"to_scipy shape {lin.shape}. {ctx}"
    assert lin.dtype == np.float64, f"to_scipy dtype {lin.dtype}. {ctx}"
    mv = np.asarray(lin.matvec(v))
    _colwise_check(mv.reshape(d), dense @ v, v, opnorm, rtol, "to_scipy().matvec", ctx)
    rmv = np.asarray(lin.rmatvec(v))
    _colwise_check(rmv.reshape(d), dense.T @ v, v, opnorm, rtol, "to_scipy().rmatvec", ctx)
    mm = np.asarray(lin.matmat(x))
    _colwise_check(mm, dense @ x, x, opnorm, rtol, "to_scipy().matmat", ctx)
    at = np.asarray(lin @ x)
    _colwise_check(at, dense @ x, x, opnorm, rtol, "to_scipy() @ X", ctx)


# --------------------------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------------------------


def lowrank_formula_twin(op: LowRankDampedInverse) -> np.ndarray:
    """``U diag(1/(λ̂+ρ)) Uᵀ + (I − UUᵀ)/ρ`` from the operator's factors, in float64."""
    u = op.basis.double().numpy()
    lam = op.eigenvalues.double().numpy()
    rho = op.damping
    d = u.shape[0]
    return (u / (lam + rho)) @ u.T + (np.eye(d) - u @ u.T) / rho


def lowrank_check_factors(op: LowRankDampedInverse, ctx: str) -> None:
    """U has orthonormal columns (to 8·d·ε), λ̂ is finite and ≥ 0, ρ > 0 (Alg. 1 lines 17–19)."""
    u = op.basis.double().numpy()
    lam = op.eigenvalues.double().numpy()
    d, r = u.shape
    assert r == lam.shape[0] and r <= d, f"U {u.shape}, λ̂ {lam.shape}. {ctx}"
    assert np.all(np.isfinite(u)) and np.all(np.isfinite(lam)), f"non-finite factors. {ctx}"
    assert np.all(lam >= 0.0), f"negative λ̂: {lam.min():.3e}. {ctx}"
    orth = np.abs(u.T @ u - np.eye(r)).max() if r else 0.0
    tol = 8 * max(d, 1) * _eps(op.dtype)
    assert orth <= tol, f"‖UᵀU − I‖_max = {orth:.3e} > 8·d·ε = {tol:.3e}. {ctx}"


@st.composite
def nystrom_inputs(draw: st.DrawFn, max_n: int = 300) -> tuple[PSDCase, str, int, int]:
    """A PSD case, a family, a rank r (Gaussian: 1…d+2; subcolumn: 1…d) and an Ω seed."""
    case = draw(psd_cases(max_n=max_n))
    family = draw(st.sampled_from(["gaussian", "subcolumn"]))
    r_max = case.n + 2 if family == "gaussian" else case.n
    r = draw(st.integers(1, min(r_max, 60)) | st.integers(1, r_max))
    seed = draw(st.integers(0, 2**31 - 1))
    return case, family, r, seed


def _sketch(case: PSDCase, omega: torch.Tensor) -> torch.Tensor:
    """``Y = AΩ`` in float64 from the (float64) dense A, cast to Ω's dtype."""
    return (torch.from_numpy(case.dense) @ omega.double()).to(omega.dtype)


# --------------------------------------------------------------------------------------------
# Nyström operators
# --------------------------------------------------------------------------------------------


def _check_lowrank(op: LowRankDampedInverse, dtype: torch.dtype, seed: int, ctx: str) -> None:
    lowrank_check_factors(op, ctx)
    r = op.rank
    eps = _eps(dtype)
    # (1) the operator's products vs. its line-19 formula formed densely in float64.
    rho = op.damping
    compare_with_dense(
        op,
        lowrank_formula_twin(op),
        rtol=4 * (r + 1) * eps,
        seed=seed,
        ctx=ctx + " [formula]",
        scale=1.0 / rho,
    )
    if dtype != torch.float64:
        return
    # (2) in float64 also vs. scipy.linalg.solve(Â + ρI, ·) with Â = U diag(λ̂) Uᵀ.
    u = op.basis.numpy()
    lam = op.eigenvalues.numpy()
    d = op.dim
    m = (u * lam) @ u.T + rho * np.eye(d)
    m = 0.5 * (m + m.T)
    kappa = (float(lam.max(initial=0.0)) + rho) / rho
    rtol = 4 * (r + 1) * eps + 4 * kappa * d * EPS64
    if rtol >= 0.5:
        # κ(Â+ρI) ≳ 1/(8dε64): SciPy's inverse (and any bound on it) says nothing. Reached only
        # by the authors' solve, whose λ̂ can exceed λ_max(A) by orders of magnitude (e.g.
        # 3.6e15 for λ = 1e7 with d = 2, r = 3 Gaussian).
        return
    solve_twin = sla.solve(m, np.eye(d), assume_a="pos")
    ctx2 = ctx + f" [scipy.linalg.solve(Â+ρI), κ(Â+ρI)={kappa:.2e}]"
    compare_with_dense(op, solve_twin, rtol=rtol, seed=seed + 1, ctx=ctx2, scale=1.0 / rho)
    # rmatmat against solve(Â + ρI, Gᵀ)ᵀ directly, as the optimizer applies it.
    g = np.random.default_rng(seed + 2).standard_normal((3, d))
    gp = op.rmatmat(torch.from_numpy(g)).numpy()
    _colwise_check(
        gp.T,
        sla.solve(m, g.T, assume_a="pos"),
        g.T,
        1.0 / rho,
        rtol,
        "rmatmat vs solve(Â+ρI, Gᵀ)ᵀ",
        ctx2,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@given(inputs=nystrom_inputs(), rho=dampings())
def test_nystrom_tropp_operator_matches_dense(
    dtype: torch.dtype, inputs: tuple[PSDCase, str, int, int], rho: float
) -> None:
    """Tropp et al. (2017) Alg. 3 operator: every product = (Â+ρI)⁻¹ formed densely.

    Twins: the line-19 formula from (U, λ̂, ρ) and ``scipy.linalg.solve(Â+ρI, ·)`` (float64).
    Tolerances: module docstring (4(r+1)ε at the scale 1/ρ; + 4κd·ε64 for SciPy's solve).
    """
    case, family, r, seed = inputs
    omega = draw_test_matrix(family, case.n, r, seed, dtype)
    op = nystrom_tropp(_sketch(case, omega), omega, rho)
    ctx = f"{case.describe()}, {family}, r={r}, ρ={rho:.2e}, seed={seed}, dtype={dtype}"
    assert op.dim == case.n and op.rank == min(r, case.n), f"rank {op.rank}. {ctx}"
    _check_lowrank(op, dtype, seed, ctx)


@pytest.mark.parametrize("solve", ["standard", "authors"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@given(inputs=nystrom_inputs(), rho=dampings())
def test_nystrom_paper_operator_matches_dense(
    solve: str, dtype: torch.dtype, inputs: tuple[PSDCase, str, int, int], rho: float
) -> None:
    """NysAct Alg. 1 lines 11–19 operator (both line-16 solves): products = (Â+ρI)⁻¹ densely.

    Same twins and tolerances as the Tropp variant (what Â *is* for this variant is checked
    against a line-by-line transcription in ``test_nystrom_props.py``).
    """
    case, family, r, seed = inputs
    omega = draw_test_matrix(family, case.n, r, seed, dtype)
    op = nystrom_paper(_sketch(case, omega), omega, rho, solve=solve)  # type: ignore[arg-type]
    ctx = (
        f"{case.describe()}, {family}, r={r}, ρ={rho:.2e}, seed={seed}, solve={solve}, "
        f"dtype={dtype}"
    )
    assert op.dim == case.n and op.rank == min(r, case.n), f"rank {op.rank}. {ctx}"
    _check_lowrank(op, dtype, seed, ctx)


# --------------------------------------------------------------------------------------------
# Dense damped inverse
# --------------------------------------------------------------------------------------------


@given(case=psd_cases(), rho=dampings(), seed=st.integers(0, 2**31 - 1))
def test_damped_inverse_operator_matches_scipy_float64(
    case: PSDCase, rho: float, seed: int
) -> None:
    """``damped_inverse`` (Cholesky, FOOF/KFAC) = ``scipy.linalg.inv(A+ρI)`` / ``solve``.

    Tolerance: ``rtol = 8·κ(A+ρI)·d·ε64`` (4 each for the Cholesky inverse and SciPy's; κ ≤
    1e14 here, so the bound stays below 0.6 — meaningful for every draw).
    """
    a = case.dense
    d = case.n
    op = damped_inverse(torch.from_numpy(a), rho)
    kappa = case.damped_condition(rho)
    rtol = 8 * kappa * d * EPS64
    ctx = f"{case.describe()}, ρ={rho:.2e}, κ(A+ρI)={kappa:.2e}, seed={seed}, float64"
    m = a + rho * np.eye(d)
    compare_with_dense(op, sla.inv(m), rtol=rtol, seed=seed, ctx=ctx + " [scipy.linalg.inv]")
    # And against solve(A+ρI, X) applied directly to a right-hand side.
    x = np.random.default_rng(seed + 1).standard_normal((d, 3))
    _colwise_check(
        op.matmat(torch.from_numpy(x)).numpy(),
        sla.solve(m, x, assume_a="sym"),
        x,
        1.0 / (case.eigenvalues.min() + rho),
        rtol,
        "matmat vs scipy.linalg.solve(A+ρI, X)",
        ctx,
    )


@given(case=psd_cases(), factor=relative_dampings(), seed=st.integers(0, 2**31 - 1))
def test_damped_inverse_operator_matches_scipy_float32(
    case: PSDCase, factor: float, seed: int
) -> None:
    """float32 ``damped_inverse`` = ``scipy.linalg.inv(A₃₂ + ρI)`` in float64.

    ρ = factor·λ_max(A) (factor ∈ [1e-3, 10]) keeps κ(A+ρI) ≤ 1001; the oracle inverts the
    float32-rounded A in float64. Tolerance ``rtol = 4·κ·d·ε32`` (≤ 0.15).
    """
    lam_max = float(case.eigenvalues.max(initial=0.0))
    rho = factor * (lam_max if lam_max > 0 else 1.0)
    a32 = case.torch(torch.float32)
    a = a32.double().numpy()
    d = case.n
    op = damped_inverse(a32, rho)
    kappa = float(case.damped_condition(rho))
    ctx = f"{case.describe()}, ρ={rho:.2e}, κ(A+ρI)={kappa:.2e}, seed={seed}, float32"
    compare_with_dense(
        op,
        sla.inv(a + rho * np.eye(d)),
        rtol=4 * kappa * d * _eps(torch.float32),
        seed=seed,
        ctx=ctx,
    )


# --------------------------------------------------------------------------------------------
# Sherman–Morrison
# --------------------------------------------------------------------------------------------


@st.composite
def rank_one_inputs(draw: st.DrawFn) -> tuple[np.ndarray, float, int]:
    """v of size 1…300 with ‖v‖² spanning 1e-8…1e8, ρ ∈ [1e-4, 1e2], and a seed."""
    d = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**31 - 1))
    log_norm2 = draw(st.floats(-8.0, 8.0))
    rho = draw(dampings())
    v = np.random.default_rng(seed).standard_normal(d)
    v *= math.sqrt(10.0**log_norm2) / max(np.linalg.norm(v), 1e-300)
    return v, rho, seed


def rank_one_closed_form(v: np.ndarray, rho: float) -> np.ndarray:
    """``(ρI + vvᵀ)⁻¹ = (I − uuᵀ)/ρ + uuᵀ/(ρ + ‖v‖²)``, u = v/‖v‖ (eigendecomposition)."""
    d = v.shape[0]
    nv2 = float(v @ v)
    if nv2 == 0.0:
        return np.eye(d) / rho
    u = v / math.sqrt(nv2)
    uu = np.outer(u, u)
    return (np.eye(d) - uu) / rho + uu / (rho + nv2)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@given(inputs=rank_one_inputs())
def test_rank_one_operator_matches_scipy(
    dtype: torch.dtype, inputs: tuple[np.ndarray, float, int]
) -> None:
    """Sherman & Morrison (1950) / Eva eq. 9: the operator = ``(ρI + vvᵀ)⁻¹``.

    Twins: the spectral closed form and ``scipy.linalg.solve(ρI + vvᵀ, I)``. The formula
    ``(x − v(vᵀx)/(ρ+vᵀv))/ρ`` works at the scale ‖x‖/ρ (its subtraction cancels along v), so
    the error is measured against ``‖x‖/ρ``: ``rtol = 4·(d+1)·ε`` of the dtype (the dot product
    vᵀx) for the closed form, plus ``4·κ·d·ε64`` for SciPy's solve (κ = 1 + ‖v‖²/ρ ≤ 1e12).
    """
    v, rho, seed = inputs
    v_t = torch.from_numpy(v).to(dtype)
    v_r = v_t.double().numpy()  # the rounded v the operator actually holds
    d = v.shape[0]
    op = rank_one_damped_inverse(v_t, rho)
    kappa = 1.0 + float(v_r @ v_r) / rho
    eps = _eps(dtype)
    ctx = f"d={d}, ‖v‖²={float(v_r @ v_r):.2e}, ρ={rho:.2e}, κ={kappa:.2e}, seed={seed}, {dtype}"
    rtol = 4 * (d + 1) * eps
    compare_with_dense(
        op,
        rank_one_closed_form(v_r, rho),
        rtol=rtol,
        seed=seed,
        ctx=ctx + " [closed form]",
        scale=1.0 / rho,
    )
    m = rho * np.eye(d) + np.outer(v_r, v_r)
    compare_with_dense(
        op,
        sla.solve(m, np.eye(d), assume_a="pos"),
        rtol=rtol + 4 * kappa * d * EPS64,
        seed=seed + 1,
        ctx=ctx + " [scipy.linalg.solve]",
        scale=1.0 / rho,
    )
