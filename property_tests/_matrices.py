"""Strategies that draw *spectra and seeds*, not raw entries, and report-style assertions.

A failing example therefore shrinks to a readable case such as ``PSDCase(n=3, rank=1,
cond=1e12, scale=1e-8, decay='geometric', seed=0)``, and every failed comparison prints the
worst entries, norms and tolerance together with the case (curvlinops' ``allclose_report``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg as sla
import torch
from hypothesis import strategies as st

DECAYS = ("geometric", "polynomial", "flat", "step")


@dataclass(frozen=True)
class PSDCase:
    """A PSD matrix A = Q diag(λ) Qᵀ described by its parameters (float64, numpy)."""

    n: int
    rank: int
    cond: float  # ratio of largest to smallest *nonzero* eigenvalue
    scale: float  # largest eigenvalue
    decay: str
    seed: int

    def describe(self) -> str:
        return (
            f"PSDCase(n={self.n}, rank={self.rank}, cond={self.cond:.1e}, "
            f"scale={self.scale:.1e}, decay={self.decay!r}, seed={self.seed})"
        )

    @cached_property
    def eigenvalues(self) -> np.ndarray:
        """Descending eigenvalues: `rank` nonzero ones spanning [scale/cond, scale], rest 0."""
        k = self.rank
        if k == 0:
            return np.zeros(self.n)
        t = np.linspace(0.0, 1.0, k) if k > 1 else np.zeros(1)
        if self.decay == "geometric":
            lam = self.scale * self.cond ** (-t)
        elif self.decay == "polynomial":
            i = np.arange(1, k + 1, dtype=np.float64)
            p = np.log(self.cond) / np.log(k) if k > 1 else 0.0
            lam = self.scale * i ** (-p)
        elif self.decay == "flat":
            lam = np.full(k, self.scale)
            lam[-1] = self.scale / self.cond
        else:  # step: half large, half small
            lam = np.where(t <= 0.5, self.scale, self.scale / self.cond)
        return np.concatenate([np.sort(lam)[::-1], np.zeros(self.n - k)])

    @cached_property
    def basis(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        q, r = np.linalg.qr(rng.standard_normal((self.n, self.n)))
        return q * np.sign(np.diag(r))

    @cached_property
    def dense(self) -> np.ndarray:
        a = (self.basis * self.eigenvalues) @ self.basis.T
        return 0.5 * (a + a.T)

    def torch(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.from_numpy(self.dense).to(dtype)

    def damped_condition(self, rho: float) -> float:
        lam = self.eigenvalues
        return float((lam.max() + rho) / (lam.min() + rho))


@st.composite
def psd_cases(
    draw: st.DrawFn,
    *,
    min_n: int = 1,
    max_n: int = 300,
    max_cond: float = 1e12,
    min_scale: float = 1e-8,
    max_scale: float = 1e8,
    allow_zero: bool = True,
) -> PSDCase:
    """Draw a PSD case: size, rank (possibly deficient or 0), condition, scale, decay, seed."""
    n = draw(st.integers(min_n, max_n))
    rank = draw(st.integers(0 if allow_zero else 1, n))
    log_cond = draw(st.floats(0.0, np.log10(max_cond)))
    log_scale = draw(st.floats(np.log10(min_scale), np.log10(max_scale)))
    decay = draw(st.sampled_from(DECAYS))
    seed = draw(st.integers(0, 2**31 - 1))
    return PSDCase(n, rank, 10.0**log_cond, 10.0**log_scale, decay, seed)


def dampings(min_exp: float = -4.0, max_exp: float = 2.0) -> st.SearchStrategy[float]:
    """Damping ρ = 10^e, e uniform in [min_exp, max_exp]."""
    return st.floats(min_exp, max_exp).map(lambda e: float(10.0**e))


def random_matrix(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def assert_allclose_report(
    actual: np.ndarray | torch.Tensor,
    desired: np.ndarray | torch.Tensor,
    *,
    rtol: float,
    atol: float = 0.0,
    ctx: str = "",
) -> None:
    """``|actual − desired| ≤ atol + rtol·max|desired|`` (norm-relative), with a report."""
    a = actual.detach().cpu().double().numpy() if isinstance(actual, torch.Tensor) else actual
    b = desired.detach().cpu().double().numpy() if isinstance(desired, torch.Tensor) else desired
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}. {ctx}"
    if not np.all(np.isfinite(a)):
        raise AssertionError(f"actual has {np.sum(~np.isfinite(a))} non-finite entries. {ctx}")
    err = np.abs(a - b)
    bound = atol + rtol * (np.max(np.abs(b)) if b.size else 0.0)
    if err.size and err.max() > bound:
        worst = np.argsort(err, axis=None)[::-1][:5]
        rows = "\n".join(
            f"  at {np.unravel_index(i, err.shape)}: actual={a.flat[i]:.6e} "
            f"desired={b.flat[i]:.6e} |diff|={err.flat[i]:.3e}"
            for i in worst
        )
        raise AssertionError(
            f"max |diff| {err.max():.3e} > bound {bound:.3e} (rtol={rtol:.1e}, atol={atol:.1e}); "
            f"‖actual‖={np.linalg.norm(a):.3e} ‖desired‖={np.linalg.norm(b):.3e}\n{rows}\n{ctx}"
        )


def assert_loewner_le(lower: np.ndarray, upper: np.ndarray, *, tol: float, ctx: str = "") -> None:
    """Assert ``lower ⪯ upper + tol·I``: the smallest eigenvalue of upper − lower ≥ −tol."""
    diff = upper - lower
    lam_min = float(sla.eigvalsh(0.5 * (diff + diff.T))[0]) if diff.size else 0.0
    if lam_min < -tol:
        raise AssertionError(f"λ_min(upper − lower) = {lam_min:.3e} < −tol = {-tol:.3e}. {ctx}")


# --------------------------------------------------------------------------------------------
# Helpers added for the solver/sketch property suites (independent oracles).
# --------------------------------------------------------------------------------------------

#: Extended precision (x87 80-bit on x86-64 Linux, eps ≈ 1.1e-19) used to build the *truth* of a
#: float64 test: ``A* = Q diag(λ) Qᵀ`` is exactly PSD (a congruence of a non-negative diagonal),
#: and forming it or its sketch in extended precision keeps its rounding (~1e-19·‖A‖) far below
#: the float64 shift ν ≈ √d·2.2e-16·‖Y‖ that the Nyström guarantees are stated in.
EXTENDED = np.longdouble


def exact_dense(case: PSDCase) -> np.ndarray:
    """``A* = Q diag(λ) Qᵀ`` in extended precision (exactly PSD up to ~1e-19 relative)."""
    q = case.basis.astype(EXTENDED)
    return (q * case.eigenvalues.astype(EXTENDED)) @ q.T


def exact_sketch(case: PSDCase, omega: np.ndarray | torch.Tensor) -> np.ndarray:
    """The sketch ``Y = A* Ω`` computed in extended precision, rounded once to float64."""
    om = omega.detach().cpu().double().numpy() if isinstance(omega, torch.Tensor) else omega
    q = case.basis.astype(EXTENDED)
    lam = case.eigenvalues.astype(EXTENDED)
    y = q @ (lam[:, None] * (q.T @ np.asarray(om, dtype=np.float64).astype(EXTENDED)))
    return np.asarray(y, dtype=np.float64)


def extended_difference_eigvalsh(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Eigenvalues of ``upper − lower``, the difference taken in extended precision.

    Used for Loewner-order checks against an exact truth: the two matrices nearly cancel, so
    the difference is formed before rounding to float64 (its own rounding is then relative to
    the small difference, not to ‖A‖).
    """
    diff = np.asarray(
        np.asarray(upper, dtype=EXTENDED) - np.asarray(lower, dtype=EXTENDED), dtype=np.float64
    )
    if diff.size == 0:
        return np.zeros(0)
    return np.asarray(sla.eigvalsh(0.5 * (diff + diff.T)))


def omega_condition_squared(omega: np.ndarray | torch.Tensor) -> float:
    """``κ(Ω)² = (σ_max/σ_min)²`` over the min(d, r) singular values of Ω (1 if orthonormal)."""
    om = omega.detach().cpu().double().numpy() if isinstance(omega, torch.Tensor) else omega
    sv = np.linalg.svd(np.asarray(om, dtype=np.float64), compute_uv=False)
    if sv.size == 0 or sv[-1] == 0.0:
        return float("inf")
    return float((sv[0] / sv[-1]) ** 2)


def relative_dampings(min_exp: float = -3.0, max_exp: float = 1.0) -> st.SearchStrategy[float]:
    """A damping *factor* 10^e; multiply by λ_max(A) (or 1 if A = 0) to get ρ.

    Used where a test needs κ(A + ρI) ≤ 1 + 10^{−min_exp} whatever the drawn scale of A, e.g.
    float32 comparisons whose tolerance κ·n·eps must stay below 1 to mean anything.
    """
    return st.floats(min_exp, max_exp).map(lambda e: float(10.0**e))


def draw_test_matrix(
    family: str, n: int, r: int, seed: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Ω (n × r) drawn by the library's ``Gaussian``/``Subcolumn`` family, as a dense tensor.

    (The sampler is input generation, not an oracle: its own properties are tested in
    ``test_sketch_props.py``.)
    """
    from nysact.sketch import Gaussian, Subcolumn

    gen = torch.Generator().manual_seed(seed)
    fam = Gaussian(r) if family == "gaussian" else Subcolumn(r)
    return fam.draw(n, generator=gen, dtype=dtype).dense(dtype)
