r"""Sherman–Morrison inverse of a damped rank-one matrix ``ρI + v vᵀ`` (Eva, MAC)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nysact.linalg._validate import _check_finite, _check_positive, _check_tensor
from nysact.linalg.operators import SymmetricOperator, _check_operand, _check_rmatmat_operand

__all__ = ["RankOneDampedInverse", "rank_one_damped_inverse"]


@dataclass(frozen=True)
class RankOneDampedInverse(SymmetricOperator):
    r"""``P = (ρI + v vᵀ)⁻¹`` applied in O(d) per vector by Sherman–Morrison.

    .. math::  (\rho I + v v^\top)^{-1} x = \frac{1}{\rho}\Big(x - \frac{v\,(v^\top x)}{\rho
               + v^\top v}\Big)

    (Sherman & Morrison 1950; used by Eva, Zhang et al. 2023, eq. 9, and MAC).

    Attributes
    ----------
    vector : Tensor
        v, shape (d,).
    damping : float
        ρ > 0.
    """

    vector: Tensor
    damping: float
    fallback: bool = False

    @property
    def dim(self) -> int:
        """The size d."""
        return int(self.vector.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of v."""
        return self.vector.dtype

    def _device(self) -> torch.device:
        return self.vector.device

    def _coefficient(self) -> Tensor:
        return 1.0 / (self.damping + self.vector @ self.vector)

    def matmat(self, x: Tensor) -> Tensor:
        """Return ``P x = (x − v (vᵀx)/(ρ + vᵀv)) / ρ`` for x of shape (d,) or (d, k)."""
        _check_operand(x, self.dim)
        if x.ndim > 2:
            raise ValueError(
                f"x must have shape ({self.dim},) or ({self.dim}, k), got {tuple(x.shape)}"
            )
        v = self.vector
        if x.ndim == 1:
            return (x - v * (self._coefficient() * (v @ x))) / self.damping
        return (x - v[:, None] * (self._coefficient() * (v @ x))[None, :]) / self.damping

    def rmatmat(self, g: Tensor) -> Tensor:
        """Return ``G P = (G − (G v)(vᵀ)/(ρ + vᵀv)) / ρ`` for G of shape (m, d)."""
        _check_rmatmat_operand(g, self.dim)
        if g.ndim != 2:
            raise ValueError(f"g must have shape (m, {self.dim}), got {tuple(g.shape)}")
        v = self.vector
        return (g - (self._coefficient() * (g @ v))[:, None] * v[None, :]) / self.damping


def rank_one_damped_inverse(
    vector: Tensor, damping: float, *, check: bool = True
) -> RankOneDampedInverse:
    r"""Return the Sherman–Morrison operator ``(ρI + v vᵀ)⁻¹``.

    Parameters
    ----------
    vector : Tensor
        v, shape (d,).
    damping : float
        ρ > 0.
    check : bool
        Validate v's shape and finiteness. Default True.

    Returns
    -------
    RankOneDampedInverse
        The operator; O(d) memory, O(d) per applied vector.

    Raises
    ------
    ValueError
        If v is not 1-D, has NaN/Inf entries, or ``damping ≤ 0``.
    """
    rho = _check_positive(damping, "damping")
    if check:
        vector = _check_tensor(vector, "vector", ndim=1)
        _check_finite(vector, "vector")
    return RankOneDampedInverse(vector, rho)
