"""Property tests of nysact.linalg.lowrank against dense float64 NumPy/SciPy algebra.

Hypothesis draws sizes, spectra, dampings and seeds (never raw floats in the matrices); each
failure message names the drawn parameters. Oracles: ``numpy`` products, ``scipy.linalg.solve``,
``scipy.linalg.inv`` and ``scipy.linalg.eigh`` in float64, never the module's own output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from nysact.linalg.lowrank import (
    DiagPlusLowRank,
    brand_rank_one_update,
    diag_plus_low_rank,
    ginger_direction,
    ginger_update,
    random_semi_orthogonal,
)
from property_tests._matrices import (
    DECAYS,
    PSDCase,
    assert_allclose_report,
    dampings,
    psd_cases,
    random_matrix,
)

EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)
MAX_D = 120
MAX_TAU = 16


@dataclass(frozen=True)
class LowRankCase:
    """``M = γI + U diag(σ) Uᵀ``: U and σ are the top τ eigenpairs of a drawn PSD case."""

    psd: PSDCase
    tau: int
    gamma: float

    @property
    def d(self) -> int:
        return self.psd.n

    def describe(self) -> str:
        return f"LowRankCase(d={self.d}, τ={self.tau}, γ={self.gamma:.3e}, {self.psd.describe()})"

    @property
    def basis(self) -> np.ndarray:
        return np.ascontiguousarray(self.psd.basis[:, : self.tau])

    @property
    def sigma(self) -> np.ndarray:
        return np.ascontiguousarray(self.psd.eigenvalues[: self.tau])

    def dense(self) -> np.ndarray:
        u = self.basis
        return self.gamma * np.eye(self.d) + (u * self.sigma) @ u.T

    def cond(self) -> float:
        return float((self.gamma + self.sigma.max()) / self.gamma)


@st.composite
def lowrank_cases(draw: st.DrawFn, *, min_gamma_exp: float = -4.0) -> LowRankCase:
    psd = draw(psd_cases(min_n=2, max_n=MAX_D, max_cond=1e6, min_scale=1e-4, max_scale=1e4))
    tau = draw(st.integers(1, min(psd.n - 1, MAX_TAU)))
    gamma = draw(dampings(min_gamma_exp, 2.0))
    return LowRankCase(psd, tau, gamma)


def _state(case: LowRankCase, dtype: torch.dtype = torch.float64) -> DiagPlusLowRank:
    return diag_plus_low_rank(
        case.gamma,
        torch.from_numpy(case.basis).to(dtype),
        torch.from_numpy(case.sigma).to(dtype),
    )


# --------------------------------------------------------------------------------------------
# DiagPlusLowRank against dense algebra
# --------------------------------------------------------------------------------------------


@given(case=lowrank_cases(), k=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_operator_matches_dense_float64(case: LowRankCase, k: int, seed: int) -> None:
    """matmat / rmatmat / to_dense vs ``M @ X``; solve / inverse vs ``scipy.linalg.solve``/``inv``.

    Tolerances (absolute, entrywise), with κ = (γ + max σ)/γ:
    products ``4·d·ε·‖M‖₂·max‖x‖``; solves ``4·κ·d·ε·max‖x‖/γ`` (the oracle's own error is
    O(κ·d·ε) relative; the Woodbury solve itself is κ-free).
    """
    d, kappa, gamma = case.d, case.cond(), case.gamma
    ctx = f"{case.describe()}, k={k}, seed={seed}, κ={kappa:.2e}"
    m = case.dense()
    state = _state(case)
    x = random_matrix((d, k), seed)
    xt = torch.from_numpy(x)
    xn = float(np.linalg.norm(x, axis=0).max())
    norm_m = gamma + float(case.sigma.max())
    prod_tol = 4 * d * EPS64 * norm_m * xn
    solve_tol = 4 * kappa * d * EPS64 * xn / gamma

    assert_allclose_report(state.to_dense(), m, rtol=0, atol=4 * d * EPS64 * norm_m, ctx=ctx)
    assert_allclose_report(state.matmat(xt), m @ x, rtol=0, atol=prod_tol, ctx=ctx)
    assert_allclose_report(state.matmat(xt[:, 0]), m @ x[:, 0], rtol=0, atol=prod_tol, ctx=ctx)
    assert_allclose_report(state.rmatmat(xt.mT), x.T @ m, rtol=0, atol=prod_tol, ctx=ctx)
    ref = sla.solve(m, x, assume_a="pos")
    assert_allclose_report(state.solve(xt), ref, rtol=0, atol=solve_tol, ctx=ctx)
    assert_allclose_report(state.solve(xt[:, 0]), ref[:, 0], rtol=0, atol=solve_tol, ctx=ctx)
    inv = state.inverse()
    assert_allclose_report(inv.matmat(xt), ref, rtol=0, atol=solve_tol, ctx=ctx)
    assert_allclose_report(inv.rmatmat(xt.mT), ref.T, rtol=0, atol=solve_tol, ctx=ctx)
    assert_allclose_report(
        inv.to_dense(), sla.inv(m), rtol=0, atol=4 * kappa * d * EPS64 / gamma, ctx=ctx
    )
    assert_allclose_report(inv.to_scipy() @ x, ref, rtol=0, atol=solve_tol, ctx=ctx)


@given(case=lowrank_cases(min_gamma_exp=-2.0), k=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_operator_matches_dense_float32(case: LowRankCase, k: int, seed: int) -> None:
    """The float32 operator vs the float64 dense oracle of the same (unrounded) U, σ, γ.

    Tolerances: products ``8·d·ε₃₂·‖M‖₂·max‖x‖``; solves ``8·d·ε₃₂·max‖x‖/γ +
    4·κ·d·ε₆₄·max‖x‖/γ`` — rounding U to float32 perturbs the Woodbury result by O(ε₃₂‖x‖/γ),
    independent of κ, because the formula uses U's orthonormality rather than inverting M.
    """
    d, kappa, gamma = case.d, case.cond(), case.gamma
    ctx = f"{case.describe()}, k={k}, seed={seed}, κ={kappa:.2e}, float32"
    m = case.dense()
    state = _state(case, torch.float32)
    x = random_matrix((d, k), seed).astype(np.float32).astype(np.float64)
    xt = torch.from_numpy(x).float()
    xn = float(np.linalg.norm(x, axis=0).max())
    norm_m = gamma + float(case.sigma.max())
    prod_tol = 8 * d * EPS32 * norm_m * xn
    solve_tol = (8 * d * EPS32 + 4 * kappa * d * EPS64) * xn / gamma

    assert_allclose_report(state.matmat(xt), m @ x, rtol=0, atol=prod_tol, ctx=ctx)
    assert_allclose_report(state.rmatmat(xt.mT), x.T @ m, rtol=0, atol=prod_tol, ctx=ctx)
    ref = sla.solve(m, x, assume_a="pos")
    assert_allclose_report(state.solve(xt), ref, rtol=0, atol=solve_tol, ctx=ctx)
    assert_allclose_report(state.solve(xt[:, 0]), ref[:, 0], rtol=0, atol=solve_tol, ctx=ctx)
    assert_allclose_report(
        state.inverse().to_dense(),
        sla.inv(m),
        rtol=0,
        atol=(8 * d * EPS32 + 4 * kappa * d * EPS64) / gamma,
        ctx=ctx,
    )


# --------------------------------------------------------------------------------------------
# Brand's rank-one update against scipy.linalg.eigh of the updated dense matrix
# --------------------------------------------------------------------------------------------

# (weight of v's part inside range(U), size of its part outside, relative): generic, nearly
# in range(U), exactly in range(U) (the ρ = 0 branch), and v = 0.
VECTOR_KINDS = ((1.0, 1.0), (1.0, 1e-4), (1.0, 1e-10), (1.0, 0.0), (0.0, 0.0))


@given(
    case=lowrank_cases(),
    extra=st.booleans(),
    kind=st.sampled_from(VECTOR_KINDS),
    log_c=st.floats(-3.0, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_brand_matches_eigh_of_the_updated_matrix(
    case: LowRankCase, extra: bool, kind: tuple[float, float], log_c: float, seed: int
) -> None:
    """Top-``rank`` eigenpairs of ``A = U diag(σ) Uᵀ + c v vᵀ`` (rank τ or τ + 1).

    Checked with ``‖A‖ = λ₁(A)`` and ``tol = 8·d·ε·‖A‖``:

    * eigenvalues vs ``scipy.linalg.eigh`` (descending, top ``rank``) to ``tol``;
    * ``max|U'ᵀU' − I| ≤ 8·d·ε``;
    * Eckart–Young: ``‖A − U'Λ'U'ᵀ‖_F = (Σ_{i>rank} λ_i²)^½`` to ``2·d·tol`` (unique even with
      ties);
    * the reconstruction ``U'Λ'U'ᵀ`` vs eigh's ``V_r Λ_r V_rᵀ`` to ``tol·(1 + λ_r/gap)``,
      ``gap = λ_r − λ_{r+1}`` — compared only where the gap is clear (factor ≤ 1e6); otherwise
      the truncation is not unique and the Eckart–Young check stands in for it.
    """
    d, tau = case.d, case.tau
    rank = tau + 1 if extra else tau
    c = float(10.0**log_c)
    u, sigma = case.basis, case.sigma
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    w -= u @ (u.T @ w)
    w -= u @ (u.T @ w)
    w /= np.linalg.norm(w)
    inside = u @ rng.standard_normal(tau)
    weight, outside = kind
    v = np.sqrt(case.psd.scale) * weight * (inside + outside * np.linalg.norm(inside) * w)
    ctx = f"{case.describe()}, rank={rank}, v kind={kind}, c={c:.3e}, seed={seed}"

    a = (u * sigma) @ u.T + c * np.outer(v, v)
    lam_all, vec_all = sla.eigh(0.5 * (a + a.T))
    lam_all, vec_all = lam_all[::-1], vec_all[:, ::-1]
    norm_a = max(float(lam_all[0]), 1e-300)
    tol = 8 * d * EPS64 * norm_a

    nb, nv = brand_rank_one_update(
        torch.from_numpy(u), torch.from_numpy(sigma), torch.from_numpy(v), c, rank
    )
    b, lam = nb.numpy(), nv.numpy()
    assert np.all(np.diff(lam) <= 0), f"eigenvalues not descending: {lam}. {ctx}"
    assert_allclose_report(lam, lam_all[:rank], rtol=0, atol=tol, ctx=ctx)
    orth = float(np.abs(b.T @ b - np.eye(rank)).max())
    assert orth <= 8 * d * EPS64, f"max|U'ᵀU' − I| = {orth:.3e} > {8 * d * EPS64:.3e}. {ctx}"
    rec = (b * lam) @ b.T
    ey_err = float(np.linalg.norm(a - rec))
    ey_ref = float(np.linalg.norm(lam_all[rank:]))
    assert abs(ey_err - ey_ref) <= 2 * d * tol, (
        f"Eckart–Young: ‖A − Â‖_F = {ey_err:.6e}, expected {ey_ref:.6e}. {ctx}"
    )
    lam_r = max(float(lam_all[rank - 1]), 0.0)
    gap = float(lam_all[rank - 1] - lam_all[rank]) if rank < d else np.inf
    factor = 1.0 + (lam_r / gap if gap > 0 else (0.0 if lam_r <= tol else np.inf))
    if factor <= 1e6:
        ref = (vec_all[:, :rank] * lam_all[:rank]) @ vec_all[:, :rank].T
        assert_allclose_report(rec, ref, rtol=0, atol=tol * factor, ctx=ctx + f", gap×{factor:.1e}")


# --------------------------------------------------------------------------------------------
# Ginger: the truncated recursion, the untruncated EMA, drt, Lemma 1
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GingerCase:
    """k updates of a d × τ Ginger state with decay α and damping γ, d_t from ``seed``."""

    d: int
    tau: int
    k: int
    alpha: float
    gamma: float
    log_scale: float  # d_t ~ 10^log_scale · 10^U(-1, 1) · N(0, I/d)
    warm: PSDCase | None  # initial U₀, σ₀ (top τ pairs); None: random U₀, σ₀ = 0
    seed: int

    def describe(self) -> str:
        warm = self.warm.describe() if self.warm is not None else "σ₀=0"
        return (
            f"GingerCase(d={self.d}, τ={self.tau}, k={self.k}, α={self.alpha:.4f}, "
            f"γ={self.gamma:.3e}, log_scale={self.log_scale:.2f}, warm={warm}, seed={self.seed})"
        )

    def directions(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        out = []
        for _ in range(self.k):
            s = 10.0 ** (self.log_scale + rng.uniform(-1.0, 1.0))
            out.append(s * rng.standard_normal(self.d) / np.sqrt(self.d))
        return out

    def initial(self) -> tuple[np.ndarray, np.ndarray]:
        if self.warm is None:
            g = torch.Generator().manual_seed(self.seed)
            u0 = random_semi_orthogonal(self.d, self.tau, generator=g, dtype=torch.float64)
            return u0.numpy(), np.zeros(self.tau)
        return (
            np.ascontiguousarray(self.warm.basis[:, : self.tau]),
            np.ascontiguousarray(self.warm.eigenvalues[: self.tau]),
        )


@st.composite
def ginger_cases(draw: st.DrawFn, *, untruncated: bool = False) -> GingerCase:
    d = draw(st.integers(2, MAX_D))
    tau = draw(st.integers(1, min(d - 1, MAX_TAU)))
    k = draw(st.integers(1, min(8, tau) if untruncated else 8))
    alpha = draw(st.floats(0.5, 0.99))
    gamma = draw(dampings(-3.0, 1.0))
    log_scale = draw(st.floats(-2.0, 2.0))
    seed = draw(st.integers(0, 2**31 - 1))
    warm = None
    if not untruncated and draw(st.booleans()):
        log_cond = draw(st.floats(0.0, 6.0))
        log_s = draw(st.floats(-2.0, 3.0))
        decay = draw(st.sampled_from(DECAYS))
        warm = PSDCase(d, tau, 10.0**log_cond, 10.0**log_s, decay, seed)
    return GingerCase(d, tau, k, alpha, gamma, log_scale, warm, seed)


def _run_ginger(case: GingerCase) -> DiagPlusLowRank:
    u0, s0 = case.initial()
    state = diag_plus_low_rank(case.gamma, torch.from_numpy(u0), torch.from_numpy(s0))
    for dv in case.directions():
        state = ginger_update(state, torch.from_numpy(dv), case.alpha)
    return state


def _dense_recursion(case: GingerCase) -> tuple[np.ndarray, float, float]:
    """Eq. 17 + best rank-τ truncation + eq. 18, densely: (P_k, max gap factor, max κ)."""
    d, tau, gamma, alpha = case.d, case.tau, case.gamma, case.alpha
    u0, s0 = case.initial()
    g = (u0 * s0) @ u0.T
    eye = np.eye(d)
    p = eye / gamma - (u0 * (s0 / (gamma * (gamma + s0)))) @ u0.T
    worst_gap, worst_kappa = 1.0, 1.0
    for dv in case.directions():
        target = gamma * eye + alpha * g + (1 - alpha) * np.outer(dv, dv)
        lam_t = sla.eigvalsh(target)
        worst_kappa = max(worst_kappa, float(lam_t[-1] / lam_t[0]))
        bracket = eye / gamma - sla.inv(target)
        kk, q = sla.eigh(0.5 * (bracket + bracket.T))
        kk, q = kk[::-1], q[:, ::-1]
        k_tau, k_next = max(float(kk[tau - 1]), 0.0), float(kk[tau])
        tiny = 1e-10 / gamma
        if k_next > tiny:  # the truncation drops something: its gap matters
            gap = k_tau - k_next
            worst_gap = max(worst_gap, 1.0 + k_tau / gap if gap > 0 else np.inf)
        kk, q = np.clip(kk[:tau], 0.0, None), q[:, :tau]
        sigma = gamma**2 * kk / (1 - gamma * kk)
        g = (q * sigma) @ q.T
        p = eye / gamma - (q * kk) @ q.T
    return p, worst_gap, worst_kappa


@given(case=ginger_cases())
def test_ginger_matches_dense_truncated_recursion(case: GingerCase) -> None:
    """After k updates, ``G_γ⁻¹`` equals eq. 17 + truncation + eq. 18 carried out densely.

    Tolerance: ``max|P − P_dense| ≤ 8·k·κ·d·ε·F/γ`` with κ the worst condition number of
    ``γI + αG + (1−α)ddᵀ`` along the way (the oracle's ``scipy.linalg.inv`` error) and F the
    worst ``1 + K_τ/(K_τ − K_{τ+1})`` at a truncation that drops a nonzero eigenvalue (the
    conditioning of the rank-τ truncation); cases with F > 1e6 (near-ties) are rejected.
    Also Lemma 1: σ finite ≥ 0, eigenvalues of ``G_γ⁻¹`` in ``(0, 1/γ]``.
    """
    p_ref, factor, kappa = _dense_recursion(case)
    assume(factor <= 1e6)
    state = _run_ginger(case)
    ctx = f"{case.describe()}, gap factor={factor:.2e}, κ={kappa:.2e}"
    p = state.inverse().to_dense().numpy()
    atol = 8 * case.k * kappa * case.d * EPS64 * factor / case.gamma
    assert_allclose_report(p, p_ref, rtol=0, atol=atol, ctx=ctx)
    _assert_lemma_1(state, p, ctx)


def _assert_lemma_1(state: DiagPlusLowRank, p: np.ndarray, ctx: str) -> None:
    sigma = state.sigma.numpy()
    assert np.all(np.isfinite(sigma)) and np.all(sigma >= 0), f"σ = {sigma}. {ctx}"
    assert np.all(np.diff(sigma) <= 0), f"σ not descending: {sigma}. {ctx}"
    gamma = state.gamma
    lam = sla.eigvalsh(0.5 * (p + p.T))
    assert lam[-1] <= (1 + 8 * state.dim * EPS64) / gamma, (
        f"λ_max(G_γ⁻¹) = {lam[-1]:.6e} > 1/γ = {1 / gamma:.6e}. {ctx}"
    )
    # λ_min ≥ 1/(γ + max σ) (exact), up to eigvalsh's absolute error 8·d·ε/γ; it is > 0.
    floor = 1 / (gamma + float(sigma.max())) - 8 * state.dim * EPS64 / gamma
    assert lam[0] > 0 and lam[0] >= floor, f"λ_min(G_γ⁻¹) = {lam[0]:.3e} < {floor:.3e}. {ctx}"


@given(case=ginger_cases(untruncated=True), m=st.integers(1, 3))
def test_ginger_untruncated_equals_the_ema_inverse(case: GingerCase, m: int) -> None:
    """σ₀ = 0 and k ≤ τ: no truncation, so ``G_γ⁻¹ = (γI + Σ_t (1−α)α^{k−t} d_t d_tᵀ)⁻¹``.

    Oracle ``scipy.linalg.solve`` with the dense EMA; tolerance ``8·k·κ·d·ε/γ`` for the
    inverse and ``8·k·κ·d·ε·‖g‖/γ`` for ``ginger_direction(g)`` (vector and (d, m) block),
    κ = cond of the EMA matrix. Also ``drt`` vs ``scipy.linalg.solve`` of the state's own dense
    ``γI + U diag(σ) Uᵀ`` to ``8·κ_state·d·ε·‖g‖/γ``, and Lemma 1.
    """
    d, k, gamma, alpha = case.d, case.k, case.gamma, case.alpha
    ema = gamma * np.eye(d)
    for t, dv in enumerate(case.directions(), start=1):
        ema += (1 - alpha) * alpha ** (k - t) * np.outer(dv, dv)
    lam = sla.eigvalsh(ema)
    kappa = float(lam[-1] / lam[0])
    ctx = f"{case.describe()}, m={m}, κ={kappa:.2e}"
    state = _run_ginger(case)
    p = state.inverse().to_dense().numpy()
    p_ref = sla.solve(ema, np.eye(d), assume_a="pos")
    assert_allclose_report(p, p_ref, rtol=0, atol=8 * k * kappa * d * EPS64 / gamma, ctx=ctx)

    g = random_matrix((d, m), case.seed + 1)
    gn = float(np.linalg.norm(g, axis=0).max())
    ref = sla.solve(ema, g, assume_a="pos")
    atol = 8 * k * kappa * d * EPS64 * gn / gamma
    assert_allclose_report(
        ginger_direction(state, torch.from_numpy(g)), ref, rtol=0, atol=atol, ctx=ctx
    )
    assert_allclose_report(
        ginger_direction(state, torch.from_numpy(g[:, 0])), ref[:, 0], rtol=0, atol=atol, ctx=ctx
    )
    # drt against the state's own dense matrix (a pure Woodbury check on Ginger's output).
    u, s = state.basis.numpy(), state.sigma.numpy()
    own = gamma * np.eye(d) + (u * s) @ u.T
    kappa_own = float((gamma + s.max()) / gamma)
    assert_allclose_report(
        ginger_direction(state, torch.from_numpy(g)),
        sla.solve(own, g, assume_a="pos"),
        rtol=0,
        atol=8 * kappa_own * d * EPS64 * gn / gamma,
        ctx=ctx,
    )
    _assert_lemma_1(state, p, ctx)
