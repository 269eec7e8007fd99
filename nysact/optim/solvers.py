r"""Solvers: from a layer's curvature statistics to the operator applied to its gradient.

A solver's :meth:`Solver.factor` turns the bias-corrected statistics of a layer (see
:mod:`nysact.curvature.estimators`) and the damping ρ into a :class:`LayerOperator`, whose
``apply`` maps the gradient matrix Ĝ (g, d_out/g, p) to its preconditioned version:

* :class:`ActivationInverse` — ``Ĝ (A + ρI)⁻¹`` (FOOF), or ``Ĝ (Â + ρI)⁻¹`` with a Nyström
  ``Â`` from a sketch (NysAct; Tropp et al. 2017 by default, or the paper's Alg. 1);
* :class:`KroneckerEigen` — KFAC's eigen method
  ``Q_G[(Q_Gᵀ Ĝ Q_A) ⊘ (d_G d_Aᵀ + ρ)]Q_Aᵀ`` (kfac-pytorch's damping of the eigenvalue products);
* :class:`KroneckerRankOne` — Eva's Sherman–Morrison inverse of ``āāᵀ ⊗ ḡḡᵀ + ρI``;
* :class:`KroneckerInverse` — any two one-sided solvers, ``P_G Ĝ P_A`` with √ρ on each side
  (e.g. KFAC with the Nyström solver on both factors).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from nysact.curvature.estimators import Covariance, Mean, Side, Sketch, Statistic
from nysact.linalg import (
    DenseDampedInverse,
    LowRankDampedInverse,
    SymmetricOperator,
    damped_inverse,
    nystrom_paper,
    nystrom_tropp,
)
from nysact.linalg._factor import _eigh_float64

__all__ = [
    "ActivationInverse",
    "KroneckerEigen",
    "KroneckerInverse",
    "KroneckerRankOne",
    "LayerOperator",
    "Solver",
]


class LayerOperator(ABC):
    """Preconditions one layer's gradient matrix."""

    fallback: bool = False

    @abstractmethod
    def apply(self, grad: Tensor) -> Tensor:
        """Return the preconditioned gradient matrix (same shape (g, m, p))."""

    @classmethod
    def apply_many(cls, ops: Sequence[LayerOperator], grads: list[Tensor]) -> list[Tensor]:
        """:meth:`apply` of several operators of this class, one gradient matrix each.

        The default loops; operators whose apply is elementwise override it with
        ``torch._foreach_*`` kernels (the same numbers, one call for all layers).

        Parameters
        ----------
        ops : sequence of LayerOperator
            Operators of this class, one per layer.
        grads : list of Tensor
            The layers' gradient matrices ``Ĝ`` of shape (g, m, p), in the order of ``ops``.

        Returns
        -------
        list of Tensor
            ``[op.apply(Ĝ) for op, Ĝ in zip(ops, grads)]``, bit-identical to the loop.

        Raises
        ------
        ValueError
            If ``ops`` and ``grads`` differ in length.
        """
        return [op.apply(g) for op, g in zip(ops, grads, strict=True)]

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Tensors that rebuild this operator (see :meth:`Solver.load`)."""


def _op_state(op: SymmetricOperator) -> dict[str, Any]:
    if isinstance(op, LowRankDampedInverse):
        return {
            "kind": "lowrank",
            "basis": op.basis,
            "eigenvalues": op.eigenvalues,
            "damping": op.damping,
            "fallback": op.fallback,
        }
    if isinstance(op, DenseDampedInverse):
        return {"kind": "dense", "matrix": op.matrix, "fallback": op.fallback}
    raise TypeError(f"cannot serialise operator {type(op).__name__}")


def _op_from_state(state: dict[str, Any]) -> SymmetricOperator:
    if state["kind"] == "lowrank":
        return LowRankDampedInverse(
            state["basis"], state["eigenvalues"], float(state["damping"]), bool(state["fallback"])
        )
    if state["kind"] == "dense":
        return DenseDampedInverse(state["matrix"], bool(state["fallback"]))
    raise ValueError(f"unknown operator kind {state['kind']!r} in state_dict")


class _Right(LayerOperator):
    """``Ĝ ↦ Ĝ P`` (and optionally ``P_G Ĝ P`` with a left operator)."""

    def __init__(self, right: SymmetricOperator, left: SymmetricOperator | None = None) -> None:
        self.right = right
        self.left = left
        self.fallback = right.fallback or (left is not None and left.fallback)

    def apply(self, grad: Tensor) -> Tensor:
        out = self.right.rmatmat(grad)
        if self.left is not None:
            out = self.left.rmatmat(out.mT).mT
        return out

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"right": _op_state(self.right)}
        if self.left is not None:
            st["left"] = _op_state(self.left)
        return st


class Solver(ABC):
    """Turns statistics into a :class:`LayerOperator`."""

    #: the statistic kinds the solver needs per side (for validation of a composition)
    sides: tuple[Side, ...] = ("activation",)

    @abstractmethod
    def factor(self, stats: dict[Side, Statistic], damping: float) -> LayerOperator:
        """Build the operator from bias-corrected statistics and damping ρ > 0."""

    def factor_many(
        self, stats: Sequence[dict[Side, Statistic]], dampings: Sequence[float]
    ) -> list[LayerOperator]:
        """:meth:`factor` for several layers (default: a loop; elementwise solvers batch it).

        Parameters
        ----------
        stats : sequence of dict
            Each layer's bias-corrected statistics, keyed by side.
        dampings : sequence of float
            Each layer's damping ρ > 0, in the order of ``stats``.

        Returns
        -------
        list of LayerOperator
            ``[factor(s, ρ) for s, ρ in zip(stats, dampings)]``: a batched override must give
            the same numbers as this loop.

        Raises
        ------
        ValueError
            If the lengths differ, or a statistic is not of the kind the solver needs.
        """
        return [self.factor(s, d) for s, d in zip(stats, dampings, strict=True)]

    @abstractmethod
    def load(self, state: dict[str, Any]) -> LayerOperator:
        """Rebuild an operator from its :meth:`LayerOperator.state_dict`."""


NystromVariant = Literal["tropp", "paper", "paper-authors"]


def _nystrom(stat: Sketch, damping: float, nystrom: NystromVariant) -> LowRankDampedInverse:
    if nystrom == "tropp":
        return nystrom_tropp(stat.sketch, stat.test_matrix, damping, check=False)
    return nystrom_paper(
        stat.sketch,
        stat.test_matrix,
        damping,
        solve="authors" if nystrom == "paper-authors" else "standard",
        check=False,
    )


def _one_sided(
    stat: Statistic, damping: float, nystrom: NystromVariant, on_host: bool = True
) -> SymmetricOperator:
    if isinstance(stat, Covariance):
        return damped_inverse(stat.matrix, damping, check=False)
    if isinstance(stat, Sketch):
        device = stat.sketch.device
        if on_host and device.type != "cpu":
            # The Nyström factorization is a few small LAPACK calls (an r × r Cholesky, a thin
            # d × r SVD): on a GPU they are launch- and sync-bound, on the host microseconds.
            # Y and Ω are d × r, so the round trip moves O(d·r) numbers per layer.
            op = _nystrom(Sketch(stat.sketch.cpu(), stat.test_matrix.cpu()), damping, nystrom)
            return LowRankDampedInverse(
                op.basis.to(device), op.eigenvalues.to(device), op.damping, op.fallback
            )
        return _nystrom(stat, damping, nystrom)
    raise ValueError(
        f"this solver needs a covariance or a sketch, got {type(stat).__name__} "
        "(use KroneckerRankOne for mean vectors)"
    )


@dataclass(frozen=True)
class ActivationInverse(Solver):
    r"""``Ĝ ↦ Ĝ (A + ρI)⁻¹`` — FOOF (Benzing 2022) and NysAct (Seung et al. 2024).

    A full covariance is inverted by Cholesky (:func:`nysact.linalg.damped_inverse`); a
    sketch by the Nyström solver selected with ``nystrom``:

    * ``"tropp"`` (default) — :func:`nysact.linalg.nystrom_tropp`, the accurate one;
    * ``"paper"`` — :func:`nysact.linalg.nystrom_paper` (Alg. 1 lines 11–19 with L⁻ᵀ);
    * ``"paper-authors"`` — the same with the authors' L⁻¹ solve.

    Parameters
    ----------
    nystrom : {"tropp", "paper", "paper-authors"}
        The Nyström variant used for a sketch (ignored for a full covariance).
    nystrom_on_host : bool
        Factor sketches of GPU statistics on the host (default True): the d × r sketch and Ω
        go to the CPU, U and λ̂ come back. The factorization is a handful of small LAPACK
        calls that cuSOLVER runs launch- and sync-bound; see ``benchmarks/results``. False
        keeps everything on the statistics' device.

    Raises
    ------
    ValueError
        If ``nystrom`` is not one of the three names.
    """

    nystrom: NystromVariant = "tropp"
    nystrom_on_host: bool = True

    def __post_init__(self) -> None:
        if self.nystrom not in ("tropp", "paper", "paper-authors"):
            raise ValueError(
                f"Invalid nystrom: {self.nystrom!r}. Must be 'tropp', 'paper' or 'paper-authors'."
            )

    def factor(self, stats: dict[Side, Statistic], damping: float) -> LayerOperator:
        """Factor the activation side."""
        return _Right(_one_sided(stats["activation"], damping, self.nystrom, self.nystrom_on_host))

    def load(self, state: dict[str, Any]) -> LayerOperator:
        """Rebuild from a state dict."""
        return _Right(_op_from_state(state["right"]))


@dataclass(frozen=True)
class KroneckerInverse(Solver):
    r"""``Ĝ ↦ (G + √ρ I)⁻¹ Ĝ (A + √ρ I)⁻¹``: two one-sided inverses (factored Tikhonov, π = 1).

    Each side may be a full covariance or a sketch (then a Nyström inverse).

    Parameters
    ----------
    activation, gradient : ActivationInverse
        The one-sided solver of each factor (their ``nystrom`` variant is used for sketches).
    sides : tuple of str
        The statistics this solver reads, ``("activation", "gradient")``; leave the default.
    """

    activation: ActivationInverse = ActivationInverse()
    gradient: ActivationInverse = ActivationInverse()
    sides: tuple[Side, ...] = ("activation", "gradient")

    def factor(self, stats: dict[Side, Statistic], damping: float) -> LayerOperator:
        """Factor both sides with damping √ρ each."""
        root = math.sqrt(damping)
        act, grad = self.activation, self.gradient
        right = _one_sided(stats["activation"], root, act.nystrom, act.nystrom_on_host)
        left = _one_sided(stats["gradient"], root, grad.nystrom, grad.nystrom_on_host)
        return _Right(right, left)

    def load(self, state: dict[str, Any]) -> LayerOperator:
        """Rebuild from a state dict."""
        return _Right(_op_from_state(state["right"]), _op_from_state(state["left"]))


class _EigenOperator(LayerOperator):
    def __init__(
        self, qa: Tensor, da: Tensor, qg: Tensor, dg: Tensor, damping: float, fallback: bool
    ) -> None:
        self.qa, self.da, self.qg, self.dg = qa, da, qg, dg
        self.damping = damping
        self.fallback = fallback

    def apply(self, grad: Tensor) -> Tensor:
        inner = self.qg.mT @ grad @ self.qa
        inner = inner / (self.dg[..., :, None] * self.da[..., None, :] + self.damping)
        return self.qg @ inner @ self.qa.mT

    def state_dict(self) -> dict[str, Any]:
        return {
            "qa": self.qa,
            "da": self.da,
            "qg": self.qg,
            "dg": self.dg,
            "damping": self.damping,
            "fallback": self.fallback,
        }


def _eigh(a: Tensor) -> tuple[Tensor, Tensor, bool]:
    try:
        lam, q = torch.linalg.eigh(a)
        if bool(torch.isfinite(lam).all()):
            return lam.clamp_min(0.0), q, False
    except RuntimeError:  # pragma: no cover - LAPACK convergence failure
        pass
    lam64, q64 = _eigh_float64(a)
    return lam64.clamp_min(0.0).to(a.dtype), q64.to(a.dtype), True


@dataclass(frozen=True)
class KroneckerEigen(Solver):
    r"""KFAC's eigen method (Martens & Grosse 2015; kfac-pytorch ``eigen``).

    With ``A = Q_A diag(d_A) Q_Aᵀ`` and ``G = Q_G diag(d_G) Q_Gᵀ`` (eigenvalues clamped at 0),

    .. math::  \hat G \mapsto Q_G\big[(Q_G^\top \hat G Q_A) \oslash (d_G d_A^\top + \rho)\big]
               Q_A^\top,

    i.e. ``(A ⊗ G + ρI)⁻¹ vec(Ĝ)`` exactly: the damping is added to the eigenvalue products,
    not factored over the two sides. Failed ``eigh`` calls are retried in float64 (counted).

    Parameters
    ----------
    sides : tuple of str
        The statistics this solver reads, ``("activation", "gradient")``; leave the default.
    """

    sides: tuple[Side, ...] = ("activation", "gradient")

    def factor(self, stats: dict[Side, Statistic], damping: float) -> LayerOperator:
        """Eigendecompose both (full) covariances."""
        a, g = stats["activation"], stats["gradient"]
        if not isinstance(a, Covariance) or not isinstance(g, Covariance):
            raise ValueError("KroneckerEigen needs FullCovariance estimators on both sides")
        da, qa, fa = _eigh(a.matrix)
        dg, qg, fg = _eigh(g.matrix)
        return _EigenOperator(qa, da, qg, dg, damping, fa or fg)

    def load(self, state: dict[str, Any]) -> LayerOperator:
        """Rebuild from a state dict."""
        return _EigenOperator(
            state["qa"],
            state["da"],
            state["qg"],
            state["dg"],
            float(state["damping"]),
            bool(state["fallback"]),
        )


class _RankOneKronecker(LayerOperator):
    def __init__(self, a: Tensor, g: Tensor, damping: float) -> None:
        self.a, self.g, self.damping = a, g, damping

    def apply(self, grad: Tensor) -> Tensor:
        a, g, lam = self.a, self.g, self.damping
        aa = (a * a).sum(-1)
        gg = (g * g).sum(-1)
        c = (g[..., None, :] @ grad @ a[..., :, None])[..., 0, 0]
        coef = (c / (aa * gg + lam))[..., None, None]
        return (grad - coef * (g[..., :, None] * a[..., None, :])) / lam

    def state_dict(self) -> dict[str, Any]:
        return {"a": self.a, "g": self.g, "damping": self.damping}


@dataclass(frozen=True)
class KroneckerRankOne(Solver):
    r"""Eva (Zhang et al. 2023): Sherman–Morrison inverse of ``āāᵀ ⊗ ḡḡᵀ + ρI``.

    .. math::  \hat G \mapsto \frac{1}{\rho}\Big(\hat G - \frac{\bar g^\top \hat G \bar a}
               {\lVert\bar a\rVert^2\lVert\bar g\rVert^2 + \rho}\,\bar g\bar a^\top\Big)

    O(d_in + d_out) memory and O(d_out·d_in) per application; no inverse state.

    Parameters
    ----------
    sides : tuple of str
        The statistics this solver reads, ``("activation", "gradient")``; leave the default.
    """

    sides: tuple[Side, ...] = ("activation", "gradient")

    def factor(self, stats: dict[Side, Statistic], damping: float) -> LayerOperator:
        """Take the two mean vectors."""
        a, g = stats["activation"], stats["gradient"]
        if not isinstance(a, Mean) or not isinstance(g, Mean):
            raise ValueError("KroneckerRankOne needs MeanVector estimators on both sides")
        return _RankOneKronecker(a.vector, g.vector, damping)

    def load(self, state: dict[str, Any]) -> LayerOperator:
        """Rebuild from a state dict."""
        return _RankOneKronecker(state["a"], state["g"], float(state["damping"]))
