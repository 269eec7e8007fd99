"""Cholesky with a counted float64 eigendecomposition fallback (private).

The fallback follows Distributed Shampoo's ``retry_double_precision`` idea: when the Cholesky
factorization in the working dtype fails (a non-positive pivot: the matrix is singular or too
ill-conditioned for the dtype, e.g. κ ≈ 1e12 in float32, or even in float64 when the sketch's
columns are nearly dependent), the symmetric part of the matrix is eigendecomposed in float64
and non-positive (or numerically zero) eigenvalues are dropped. The caller receives a flag and
counts it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__: list[str] = []


def _eigh_float64(b: Tensor) -> tuple[Tensor, Tensor]:
    b64 = b.to(torch.float64)
    lam, vec = torch.linalg.eigh(0.5 * (b64 + b64.mT))
    return lam, vec


def _solve_root(b: Tensor, y: Tensor, *, transpose: bool = True) -> tuple[Tensor, bool]:
    r"""Return ``X = Y R`` with ``R Rᵀ = B⁻¹`` (or ``B⁺``), by triangular solves, and a flag.

    With the lower Cholesky factor ``B = L Lᵀ``:

    * ``transpose=True``  → ``X = Y L⁻ᵀ`` (``L Xᵀ = Yᵀ``): then ``X Xᵀ = Y B⁻¹ Yᵀ`` (standard
      Nyström);
    * ``transpose=False`` → ``X = Y L⁻¹`` (``X L = Y``): the NysAct authors' code.

    The solve is applied to Y directly: multiplying by an explicit ``L⁻ᵀ`` loses accuracy when
    κ(B) is large (measured: λ_max(Â − A) ≈ 64ν instead of ≈ 1.5ν at κ(A) ≈ 2e11).

    On Cholesky failure: ``B = V diag(μ) Vᵀ`` in float64, ``R = V diag(μ₊^{-1/2})`` where
    μ₊ keeps the eigenvalues above ``r·eps64·max|μ|`` and zeroes the rest (so ``R Rᵀ = B⁺``),
    whatever ``transpose`` says.
    """
    chol, info = torch.linalg.cholesky_ex(b)
    if not bool((info != 0).any()):
        if transpose:
            x = torch.linalg.solve_triangular(chol, y.mT, upper=False).mT
        else:
            x = torch.linalg.solve_triangular(chol, y, upper=False, left=False)
        if bool(torch.isfinite(x).all()):
            return x, False
    return y @ _fallback_factor(b), True


def _fallback_factor(b: Tensor) -> Tensor:
    mu, v = _eigh_float64(b)
    tol = mu.shape[-1] * torch.finfo(torch.float64).eps * mu.abs().amax(dim=-1, keepdim=True)
    keep = mu > tol
    inv_sqrt = torch.where(keep, mu.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), 0.0)
    return (v * inv_sqrt[..., None, :]).to(b.dtype)


def _thin_svd(x: Tensor) -> tuple[Tensor, Tensor, bool]:
    r"""Left singular vectors and values of a tall ``X`` (..., d, r), with a counted fallback.

    LAPACK's SVD occasionally fails to converge on finite float32 input (seen about once in
    1 500 random subcolumn sketches of step spectra). The fallback retries in float64 and, if
    that fails too, uses ``X = QR`` (Householder) and the symmetric eigendecomposition
    ``R Rᵀ = W Λ Wᵀ``, so ``X Xᵀ = (QW) Λ (QW)ᵀ``: ``U = QW``, ``σ = √max(Λ, 0)`` (descending).

    Returns
    -------
    u, sigma, fallback
        ``U`` (..., d, min(d, r)), ``σ`` (..., min(d, r)) descending, whether a fallback ran.
    """
    try:
        u, sigma, _ = torch.linalg.svd(x, full_matrices=False)
        return u, sigma, False
    except RuntimeError:  # torch.linalg.LinAlgError: no convergence
        pass
    x64 = x.to(torch.float64)
    try:
        u, sigma, _ = torch.linalg.svd(x64, full_matrices=False)
    except RuntimeError:
        q, r = torch.linalg.qr(x64)
        lam, w = torch.linalg.eigh(r @ r.mT)
        lam, w = lam.flip(-1), w.flip(-1)
        u, sigma = q @ w, lam.clamp_min(0.0).sqrt()
    return u.to(x.dtype), sigma.to(x.dtype), True
