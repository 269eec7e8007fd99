"""Bad input to the solvers raises ``ValueError``/``TypeError`` naming the argument and value.

Covers :func:`damped_inverse`, :func:`nystrom_tropp`, :func:`nystrom_paper`,
:func:`rank_one_damped_inverse`, ``LowRankDampedInverse.with_damping`` and the operators'
``matmat``/``rmatmat`` shape checks. Each ``match=`` pins the argument's name and, where the
message carries it, the offending value or shape.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from nysact.linalg import (
    SymmetricOperator,
    damped_inverse,
    nystrom_paper,
    nystrom_tropp,
    rank_one_damped_inverse,
)

D, R = 6, 3


def _psd(d: int = D, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2 * d, d))).to(dtype)
    return x.mT @ x / (2 * d)


def _sketch_pair(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    omega = torch.from_numpy(np.random.default_rng(1).standard_normal((D, R))).to(dtype)
    return _psd(dtype=dtype) @ omega, omega


def _nystroms() -> list[tuple[str, object]]:
    return [
        ("tropp", nystrom_tropp),
        ("paper", nystrom_paper),
        ("paper-authors", lambda y, o, rho, **kw: nystrom_paper(y, o, rho, solve="authors", **kw)),
    ]


NYSTROMS = _nystroms()
NYSTROM_IDS = [n for n, _ in NYSTROMS]


def _all_operators() -> list[tuple[str, SymmetricOperator]]:
    y, omega = _sketch_pair()
    return [
        ("dense", damped_inverse(_psd(), 0.1)),
        ("tropp", nystrom_tropp(y, omega, 0.1)),
        ("paper", nystrom_paper(y, omega, 0.1)),
        ("rank-one", rank_one_damped_inverse(torch.ones(D, dtype=torch.float64), 0.1)),
    ]


OPERATORS = _all_operators()
OPERATOR_IDS = [n for n, _ in OPERATORS]

BAD_DAMPINGS = [0.0, -1.0, -1e-300, math.nan, math.inf, -math.inf]


# --------------------------------------------------------------------------------------------
# damped_inverse
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "match"),
    [
        (torch.zeros(3, 4, dtype=torch.float64), r"A must be square, got shape \(3, 4\)"),
        (torch.zeros(3, dtype=torch.float64), r"A must be 2-dimensional, got shape \(3,\)"),
        (torch.zeros(2, 3, 3, dtype=torch.float64), r"A must be 2-dimensional"),
        (torch.eye(3, dtype=torch.int64), r"A must have a floating dtype, got torch.int64"),
    ],
)
def test_damped_inverse_rejects_bad_shape_or_dtype(a: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        damped_inverse(a, 1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_damped_inverse_rejects_non_symmetric(dtype: torch.dtype) -> None:
    a = _psd(dtype=dtype)
    a[0, 1] += 0.1 * float(torch.linalg.matrix_norm(a))
    with pytest.raises(ValueError, match=r"A must be symmetric: ‖A − Aᵀ‖_F = [0-9.e+-]+ exceeds"):
        damped_inverse(a, 1.0)


def test_damped_inverse_accepts_barely_asymmetric_float32_covariance() -> None:
    """A float32 covariance from a matmul is symmetric only to rounding: accepted.

    XᵀX/n via a transposed (non-contiguous) matmul, plus an explicit asymmetry of 10·ε32
    relative — far below the sqrt(ε32) ≈ 3.5e-4 threshold.
    """
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((50, 40))).float()
    a = x.mT @ x / 50
    e = torch.zeros_like(a)
    e[3, 7] = 10 * torch.finfo(torch.float32).eps * float(torch.linalg.matrix_norm(a))
    op = damped_inverse(a + e, 0.1)
    assert torch.isfinite(op.matrix).all()
    # The same input is rejected once its asymmetry exceeds sqrt(eps)·‖A‖_F.
    e[3, 7] = 1e-3 * float(torch.linalg.matrix_norm(a))
    with pytest.raises(ValueError, match="A must be symmetric"):
        damped_inverse(a + e, 0.1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_damped_inverse_rejects_non_finite(bad: float) -> None:
    a = _psd()
    a[2, 2] = bad
    with pytest.raises(ValueError, match=r"A has 1 non-finite \(NaN/Inf\) entries"):
        damped_inverse(a, 1.0)


@pytest.mark.parametrize("rho", BAD_DAMPINGS)
def test_damped_inverse_rejects_bad_damping(rho: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid damping: {re.escape(repr(rho))}\. Must be"):
        damped_inverse(_psd(), rho)


@pytest.mark.parametrize("rho", ["1.0", None, True, torch.tensor(1.0)])
def test_damped_inverse_rejects_non_number_damping(rho: object) -> None:
    with pytest.raises(TypeError, match="damping must be a real number"):
        damped_inverse(_psd(), rho)  # type: ignore[arg-type]


def test_damped_inverse_rejects_non_tensor() -> None:
    with pytest.raises(TypeError, match=r"A must be a torch\.Tensor, got ndarray"):
        damped_inverse(np.eye(3), 1.0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Nyström
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "solver"), NYSTROMS, ids=NYSTROM_IDS)
@pytest.mark.parametrize(
    ("sketch_shape", "omega_shape"),
    [
        ((D, R), (D, R + 1)),
        ((D, R), (D + 1, R)),
        ((D + 1, R + 2), (D, R)),
        ((D, R), (2, D, R)),  # a batched Ω must have the sketch's shape
        ((3, D, R), (2, D, R)),
    ],
)
def test_nystrom_rejects_shape_mismatch(
    name: str, solver: object, sketch_shape: tuple[int, int], omega_shape: tuple[int, int]
) -> None:
    y = torch.zeros(sketch_shape, dtype=torch.float64)
    o = torch.ones(omega_shape, dtype=torch.float64)
    msg = (
        rf"sketch and test_matrix must have the same shape \(d, r\); got sketch "
        rf"{re.escape(str(sketch_shape))} and test_matrix {re.escape(str(omega_shape))}"
    )
    with pytest.raises(ValueError, match=msg):
        solver(y, o, 1.0)  # type: ignore[operator]


@pytest.mark.parametrize(("name", "solver"), NYSTROMS, ids=NYSTROM_IDS)
def test_nystrom_rejects_wrong_ndim_and_empty(name: str, solver: object) -> None:
    y, o = _sketch_pair()
    msg = r"sketch and test_matrix must be at least 2-D \(d, r\); got sketch \(6,\) and test_matrix"
    with pytest.raises(ValueError, match=msg):
        solver(y[:, 0], o, 1.0)  # type: ignore[operator]
    msg = (
        r"sketch and test_matrix must be at least 2-D \(d, r\); "
        r"got sketch \(6, 3\) and test_matrix \(6,\)"
    )
    with pytest.raises(ValueError, match=msg):
        solver(y, o[:, 0], 1.0)  # type: ignore[operator]
    # r < 1: a sketch with no column.
    with pytest.raises(ValueError, match=r"sketch must have at least one row and one column"):
        solver(y[:, :0], o[:, :0], 1.0)  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"sketch must have at least one row and one column"):
        solver(y[:0], o[:0], 1.0)  # type: ignore[operator]


@pytest.mark.parametrize(("name", "solver"), NYSTROMS, ids=NYSTROM_IDS)
@pytest.mark.parametrize("which", ["sketch", "test_matrix"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nystrom_rejects_non_finite(name: str, solver: object, which: str, bad: float) -> None:
    y, o = _sketch_pair()
    (y if which == "sketch" else o)[1, 2] = bad
    with pytest.raises(ValueError, match=rf"{which} has 1 non-finite \(NaN/Inf\) entries"):
        solver(y, o, 1.0)  # type: ignore[operator]


@pytest.mark.parametrize(("name", "solver"), NYSTROMS, ids=NYSTROM_IDS)
@pytest.mark.parametrize("rho", BAD_DAMPINGS)
def test_nystrom_rejects_bad_damping(name: str, solver: object, rho: float) -> None:
    y, o = _sketch_pair()
    with pytest.raises(ValueError, match=rf"Invalid damping: {re.escape(repr(rho))}"):
        solver(y, o, rho)  # type: ignore[operator]


@pytest.mark.parametrize(("name", "solver"), NYSTROMS, ids=NYSTROM_IDS)
def test_nystrom_rejects_mixed_dtypes_and_types(name: str, solver: object) -> None:
    y, o = _sketch_pair()
    with pytest.raises(ValueError, match=r"sketch \(torch.float64, cpu\) and test_matrix"):
        solver(y, o.float(), 1.0)  # type: ignore[operator]
    with pytest.raises(TypeError, match=r"sketch must be a torch\.Tensor, got ndarray"):
        solver(y.numpy(), o, 1.0)  # type: ignore[operator]
    with pytest.raises(TypeError, match=r"test_matrix must be a torch\.Tensor, got list"):
        solver(y, o.tolist(), 1.0)  # type: ignore[operator]
    with pytest.raises(TypeError, match="damping must be a real number, got str"):
        solver(y, o, "1")  # type: ignore[operator]


@pytest.mark.parametrize("shift", [0.0, -1.0, math.nan, math.inf])
def test_nystrom_tropp_rejects_bad_shift(shift: float) -> None:
    y, o = _sketch_pair()
    with pytest.raises(ValueError, match=rf"Invalid shift: {re.escape(repr(shift))}"):
        nystrom_tropp(y, o, 1.0, shift=shift)


@pytest.mark.parametrize("solve", ["Standard", "", "inverse", None])
def test_nystrom_paper_rejects_bad_solve(solve: object) -> None:
    y, o = _sketch_pair()
    with pytest.raises(ValueError, match=rf"Invalid solve: {re.escape(repr(solve))}"):
        nystrom_paper(y, o, 1.0, solve=solve)  # type: ignore[arg-type]


@pytest.mark.parametrize("rho", [0.0, -2.0, math.nan, math.inf])
def test_with_damping_rejects_bad_damping(rho: float) -> None:
    y, o = _sketch_pair()
    op = nystrom_tropp(y, o, 1.0)
    with pytest.raises(ValueError, match=rf"Invalid damping: {re.escape(repr(rho))}"):
        op.with_damping(rho)


# --------------------------------------------------------------------------------------------
# Sherman–Morrison
# --------------------------------------------------------------------------------------------


def test_rank_one_rejects_bad_vector() -> None:
    with pytest.raises(ValueError, match=r"vector must be 1-dimensional, got shape \(3, 1\)"):
        rank_one_damped_inverse(torch.ones(3, 1), 1.0)
    with pytest.raises(ValueError, match=r"vector must have a floating dtype, got torch\.int64"):
        rank_one_damped_inverse(torch.ones(3, dtype=torch.int64), 1.0)
    with pytest.raises(TypeError, match=r"vector must be a torch\.Tensor, got list"):
        rank_one_damped_inverse([1.0, 2.0], 1.0)  # type: ignore[arg-type]
    for bad in (math.nan, math.inf):
        v = torch.ones(4)
        v[1] = bad
        with pytest.raises(ValueError, match=r"vector has 1 non-finite \(NaN/Inf\) entries"):
            rank_one_damped_inverse(v, 1.0)


@pytest.mark.parametrize("rho", BAD_DAMPINGS)
def test_rank_one_rejects_bad_damping(rho: float) -> None:
    with pytest.raises(ValueError, match=rf"Invalid damping: {re.escape(repr(rho))}"):
        rank_one_damped_inverse(torch.ones(4), rho)


# --------------------------------------------------------------------------------------------
# Operators: matmat / rmatmat shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "op"), OPERATORS, ids=OPERATOR_IDS)
@pytest.mark.parametrize("shape", [(D + 1,), (D - 1, 2), (2, D + 1, 1), (D, 2, 2), ()])
def test_matmat_rejects_wrong_shape(name: str, op: SymmetricOperator, shape: tuple) -> None:
    x = torch.ones(shape, dtype=torch.float64)
    msg = rf"x must have shape \({D},\) or \(\.\.\., {D}, k\), got {re.escape(str(tuple(shape)))}"
    with pytest.raises(ValueError, match=msg):
        op.matmat(x)


@pytest.mark.parametrize(("name", "op"), OPERATORS, ids=OPERATOR_IDS)
@pytest.mark.parametrize("shape", [(D,), (2, D + 1), (D + 1, D - 1), (1, 2, D + 1)])
def test_rmatmat_rejects_wrong_shape(name: str, op: SymmetricOperator, shape: tuple) -> None:
    g = torch.ones(shape, dtype=torch.float64)
    msg = rf"g must have shape \((\.\.\., )?m, {D}\), got {re.escape(str(tuple(shape)))}"
    with pytest.raises(ValueError, match=msg):
        op.rmatmat(g)


@pytest.mark.parametrize(("name", "op"), OPERATORS, ids=OPERATOR_IDS)
def test_operators_accept_the_right_shapes(name: str, op: SymmetricOperator) -> None:
    """The counterpart: (d,), (d, k) and (m, d) are accepted and keep their shapes."""
    assert op.matmat(torch.ones(D, dtype=torch.float64)).shape == (D,)
    assert op.matmat(torch.ones(D, 3, dtype=torch.float64)).shape == (D, 3)
    assert op.rmatmat(torch.ones(2, D, dtype=torch.float64)).shape == (2, D)
    assert op.matmat(torch.ones(D, 0, dtype=torch.float64)).shape == (D, 0)


@pytest.mark.parametrize(("name", "op"), OPERATORS, ids=OPERATOR_IDS)
@pytest.mark.parametrize("batch", [2, D])
def test_batched_operands_are_applied_per_matrix_or_rejected(
    name: str, op: SymmetricOperator, batch: int
) -> None:
    """``matmat`` accepts (..., d, k) (``_check_operand``); ``rmatmat`` documents (..., m, d).

    A batched operand must give P x_b for every slice b (dense float64 oracle from
    ``to_dense()`` of the unbatched operator) or be rejected with a ``ValueError`` naming the
    argument — never a silently mixed result or an unrelated ``RuntimeError``. batch = d is the
    case where a broadcasting slip cannot raise.
    """
    p = op.to_dense()
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((batch, D, 2)))
    try:
        got = op.matmat(x)
    except ValueError as err:
        assert "x must have shape" in str(err)
    else:
        torch.testing.assert_close(got, p @ x, rtol=1e-12, atol=1e-12)
    g = torch.from_numpy(np.random.default_rng(4).standard_normal((batch, 2, D)))
    try:
        got = op.rmatmat(g)
    except ValueError as err:
        assert "g must have shape" in str(err)
    else:
        torch.testing.assert_close(got, g @ p, rtol=1e-12, atol=1e-12)
