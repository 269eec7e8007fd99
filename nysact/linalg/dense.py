r"""Damped dense inverse ``(A + ρI)⁻¹`` of a PSD matrix (FOOF, KFAC factors)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nysact.linalg._factor import _eigh_float64
from nysact.linalg._validate import _check_positive, _check_symmetric_matrix
from nysact.linalg.operators import SymmetricOperator, _check_operand, _check_rmatmat_operand

__all__ = ["DenseDampedInverse", "damped_inverse"]


@dataclass(frozen=True)
class DenseDampedInverse(SymmetricOperator):
    r"""A d × d inverse held densely: ``P = (A + ρI)⁻¹``.

    Attributes
    ----------
    matrix : Tensor
        The symmetric inverse, shape (d, d).
    fallback : bool
        Whether the Cholesky failed and the float64 eigendecomposition was used.
    """

    matrix: Tensor
    fallback: bool = False

    @property
    def dim(self) -> int:
        """The size d."""
        return int(self.matrix.shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored inverse."""
        return self.matrix.dtype

    def _device(self) -> torch.device:
        return self.matrix.device

    def matmat(self, x: Tensor) -> Tensor:
        """Return ``P x``."""
        _check_operand(x, self.dim)
        return self.matrix @ x

    def rmatmat(self, g: Tensor) -> Tensor:
        """Return ``G P`` for G of shape (..., m, d)."""
        _check_rmatmat_operand(g, self.dim)
        return g @ self.matrix

    def to_dense(self) -> Tensor:
        """Return the stored d × d inverse."""
        return self.matrix


def damped_inverse(a: Tensor, damping: float, *, check: bool = True) -> DenseDampedInverse:
    r"""Return ``(A + ρI)⁻¹`` of a symmetric PSD matrix by Cholesky, with a counted fallback.

    .. math::  A + \rho I = L L^\top,\qquad (A + \rho I)^{-1} = L^{-\top} L^{-1}

    (``torch.cholesky_inverse``), the inverse FOOF (Benzing 2022) and KFAC (Martens & Grosse
    2015) apply to a layer's gradient. If the Cholesky fails — A is indefinite from rounding, or
    ``A + ρI`` is too ill-conditioned for the dtype — the fallback eigendecomposes the symmetric
    part of A in float64, clamps its eigenvalues at 0 (A is PSD in exact arithmetic) and returns
    ``V diag(1/(max(λ, 0) + ρ)) Vᵀ`` in A's dtype, with ``fallback=True``.

    Parameters
    ----------
    a : Tensor
        Symmetric PSD matrix, shape (d, d); with ``check=False`` also a batch (..., d, d) (the
        fallback then runs for the whole batch if any member's Cholesky fails).
    damping : float
        ρ > 0.
    check : bool
        Validate squareness, symmetry (to ``sqrt(eps)`` relative) and finiteness. Default True.

    Returns
    -------
    DenseDampedInverse
        The inverse and whether the fallback ran.

    Raises
    ------
    ValueError
        If A is not square, not symmetric, has NaN/Inf entries, or ``damping ≤ 0``.
    """
    rho = _check_positive(damping, "damping")
    if check:
        a = _check_symmetric_matrix(a, "A")
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    chol, info = torch.linalg.cholesky_ex(a + rho * eye)
    if not bool((info != 0).any()):
        inv = torch.cholesky_inverse(chol)
        if bool(torch.isfinite(inv).all()):
            return DenseDampedInverse(inv, False)
    lam, v = _eigh_float64(a)
    inv64 = (v / (lam.clamp_min(0.0) + rho)[..., None, :]) @ v.mT
    return DenseDampedInverse(inv64.to(a.dtype), True)
