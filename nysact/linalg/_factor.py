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


def _inverse_sqrt_factor(b: Tensor, *, transpose: bool = True) -> tuple[Tensor, bool]:
    r"""Return ``R`` with ``R Rᵀ = B⁻¹`` (or the pseudo-inverse ``B⁺``) and a fallback flag.

    With the lower Cholesky factor ``B = L Lᵀ``:

    * ``transpose=True``  → ``R = L⁻ᵀ``: then ``Y R Rᵀ Yᵀ = Y B⁻¹ Yᵀ`` (standard Nyström);
    * ``transpose=False`` → ``R = L⁻¹``: the NysAct authors' code (it gives Y (LᵀL)⁻¹ Yᵀ).

    On Cholesky failure: ``B = V diag(μ) Vᵀ`` in float64, ``R = V diag(μ₊^{-1/2})`` where
    μ₊ keeps the eigenvalues above ``r·eps64·max|μ|`` and zeroes the rest (so ``R Rᵀ = B⁺``),
    whatever ``transpose`` says.
    """
    r = b.shape[-1]
    eye = torch.eye(r, dtype=b.dtype, device=b.device)
    chol, info = torch.linalg.cholesky_ex(b)
    if not bool((info != 0).any()):
        # L⁻¹ by a triangular solve; L⁻ᵀ is its transpose.
        l_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
        if not bool(torch.isfinite(l_inv).all()):
            return _fallback_factor(b), True
        return (l_inv.mT if transpose else l_inv), False
    return _fallback_factor(b), True


def _fallback_factor(b: Tensor) -> Tensor:
    mu, v = _eigh_float64(b)
    tol = mu.shape[-1] * torch.finfo(torch.float64).eps * mu.abs().amax(dim=-1, keepdim=True)
    keep = mu > tol
    inv_sqrt = torch.where(keep, mu.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), 0.0)
    return (v * inv_sqrt[..., None, :]).to(b.dtype)
