"""Argument checks shared by the solvers (private).

Every public solver validates its input here so that bad input raises a ``ValueError`` that
names the argument and the offending value, instead of returning a silently wrong operator.
The checks that need the tensor's values (finiteness, symmetry) synchronise with the device;
callers on a hot path that have already validated their data pass ``check=False``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__: list[str] = []


def _check_tensor(x: object, name: str, ndim: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    return x


def _check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {bad} non-finite (NaN/Inf) entries")


def _check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"Invalid {name}: {value!r}. Must be a finite number > 0.")
    return v


def _check_rank(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"Invalid {name}: {value!r}. Must be >= 1.")
    return value


def _symmetry_rtol(dtype: torch.dtype) -> float:
    """Relative asymmetry tolerated in a 'symmetric' input: sqrt(eps) of the dtype.

    A covariance XᵀX/n computed by a matmul is symmetric only up to rounding of order
    eps·‖X‖²; sqrt(eps) (1.5e-8 in float64, 3.5e-4 in float32) accepts that and rejects a
    genuinely non-symmetric matrix.
    """
    return math.sqrt(torch.finfo(dtype).eps)


def _check_symmetric_matrix(a: object, name: str) -> Tensor:
    """Square, finite and symmetric to ``sqrt(eps)`` relative Frobenius norm."""
    a = _check_tensor(a, name, ndim=2)
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(a.shape)}")
    _check_finite(a, name)
    norm = float(torch.linalg.matrix_norm(a))
    asym = float(torch.linalg.matrix_norm(a - a.mT))
    if asym > _symmetry_rtol(a.dtype) * norm:
        raise ValueError(
            f"{name} must be symmetric: ‖{name} − {name}ᵀ‖_F = {asym:.3e} exceeds "
            f"{_symmetry_rtol(a.dtype):.1e}·‖{name}‖_F = {_symmetry_rtol(a.dtype) * norm:.3e}"
        )
    return a


def _check_sketch_pair(y: object, omega: object) -> tuple[Tensor, Tensor]:
    """Check a sketch ``Y = AΩ`` (..., d, r) and its test matrix ``Ω`` ((..., d, r) or (d, r)).

    Leading (batch) dimensions of Y stand for independent matrices sketched with the same Ω
    when Ω is 2-D. Both must be finite and share dtype and device.
    """
    y = _check_tensor(y, "sketch")
    omega = _check_tensor(omega, "test_matrix")
    if y.ndim < 2 or omega.ndim < 2:
        raise ValueError(
            f"sketch and test_matrix must be at least 2-D (d, r); got sketch "
            f"{tuple(y.shape)} and test_matrix {tuple(omega.shape)}"
        )
    if y.shape[-2:] != omega.shape[-2:] or (omega.ndim > 2 and omega.shape != y.shape):
        raise ValueError(
            f"sketch and test_matrix must have the same shape (d, r); got sketch "
            f"{tuple(y.shape)} and test_matrix {tuple(omega.shape)}"
        )
    if y.shape[-1] < 1 or y.shape[-2] < 1:
        raise ValueError(f"sketch must have at least one row and one column, got {tuple(y.shape)}")
    if y.dtype != omega.dtype or y.device != omega.device:
        raise ValueError(
            f"sketch ({y.dtype}, {y.device}) and test_matrix ({omega.dtype}, {omega.device}) "
            "must share dtype and device"
        )
    _check_finite(y, "sketch")
    _check_finite(omega, "test_matrix")
    return y, omega
