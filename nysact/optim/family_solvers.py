r"""Solvers of MAC, AdaAct and Shampoo: statistics → the operator applied to a layer's Ĝ.

Each is a :class:`~nysact.optim.solvers.Solver` for the composer (see
:mod:`nysact.optim.solvers` for the protocol); the gradient matrix Ĝ = [∇W | ∇b] has shape
(g, m, p), m = d_out/g rows per conv group.

* :class:`RankOneActivationInverse` — MAC (Seung et al. 2025): ``Ĝ ↦ ρ·Ĝ(āāᵀ + ρI)⁻¹`` by
  Sherman–Morrison in O(m·p) (:class:`nysact.linalg.RankOneDampedInverse`); the V rows of a
  fused q/k/v layer use the attention-weighted mean v instead of ā; a layer whose estimator
  keeps a full covariance (MAC's first layer) gets ``ρ·Ĝ(A + ρI)⁻¹`` by Cholesky;
* :class:`ActivationRMSInverse` — AdaAct (Seung et al. 2024): ``Ĝ ↦ Ĝ diag(1/(√ŝ + ε))`` with
  ŝ the activation second moments;
* :class:`KroneckerInverseRoot` — Shampoo (Gupta et al. 2018): ``Ĝ ↦ L^{-1/4} Ĝ R^{-1/4}``
  (float64 eigendecomposition, :func:`nysact.linalg.damped_inverse_root`) grafted to the
  norm of Ĝ (SGD grafting, Agarwal et al. 2020; Distributed Shampoo's
  ``SGDGraftingConfig``).

References
----------
Seung, H., Lee, J., Ko, H. (2025). MAC: An efficient gradient preconditioning using mean
activation approximated curvature. ICDM (arXiv:2506.08464).

Seung, H., Lee, J., Ko, H. (2024). An adaptive method stabilizing activations for enhanced
generalization. ICDM Workshops.

Gupta, V., Koren, T., Singer, Y. (2018). Shampoo: Preconditioned stochastic tensor
optimization. ICML.

Agarwal, N., Anil, R., Hazan, E., Koren, T., Zhang, C. (2020). Disentangling adaptive gradient
methods from learning rates. arXiv:2002.11803.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from nysact.curvature.estimators import (
    Covariance,
    KroneckerFactors,
    Mean,
    SecondMoment,
    Side,
    Statistic,
)
from nysact.linalg import RankOneDampedInverse, SymmetricOperator, damped_inverse
from nysact.linalg.roots import damped_inverse_root
from nysact.optim.solvers import LayerOperator, Solver, _op_from_state, _op_state

__all__ = ["ActivationRMSInverse", "KroneckerInverseRoot", "RankOneActivationInverse"]


# --------------------------------------------------------------------------------------------
# MAC
# --------------------------------------------------------------------------------------------


class _MeanActivationOperator(LayerOperator):
    """``Ĝ ↦ s·Ĝ P`` with ``P = (āāᵀ + ρI)⁻¹`` (or a dense inverse); V rows with ``P_v``."""

    def __init__(
        self,
        main: SymmetricOperator,
        value: RankOneDampedInverse | None,
        scale: float,
    ) -> None:
        self.main, self.value, self.scale = main, value, scale
        self.fallback = main.fallback

    def apply(self, grad: Tensor) -> Tensor:
        if self.value is None:
            out = self.main.rmatmat(grad)
        else:
            v_rows = 2 * (grad.shape[-2] // 3)  # rows [2D, 3D) are V (timm layout)
            out = torch.cat(
                [
                    self.main.rmatmat(grad[..., :v_rows, :]),
                    self.value.rmatmat(grad[..., v_rows:, :]),
                ],
                dim=-2,
            )
        return out * self.scale if self.scale != 1.0 else out

    def state_dict(self) -> dict[str, Any]:
        main: dict[str, Any]
        if isinstance(self.main, RankOneDampedInverse):
            main = {"kind": "rank_one", "vector": self.main.vector, "damping": self.main.damping}
        else:
            main = _op_state(self.main)
        value = None if self.value is None else self.value.vector
        return {"main": main, "value": value, "scale": self.scale}


@dataclass(frozen=True)
class RankOneActivationInverse(Solver):
    r"""MAC: ``Ĝ ↦ ρ·Ĝ (āāᵀ + ρI)⁻¹ = Ĝ (I − āāᵀ/(ρ + ‖ā‖²))``, O(p) memory per layer.

    The inverse is Sherman–Morrison's (MAC paper, eq. 9; the authors' ``mac.py`` keeps
    ``P = I − āāᵀ/(ρ + ‖ā‖²)``). With ``decoupled=True`` (default, the authors' "decoupled
    damping" of their README) the operator is ``ρ(āāᵀ + ρI)⁻¹``: the identity off ā and a
    shrink ``ρ/(ρ + ‖ā‖²)`` along ā, so ρ does not rescale the step; ``decoupled=False`` gives
    the plain inverse ``(āāᵀ + ρI)⁻¹`` (steps 1/ρ times larger off ā).

    For a layer marked as a fused q/k/v projection (``Mean.attention`` present, see
    :mod:`nysact.curvature.attention`) the Q and K rows (the first two thirds) use ā and the V
    rows (the last third) use the attention-weighted mean v. A layer whose statistic is a full
    :class:`~nysact.curvature.Covariance` (MAC's first layer) gets the exact damped inverse
    ``s·(A + ρI)⁻¹`` by Cholesky, with the same scale s (ρ when decoupled) — the authors apply
    the plain ``(A + ρI)⁻¹`` there whatever ρ, which is the same at their ρ = 1.

    Parameters
    ----------
    decoupled : bool
        Multiply by ρ (default True).
    """

    decoupled: bool = True

    def factor(self, stats: dict[Side, Statistic], damping: float) -> LayerOperator:
        """Build the operator from the mean (or covariance) of the activation side.

        Raises
        ------
        ValueError
            If the activation statistic is neither a mean vector nor a covariance.
        """
        stat = stats["activation"]
        scale = damping if self.decoupled else 1.0
        if isinstance(stat, Covariance):
            return _MeanActivationOperator(
                damped_inverse(stat.matrix, damping, check=False), None, scale
            )
        if isinstance(stat, Mean):
            value = None
            if stat.attention is not None:
                value = RankOneDampedInverse(stat.attention, damping)
            return _MeanActivationOperator(RankOneDampedInverse(stat.vector, damping), value, scale)
        raise ValueError(
            f"RankOneActivationInverse needs a MeanVector (or FullCovariance) estimator, got "
            f"{type(stat).__name__}"
        )

    def load(self, state: dict[str, Any]) -> LayerOperator:
        """Rebuild from a state dict."""
        main_state = state["main"]
        main: SymmetricOperator
        if main_state["kind"] == "rank_one":
            main = RankOneDampedInverse(main_state["vector"], float(main_state["damping"]))
        else:
            main = _op_from_state(main_state)
        value = None
        if state["value"] is not None:
            value = RankOneDampedInverse(state["value"], float(main_state["damping"]))
        return _MeanActivationOperator(main, value, float(state["scale"]))


# --------------------------------------------------------------------------------------------
# AdaAct
# --------------------------------------------------------------------------------------------


class _ColumnScaling(LayerOperator):
    def __init__(self, scale: Tensor) -> None:
        self.scale = scale  # (g, p)

    def apply(self, grad: Tensor) -> Tensor:
        return grad * self.scale[..., None, :]

    @classmethod
    def apply_many(cls, ops: Sequence[LayerOperator], grads: list[Tensor]) -> list[Tensor]:
        scales = [op.scale[..., None, :] for op in ops if isinstance(op, _ColumnScaling)]
        if len(scales) != len(ops):
            return super().apply_many(ops, grads)
        return list(torch._foreach_mul(grads, scales))

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}


@dataclass(frozen=True)
class ActivationRMSInverse(Solver):
    r"""AdaAct: ``Ĝ ↦ Ĝ diag(1/(√ŝ + ε))``, ŝ_j = E[a_j²] (bias-corrected), ε = the damping.

    Every output neuron of the layer shares the scale of input coordinate j (AdaAct, Seung et
    al. 2024, the authors' ``adaact.py`` step 1: ``D_j = 1/(√v̂_j + ε)``, ε outside the root).
    AdaAct applies it to its gradient *momentum* m̂, which the composer does with a
    ``pre_update`` (see :class:`nysact.optim.AdaAct`).
    """

    def factor(self, stats: dict[Side, Statistic], damping: float) -> LayerOperator:
        """Build ``1/(√ŝ + ε)`` from the second moments.

        Raises
        ------
        ValueError
            If the activation statistic is not a :class:`~nysact.curvature.SecondMoment`.
        """
        stat = stats["activation"]
        if not isinstance(stat, SecondMoment):
            raise ValueError(
                f"ActivationRMSInverse needs a SecondMomentVector estimator, got "
                f"{type(stat).__name__}"
            )
        return _ColumnScaling(1.0 / (stat.vector.clamp_min(0.0).sqrt() + damping))

    def factor_many(
        self, stats: Sequence[dict[Side, Statistic]], dampings: Sequence[float]
    ) -> list[LayerOperator]:
        """:meth:`factor` of every layer with four foreach kernels (the same numbers).

        Computes ``D_j = 1/(√max(ŝ_j, 0) + ε)`` for all layers at once (AdaAct, the authors'
        ``adaact.py`` step 1), with ε each layer's damping. Falls back to the loop when a
        statistic is not a :class:`~nysact.curvature.SecondMoment` (which then raises) or the
        vectors do not share one device and dtype.

        Parameters
        ----------
        stats : sequence of dict
            Each layer's statistics; ``"activation"`` holds the second moment ŝ.
        dampings : sequence of float
            Each layer's ε.

        Returns
        -------
        list of LayerOperator
            One column scaling ``Ĝ ↦ Ĝ diag(D)`` per layer.
        """
        vectors = []
        for st in stats:
            stat = st["activation"]
            if not isinstance(stat, SecondMoment):
                return super().factor_many(stats, dampings)
            vectors.append(stat.vector)
        if len({(v.device, v.dtype) for v in vectors}) != 1:
            return super().factor_many(stats, dampings)
        roots = torch._foreach_sqrt(torch._foreach_clamp_min(vectors, 0.0))
        torch._foreach_add_(roots, list(dampings))
        return [_ColumnScaling(s) for s in torch._foreach_reciprocal(roots)]

    def load(self, state: dict[str, Any]) -> LayerOperator:
        """Rebuild from a state dict."""
        return _ColumnScaling(state["scale"])


# --------------------------------------------------------------------------------------------
# Shampoo
# --------------------------------------------------------------------------------------------


def _graft(direction: Tensor, reference: Tensor) -> Tensor:
    """Rescale each group's block of ``direction`` to the Frobenius norm of ``reference``."""
    num = torch.linalg.matrix_norm(reference)
    den = torch.linalg.matrix_norm(direction)
    ratio = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 0.0)
    return direction * ratio[..., None, None]


class _InverseRootOperator(LayerOperator):
    def __init__(self, left: Tensor, right: Tensor, graft: bool) -> None:
        self.left, self.right, self.graft = left, right, graft

    def apply(self, grad: Tensor) -> Tensor:
        out = self.left @ grad @ self.right
        return _graft(out, grad) if self.graft else out

    def state_dict(self) -> dict[str, Any]:
        return {"left": self.left, "right": self.right, "graft": self.graft}


@dataclass(frozen=True)
class KroneckerInverseRoot(Solver):
    r"""Shampoo: ``Ĝ ↦ (L + εI)^{-1/r} Ĝ (R + εI)^{-1/r}`` with SGD grafting.

    L = E[ĜĜᵀ], R = E[ĜᵀĜ] come from :class:`nysact.curvature.KroneckerGradientFactors`; the
    roots are computed at each refresh by a float64 symmetric eigendecomposition
    (:func:`nysact.linalg.damped_inverse_root`; r = 4 for a matrix, Gupta et al. 2018, Alg. 1).
    With ``graft="sgd"`` (default) each layer's (each group's) preconditioned block is rescaled
    to the Frobenius norm of Ĝ itself — the step has SGD's length and Shampoo's direction
    (learning-rate grafting, Agarwal et al. 2020, as Distributed Shampoo's
    ``SGDGraftingConfig``: ``‖g‖/‖P g‖`` per block); ``"none"`` uses the raw Shampoo step.

    Parameters
    ----------
    root : float
        r > 0 (default 4).
    graft : {"sgd", "none"}
        The grafting method.

    Raises
    ------
    ValueError
        If ``root ≤ 0`` or ``graft`` is not one of the two names.
    """

    root: float = 4.0
    graft: Literal["sgd", "none"] = "sgd"
    sides: tuple[Side, ...] = ("gradient_matrix",)

    def __post_init__(self) -> None:
        if not isinstance(self.root, (int, float)) or not self.root > 0:
            raise ValueError(f"Invalid root: {self.root!r}. Must be > 0.")
        if self.graft not in ("sgd", "none"):
            raise ValueError(f"Invalid graft: {self.graft!r}. Must be 'sgd' or 'none'.")

    def factor(self, stats: dict[Side, Statistic], damping: float) -> LayerOperator:
        """Compute both inverse roots (float64 eigendecompositions).

        Raises
        ------
        ValueError
            If the statistic is not a :class:`~nysact.curvature.KroneckerFactors`.
        """
        stat = stats["gradient_matrix"]
        if not isinstance(stat, KroneckerFactors):
            raise ValueError(
                f"KroneckerInverseRoot needs KroneckerGradientFactors, got {type(stat).__name__}"
            )
        left = damped_inverse_root(stat.left, self.root, damping, check=False)
        right = damped_inverse_root(stat.right, self.root, damping, check=False)
        return _InverseRootOperator(left, right, self.graft == "sgd")

    def load(self, state: dict[str, Any]) -> LayerOperator:
        """Rebuild from a state dict."""
        return _InverseRootOperator(state["left"], state["right"], bool(state["graft"]))
