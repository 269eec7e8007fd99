r"""Diagonal plus low rank ``γI + U diag(σ) Uᵀ``: Woodbury inverse, Brand and Ginger updates.

With ``U`` (d × τ) having orthonormal columns, σ ≥ 0 and γ > 0,

.. math::  M = \gamma I + U\,\mathrm{diag}(\sigma)\,U^\top, \qquad
           M^{-1} = \gamma^{-1} I - U K_\gamma U^\top, \quad
           K_\gamma = \mathrm{diag}\!\Big(\frac{\sigma_i}{\gamma^2 + \gamma\sigma_i}\Big),

both applied in O(d·τ) per vector: no d × d tensor is ever formed (only ``to_dense()`` does).

* :class:`DiagPlusLowRank` / :func:`diag_plus_low_rank` — the operator M, its ``solve`` and
  ``inverse()``;
* :func:`random_semi_orthogonal` — a random U₀ (Ginger's initialisation, with σ₀ = 0);
* :func:`brand_rank_one_update` — the top eigenpairs of ``U diag(λ) Uᵀ + c v vᵀ`` in
  O(dτ² + τ³) (Brand 2006);
* :func:`ginger_direction`, :func:`ginger_update` — the two operations ``drt`` and ``upd`` of
  Ginger (Alg. 1), which keeps ``G_γ = γI + U diag(σ) Uᵀ`` as a truncated EMA of ``d_t d_tᵀ``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nysact.linalg._validate import _check_finite, _check_positive, _check_rank, _check_tensor
from nysact.linalg.operators import SymmetricOperator, _check_operand

__all__ = [
    "DiagPlusLowRank",
    "DiagPlusLowRankInverse",
    "brand_rank_one_update",
    "diag_plus_low_rank",
    "ginger_direction",
    "ginger_update",
    "random_semi_orthogonal",
]


def _woodbury_shrink(sigma: Tensor, gamma: float) -> Tensor:
    """``K_γ = σ / (γ² + γσ)`` (Ginger eq. 16), in the form ``σ / (γ(γ + σ))``; 0 ≤ K < 1/γ."""
    return sigma / (gamma * (gamma + sigma))


def _apply_diag_plus(u: Tensor, coef: Tensor, scale: float, x: Tensor, sign: float) -> Tensor:
    """``scale·x + sign·U diag(coef) Uᵀ x`` for x of shape (d,) or (d, k)."""
    if x.ndim == 1:
        return scale * x + sign * (u @ (coef * (u.mT @ x)))
    return scale * x + sign * (u @ (coef[:, None] * (u.mT @ x)))


def _orthonormality_tol(dtype: torch.dtype) -> float:
    """Largest ``max|UᵀU − I|`` accepted as orthonormal: 10·√ε (3.5e-3 float32, 1.5e-7 float64).

    A Householder QR, or a few thousand Brand updates, leave ``UᵀU − I`` at a small multiple of
    ε; a matrix that is not orthonormal (rescaled columns, a Gaussian matrix) is off by O(1).
    """
    return 10.0 * math.sqrt(torch.finfo(dtype).eps)


def _check_orthonormal(basis: Tensor, name: str) -> None:
    gram = basis.mT @ basis
    eye = torch.eye(gram.shape[0], dtype=basis.dtype, device=basis.device)
    err = float((gram - eye).abs().max()) if gram.numel() else 0.0
    tol = _orthonormality_tol(basis.dtype)
    if not err <= tol:
        raise ValueError(
            f"Invalid {name}: columns are not orthonormal, max|{name}ᵀ{name} − I| = {err:.3e} "
            f"exceeds {tol:.1e}"
        )


def _check_basis(basis: object, name: str = "basis") -> Tensor:
    """2-D, 1 ≤ τ ≤ d, finite, orthonormal columns."""
    basis = _check_tensor(basis, name, ndim=2)
    d, tau = basis.shape
    if tau < 1 or d < tau:
        raise ValueError(
            f"Invalid {name}: shape {tuple(basis.shape)}; must be (d, τ) with 1 ≤ τ ≤ d"
        )
    _check_finite(basis, name)
    _check_orthonormal(basis, name)
    return basis


def _check_values(values: object, basis: Tensor, name: str) -> Tensor:
    """1-D of length τ, same dtype/device as the basis, finite and ≥ 0."""
    values = _check_tensor(values, name, ndim=1)
    tau = basis.shape[1]
    if values.shape[0] != tau:
        raise ValueError(
            f"Invalid {name}: shape {tuple(values.shape)}; must be ({tau},) to match basis "
            f"of shape {tuple(basis.shape)}"
        )
    if values.dtype != basis.dtype or values.device != basis.device:
        raise ValueError(
            f"Invalid {name}: {values.dtype} on {values.device}; must match basis "
            f"({basis.dtype} on {basis.device})"
        )
    _check_finite(values, name)
    if values.numel() and float(values.min()) < 0.0:
        raise ValueError(
            f"Invalid {name}: min entry {float(values.min())!r} < 0; must be non-negative"
        )
    return values


def _check_vector(vector: object, basis: Tensor, name: str) -> Tensor:
    """1-D of length d, same dtype/device as the basis, finite."""
    vector = _check_tensor(vector, name, ndim=1)
    d = basis.shape[0]
    if vector.shape[0] != d:
        raise ValueError(
            f"Invalid {name}: shape {tuple(vector.shape)}; must be ({d},) to match basis "
            f"of shape {tuple(basis.shape)}"
        )
    if vector.dtype != basis.dtype or vector.device != basis.device:
        raise ValueError(
            f"Invalid {name}: {vector.dtype} on {vector.device}; must match basis "
            f"({basis.dtype} on {basis.device})"
        )
    _check_finite(vector, name)
    return vector


def _check_update_rank(rank: int, tau: int, d: int) -> int:
    """``1 ≤ rank ≤ min(τ + 1, d)``."""
    rank = _check_rank(rank, "rank")
    upper = min(tau + 1, d)
    if rank > upper:
        raise ValueError(
            f"Invalid rank: {rank!r}. Must be <= min(τ + 1, d) = min({tau + 1}, {d}) = {upper}."
        )
    return rank


def _check_coefficient(coefficient: float | Tensor, check: bool) -> float | Tensor:
    """A finite ``c ≥ 0``: a real number, or a 0-dimensional tensor (checked only if asked)."""
    if isinstance(coefficient, Tensor):
        if coefficient.ndim != 0:
            raise ValueError(
                f"Invalid coefficient: shape {tuple(coefficient.shape)}; must be a scalar"
            )
        if check:
            c = float(coefficient)
            if not (math.isfinite(c) and c >= 0.0):
                raise ValueError(f"Invalid coefficient: {c!r}. Must be a finite number >= 0.")
        return coefficient
    if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)):
        raise TypeError(f"coefficient must be a real number, got {type(coefficient).__name__}")
    c = float(coefficient)
    if not (math.isfinite(c) and c >= 0.0):
        raise ValueError(f"Invalid coefficient: {coefficient!r}. Must be a finite number >= 0.")
    return c


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
    a = float(alpha)
    if not (0.0 < a < 1.0):
        raise ValueError(f"Invalid alpha: {alpha!r}. Must lie in the open interval (0, 1).")
    return a


@dataclass(frozen=True)
class DiagPlusLowRank(SymmetricOperator):
    r"""``M = γI + U diag(σ) Uᵀ`` with orthonormal U (d × τ), σ ≥ 0 and γ > 0.

    ``matmat`` applies M itself, ``M x = γx + U (σ ⊙ Uᵀx)``; :meth:`solve` applies M⁻¹ by
    Woodbury and :meth:`inverse` wraps that as an operator. Both cost O(d·τ) per vector and
    O(d·τ) memory. Eigenvalues: ``γ + σ_i`` on range(U), γ on its orthogonal complement.

    Build it with :func:`diag_plus_low_rank`, which validates the fields.

    Attributes
    ----------
    gamma : float
        γ > 0.
    basis : Tensor
        ``U``, shape (d, τ), orthonormal columns.
    sigma : Tensor
        ``σ``, shape (τ,), non-negative.
    fallback : bool
        Always False (no factorization can fail here); part of the operator interface.
    """

    gamma: float
    basis: Tensor
    sigma: Tensor
    fallback: bool = False

    @property
    def dim(self) -> int:
        """The size d."""
        return int(self.basis.shape[0])

    @property
    def rank(self) -> int:
        """The number τ of columns of U."""
        return int(self.basis.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of U."""
        return self.basis.dtype

    def _device(self) -> torch.device:
        return self.basis.device

    def matmat(self, x: Tensor) -> Tensor:
        """Return ``M x = γx + U diag(σ) Uᵀ x`` for x of shape (d,) or (d, k)."""
        _check_operand(x, self.dim)
        return _apply_diag_plus(self.basis, self.sigma, self.gamma, x, 1.0)

    def rmatmat(self, g: Tensor) -> Tensor:
        """Return ``G M = γG + ((G U) diag(σ)) Uᵀ`` for G of shape (m, d)."""
        if g.ndim != 2 or g.shape[1] != self.dim:
            raise ValueError(f"g must have shape (m, {self.dim}), got {tuple(g.shape)}")
        u = self.basis
        return self.gamma * g + ((g @ u) * self.sigma) @ u.mT

    def shrink(self) -> Tensor:
        r"""Return ``K_γ = diag(σ_i / (γ² + γσ_i))`` as a vector (Ginger eq. 16); 0 ≤ K < 1/γ."""
        return _woodbury_shrink(self.sigma, self.gamma)

    def solve(self, x: Tensor) -> Tensor:
        r"""Return ``M⁻¹ x`` by the Woodbury identity for orthonormal U.

        .. math::  M^{-1} x = \frac{x}{\gamma} - U\,\mathrm{diag}\!\Big(
                   \frac{\sigma_i}{\gamma(\gamma + \sigma_i)}\Big)\,U^\top x
                   = \gamma^{-1} x - U K_\gamma U^\top x

        (Woodbury 1950, with ``UᵀU = I`` so that the capacity matrix is diagonal; Ginger,
        eqs. 15–16, ``K_γ = diag(σ/(γ² + γσ))``). O(d·τ) per vector. The coefficient is
        written as ``σ/(γ(γ+σ))``, which cannot cancel, and the error does not grow with the
        condition number ``(γ + max σ)/γ``: it is O(ε·‖x‖/γ).

        Parameters
        ----------
        x : Tensor
            Shape (d,) or (d, k).

        Returns
        -------
        Tensor
            ``M⁻¹ x``, the shape of x.

        Raises
        ------
        ValueError
            If x does not have shape (d,) or (d, k).
        """
        _check_operand(x, self.dim)
        return _apply_diag_plus(self.basis, self.shrink(), 1.0 / self.gamma, x, -1.0)

    def inverse(self) -> DiagPlusLowRankInverse:
        """Return ``M⁻¹`` as an operator whose ``matmat`` is :meth:`solve`."""
        return DiagPlusLowRankInverse(self, self.fallback)


@dataclass(frozen=True)
class DiagPlusLowRankInverse(SymmetricOperator):
    r"""``M⁻¹ = γ⁻¹I − U K_γ Uᵀ`` for ``M = γI + U diag(σ) Uᵀ`` (see :meth:`DiagPlusLowRank.solve`).

    Its eigenvalues are ``1/(γ + σ_i)`` on range(U) and ``1/γ`` elsewhere, so they lie in
    ``(0, 1/γ]`` (Ginger, Lemma 1).

    Attributes
    ----------
    operator : DiagPlusLowRank
        M.
    fallback : bool
        M's flag (always False).
    """

    operator: DiagPlusLowRank
    fallback: bool = False

    @property
    def dim(self) -> int:
        """The size d."""
        return self.operator.dim

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of U."""
        return self.operator.dtype

    def _device(self) -> torch.device:
        return self.operator._device()

    def matmat(self, x: Tensor) -> Tensor:
        """Return ``M⁻¹ x`` (:meth:`DiagPlusLowRank.solve`)."""
        return self.operator.solve(x)

    def rmatmat(self, g: Tensor) -> Tensor:
        """Return ``G M⁻¹ = G/γ − ((G U) K_γ) Uᵀ`` for G of shape (m, d)."""
        if g.ndim != 2 or g.shape[1] != self.dim:
            raise ValueError(f"g must have shape (m, {self.dim}), got {tuple(g.shape)}")
        op = self.operator
        u = op.basis
        return g / op.gamma - ((g @ u) * op.shrink()) @ u.mT


def diag_plus_low_rank(
    gamma: float, basis: Tensor, sigma: Tensor, *, check: bool = True
) -> DiagPlusLowRank:
    r"""Validate and build ``M = γI + U diag(σ) Uᵀ``.

    Parameters
    ----------
    gamma : float
        γ > 0, finite.
    basis : Tensor
        ``U``, shape (d, τ) with 1 ≤ τ ≤ d, finite, orthonormal columns:
        ``max|UᵀU − I| ≤ 10·√ε`` of its dtype (3.5e-3 float32, 1.5e-7 float64).
    sigma : Tensor
        ``σ``, shape (τ,), finite, ≥ 0, same dtype and device as U.
    check : bool
        Validate the tensors (synchronises with the device); γ is always checked. Default True.

    Returns
    -------
    DiagPlusLowRank
        The operator.

    Raises
    ------
    ValueError
        Naming the argument, if γ ≤ 0 or is not finite; if basis is not 2-D with 1 ≤ τ ≤ d,
        has NaN/Inf entries or non-orthonormal columns; if sigma is not of shape (τ,), differs
        in dtype/device, has NaN/Inf or negative entries.
    """
    g = _check_positive(gamma, "gamma")
    if check:
        basis = _check_basis(basis)
        sigma = _check_values(sigma, basis, "sigma")
    return DiagPlusLowRank(g, basis, sigma)


def random_semi_orthogonal(
    dim: int,
    rank: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""A random d × τ matrix with orthonormal columns (Ginger's U₀).

    ``U₀ = Q diag(sign(diag R))`` from the thin QR ``Z = QR`` of a Gaussian ``Z`` (d × τ) drawn
    in float64 *on the CPU* from ``generator`` — so a seed gives the same U₀ on every device —
    then cast to ``dtype`` and moved to ``device``. The sign fix makes U₀ Haar-distributed on
    the Stiefel manifold (Mezzadri 2007). Ginger initialises ``U₀`` this way with ``σ₀ = 0``
    (Alg. 1).

    Parameters
    ----------
    dim : int
        d ≥ 1.
    rank : int
        τ with 1 ≤ τ ≤ d.
    generator : torch.Generator, optional
        A CPU generator; default the global one.
    dtype : torch.dtype
        Floating dtype of the result. Default float32.
    device : torch.device or str, optional
        Device of the result. Default CPU.

    Returns
    -------
    Tensor
        Shape (d, τ), ``UᵀU = I`` to rounding.

    Raises
    ------
    ValueError
        If ``dim < 1``, ``rank < 1`` or ``rank > dim``.
    """
    d = _check_rank(dim, "dim")
    tau = _check_rank(rank, "rank")
    if tau > d:
        raise ValueError(f"Invalid rank: {rank!r}. Must be <= dim = {d}.")
    z = torch.randn(d, tau, generator=generator, dtype=torch.float64, device="cpu")
    q, r = torch.linalg.qr(z)
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(torch.float64)
    u: Tensor = (q * signs).to(dtype=dtype, device=device)
    return u


def _complement_vector(basis: Tensor) -> Tensor:
    """A unit vector orthogonal to range(U), chosen deterministically (τ < d).

    ``e_j`` with j the row of U of smallest norm (first one on ties), projected twice onto
    range(U)^⊥ and normalised. Since the squared row norms sum to τ, the smallest is ≤ τ/d,
    so the projection has norm ≥ √(1 − τ/d) ≥ 1/√d: no cancellation.
    """
    d = basis.shape[0]
    j = torch.argmin((basis * basis).sum(dim=1))
    e = (torch.arange(d, device=basis.device) == j).to(basis.dtype)
    p = e - basis @ (basis.mT @ e)
    p = p - basis @ (basis.mT @ p)
    unit: Tensor = p / torch.linalg.vector_norm(p)
    return unit


def _residual(basis: Tensor, vector: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``v = U m + ρ P`` by classical Gram–Schmidt twice; returns ``(m, P, ρ, use)``.

    ``use`` (a 0-dim bool tensor, no host sync) is False when ``v`` lies in range(U) to
    rounding: the second pass removed more than half of the first residual (which happens only
    when that residual is rounding noise, Kahan–Parlett's 'twice is enough' test) or the
    residual is below ``ε·‖v‖``. Then P is :func:`_complement_vector` and ρ = 0.
    """
    m1 = basis.mT @ vector
    p1 = vector - basis @ m1
    m2 = basis.mT @ p1
    p2 = p1 - basis @ m2
    rho1 = torch.linalg.vector_norm(p1)
    rho2 = torch.linalg.vector_norm(p2)
    eps = torch.finfo(basis.dtype).eps
    use = (rho2 > 0.5 * rho1) & (rho2 > eps * torch.linalg.vector_norm(vector))
    safe = torch.where(use, rho2, torch.ones_like(rho2))
    p = torch.where(use, p2 / safe, _complement_vector(basis))
    rho = torch.where(use, rho2, torch.zeros_like(rho2))
    return m1 + m2, p, rho, use


def _brand_core(values: Tensor, m: Tensor, rho: Tensor, c: float | Tensor) -> Tensor:
    """``C = B diag(λ, c) Bᵀ`` with ``B = [[I, m], [0, ρ]]`` ((τ+1) × (τ+1), symmetric)."""
    tau = values.shape[0]
    core = torch.zeros(tau + 1, tau + 1, dtype=values.dtype, device=values.device)
    cm = c * m
    core[:tau, :tau] = torch.diag(values) + torch.outer(cm, m)
    core[:tau, tau] = rho * cm
    core[tau, :tau] = rho * cm
    core[tau, tau] = c * rho * rho
    return core


def brand_rank_one_update(
    basis: Tensor,
    values: Tensor,
    vector: Tensor,
    coefficient: float | Tensor,
    rank: int,
    *,
    check: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Top-``rank`` eigenpairs of ``U diag(λ) Uᵀ + c v vᵀ`` by Brand's rank-one update.

    For orthonormal U (d × τ), λ ≥ 0 and c ≥ 0 (the PSD case), Brand (2006, Sec. 2–3):

    1. ``m = Uᵀv``, ``p = v − U m``, ``ρ = ‖p‖``, ``P = p/ρ`` (Gram–Schmidt run twice, so that
       P is orthogonal to U to working precision);
    2. ``[U  v] = [U  P] B`` with ``B = [[I, m], [0, ρ]]``;
    3. the (τ+1) × (τ+1) core ``C = B diag(λ, c) Bᵀ``, eigendecomposed ``C = V Λ' Vᵀ``;
    4. ``U' = [U  P] V``, eigenvalues Λ'; keep the ``rank`` largest, in descending order.

    Then ``U' diag(λ') U'ᵀ`` is the best rank-``rank`` approximation of the updated matrix
    (exact when ``rank = τ + 1``), at cost O(dτ² + τ³) and no d × d tensor.

    **v in range(U)** (ρ ≈ 0 to rounding, detected without a host sync): P would be rounding
    noise and U' would lose orthonormality, so instead P is a fixed unit vector orthogonal to U
    — ``e_j`` with j the row of U of smallest norm, projected out of range(U) twice and
    normalised — and ρ = 0, which is exact (``v = U m``). The extra eigenvalue is then 0.
    When τ = d there is no such vector and none is needed: the τ × τ core
    ``diag(λ) + c m mᵀ`` is used. Eigenvalues are clamped at 0 (the exact ones are ≥ 0; eigh
    can return −O(ε‖C‖)). Where eigenvalues tie, the eigenvectors within the tied eigenspace
    are arbitrary, but the product ``U' diag(λ') U'ᵀ`` is not unless a tie straddles the
    truncation index.

    Parameters
    ----------
    basis : Tensor
        ``U``, shape (d, τ), orthonormal columns.
    values : Tensor
        ``λ``, shape (τ,), ≥ 0 (any order).
    vector : Tensor
        ``v``, shape (d,).
    coefficient : float or Tensor
        ``c ≥ 0``, a number or a 0-dimensional tensor (no host sync when ``check=False``).
    rank : int
        Number of eigenpairs kept, ``1 ≤ rank ≤ min(τ + 1, d)``.
    check : bool
        Validate the tensors' values (finiteness, λ ≥ 0, orthonormality; synchronises with the
        device). Shapes and ``rank`` are always checked. Default True.

    Returns
    -------
    basis : Tensor
        ``U'``, shape (d, rank), orthonormal columns.
    values : Tensor
        ``λ'``, shape (rank,), descending, ≥ 0.

    Raises
    ------
    ValueError
        Naming the argument, if a shape, dtype or device does not match, an entry is NaN/Inf,
        λ or c is negative, U is not orthonormal, or ``rank`` is out of range.
    """
    if check:
        basis = _check_basis(basis)
        values = _check_values(values, basis, "values")
        vector = _check_vector(vector, basis, "vector")
    else:
        basis = _check_tensor(basis, "basis", ndim=2)
        if values.shape != (basis.shape[1],):
            raise ValueError(
                f"Invalid values: shape {tuple(values.shape)}; must be ({basis.shape[1]},)"
            )
        if vector.shape != (basis.shape[0],):
            raise ValueError(
                f"Invalid vector: shape {tuple(vector.shape)}; must be ({basis.shape[0]},)"
            )
    c = _check_coefficient(coefficient, check)
    d, tau = basis.shape
    rank = _check_update_rank(rank, tau, d)
    if tau == d:  # range(U) is everything: v = U m exactly, no new direction.
        m = basis.mT @ vector
        core = torch.diag(values) + torch.outer(c * m, m)
        lam, vecs = torch.linalg.eigh(core)
        top = lam.flip(0)[:rank]
        new_basis = basis @ vecs.flip(1)[:, :rank]
        return new_basis, top.clamp_min(0.0)
    m, p, rho, _ = _residual(basis, vector)
    lam, vecs = torch.linalg.eigh(_brand_core(values, m, rho, c))
    lam = lam.flip(0)[:rank]
    vecs = vecs.flip(1)[:, :rank]
    new_basis = basis @ vecs[:tau] + p[:, None] * vecs[tau][None, :]
    return new_basis, lam.clamp_min(0.0)


def ginger_direction(state: DiagPlusLowRank, g: Tensor) -> Tensor:
    r"""Ginger's ``drt``: the preconditioned direction ``G_γ⁻¹ g`` (Ginger eq. 15).

    .. math::  G_\gamma^{-1} g = \gamma^{-1} g - U K_\gamma U^\top g, \qquad
               K_\gamma = \mathrm{diag}\!\Big(\frac{\sigma_i}{\gamma^2 + \gamma\sigma_i}\Big)

    (eqs. 15–16), O(d·τ) per column; the same as ``state.solve(g)``.

    Parameters
    ----------
    state : DiagPlusLowRank
        ``G_γ = γI + U diag(σ) Uᵀ``.
    g : Tensor
        Shape (d,) or (d, k).

    Returns
    -------
    Tensor
        ``G_γ⁻¹ g``, the shape of g.

    Raises
    ------
    ValueError
        If g does not have shape (d,) or (d, k).
    """
    return state.solve(g)


def _shrink_to_sigma(k: Tensor, gamma: float) -> Tensor:
    """Invert ``K = σ/(γ² + γσ)``: ``σ = γ² K / (1 − γK)`` (Ginger eq. 18), guarded.

    Exact K lies in ``[0, 1/γ)`` (eq. 19). K is clamped at 0 and ``1 − γK`` at ε of the dtype,
    so rounding can produce neither a negative nor an infinite σ; the cap is ``σ ≤ γ/ε``
    (≈ 8.4e6·γ in float32, 4.5e15·γ in float64). Because ``1 − γK = γ/(γ + σ)``, σ carries a
    relative error of about ``ε·σ/γ`` whatever the guard; the inverse ``G_γ⁻¹`` it defines
    is accurate to O(ε/γ) all the same.
    """
    eps = torch.finfo(k.dtype).eps
    k = k.clamp_min(0.0)
    return (gamma * gamma) * k / (1.0 - gamma * k).clamp_min(eps)


def ginger_update(
    state: DiagPlusLowRank,
    d_vec: Tensor,
    alpha: float,
    rank: int | None = None,
    *,
    check: bool = True,
) -> DiagPlusLowRank:
    r"""Ginger's ``upd``: fold ``d dᵀ`` into the EMA and truncate (Ginger Alg. 1, eqs. 17–19).

    The model is the EMA ``G_t = α G_{t−1} + (1−α) d dᵀ`` of the undamped
    ``G_{t−1} = U diag(σ) Uᵀ``, damped by γ: ``G_{t,γ} = γI + G_t``. With
    ``h = G_{t−1,γ/α}⁻¹ d`` (same U, σ, damping γ/α: ``γI + αG_{t−1} = α G_{t−1,γ/α}``), the
    Sherman–Morrison formula gives exactly

    .. math::  (\gamma I + \alpha G_{t-1} + (1-\alpha) d d^\top)^{-1}
               = \gamma^{-1} I - \big[U (\alpha^{-1} K_{\gamma/\alpha}) U^\top
               + \beta\, h h^\top\big],
               \qquad \beta = \frac{1 - \alpha}{\alpha\,(\alpha + (1-\alpha)\, h^\top d)}
               = \frac{\alpha^{-1} - 1}{\alpha + (1-\alpha)\, h^\top d},

    with ``α⁻¹K_{γ/α} = diag(ασ/(γ(γ + ασ)))``. **Which β.** This is the algorithm box's
    ``β = (α⁻¹ − 1)/(α + (1−α)hᵀd)``. The paper's eq. 17 prints ``α⁻¹/(α + (1−α)hᵀd)``, which
    lacks the factor (1 − α) that Sherman–Morrison puts in front of ``A⁻¹ d dᵀ A⁻¹`` for the
    update ``(1−α) d dᵀ`` (with ``A⁻¹d = α⁻¹h``: ``(1−α)α⁻²/(1 + (1−α)α⁻¹hᵀd)``). Checked
    against a dense float64 inverse (d = 12, τ = 4, γ = 0.3, α = 0.8): the box's β matches to
    5.7e-16 relative, eq. 17's is off by 1.0 relative (see ``tests/test_lowrank.py``).

    The bracket (PSD, rank ≤ τ + 1) is truncated to its best rank-``rank`` approximation
    ``U' K' U'ᵀ`` by :func:`brand_rank_one_update` (vector h, coefficient β), and converted
    back by eq. 18, ``σ'_i = γ² K'_ii / (1 − γK'_ii)``; eq. 19 (``K' ≺ γ⁻¹I``) makes this
    well defined, and the division is guarded against rounding (K' clamped at 0, ``1 − γK'``
    at ε, so σ' is finite and ≥ 0, at most γ/ε). Without truncation (``rank = τ + 1``, or
    ``σ₀ = 0`` and at most τ updates so far) the new state is exactly ``γI + G_t``. Cost
    O(dτ² + τ³); no host sync when ``check=False``.

    Parameters
    ----------
    state : DiagPlusLowRank
        ``G_{t−1,γ} = γI + U diag(σ) Uᵀ``.
    d_vec : Tensor
        ``d_t``, shape (d,), same dtype and device as U.
    alpha : float
        The EMA decay α ∈ (0, 1).
    rank : int, optional
        τ of the new state, ``1 ≤ rank ≤ min(τ + 1, d)``; default the state's τ.
    check : bool
        Validate ``d_vec``'s finiteness (synchronises). Shapes, α, rank always. Default True.

    Returns
    -------
    DiagPlusLowRank
        ``G_{t,γ} = γI + U' diag(σ') U'ᵀ``, σ' descending, same γ.

    Raises
    ------
    ValueError
        If α ∉ (0, 1), ``d_vec`` is not of shape (d,) (or has NaN/Inf entries, or another
        dtype/device), or ``rank`` is out of range.
    """
    a = _check_alpha(alpha)
    u = state.basis
    if check:
        d_vec = _check_vector(d_vec, u, "d_vec")
    elif d_vec.shape != (state.dim,):
        raise ValueError(f"Invalid d_vec: shape {tuple(d_vec.shape)}; must be ({state.dim},)")
    new_rank = state.rank if rank is None else rank
    new_rank = _check_update_rank(new_rank, state.rank, state.dim)
    gamma = state.gamma
    shifted = DiagPlusLowRank(gamma / a, u, state.sigma)
    h = shifted.solve(d_vec)
    beta = (1.0 - a) / (a * (a + (1.0 - a) * (h @ d_vec)))
    bracket_values = _woodbury_shrink(a * state.sigma, gamma)  # α⁻¹ K_{γ/α}
    new_u, new_k = brand_rank_one_update(u, bracket_values, h, beta, new_rank, check=False)
    return DiagPlusLowRank(gamma, new_u, _shrink_to_sigma(new_k, gamma))
