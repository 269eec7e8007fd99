r"""Curvature estimators: what statistic of a layer's activations (or output gradients) is kept.

An *estimator* is a small validated config; :meth:`Estimator.make_state` gives the per-layer,
per-side state that owns the EMA. Every statistic is an EMA with decay β and bias correction by
the number of EMA updates (``Ĉ = C / (1 − Πβ)``, NysAct paper Alg. 1 lines 8–10):

* :class:`FullCovariance` — ``A = E[a aᵀ]`` (FOOF; KFAC's two factors), O(p²) per layer;
* :class:`SketchedCovariance` — the sketch ``AΩ`` only (NysAct), O(p·r), with the refresh
  policy of :class:`nysact.sketch.StreamingSketch`; layers with p ≤ r keep the full covariance
  (the exact dense path) unless ``dense_when_small=False``;
* :class:`MeanVector` — ``ā = E[a]`` (Eva; MAC), with MAC's attention-weighted mean for the
  V rows of a fused q/k/v projection (``attention=True``, see :mod:`nysact.curvature.attention`);
* :class:`SecondMomentVector` — ``E[a_j²]`` per input coordinate (AdaAct), O(p);
* :class:`KroneckerGradientFactors` — ``L = E[ĜĜᵀ]``, ``R = E[ĜᵀĜ]`` of the layer's gradient
  matrix itself (Shampoo): the ``"gradient_matrix"`` side, read at ``step()``, no hook;
* :class:`ByLayer` — a different estimator for some layers (MAC's exact first layer).

The states' ``batch_statistic`` computes one batch's statistic (called from the hooks of
:mod:`nysact.curvature.capture`); ``accumulate`` folds an (already averaged, possibly
all-reduced) statistic into the EMA.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from nysact.curvature import rows
from nysact.curvature.attention import attention_weighted_mean, fused_qkv_of, key_attention_weights
from nysact.curvature.layers import LayerSpec
from nysact.sketch import RefreshPolicy, SketchFamily, StreamingSketch, TestMatrix

__all__ = [
    "ByLayer",
    "Covariance",
    "Estimator",
    "EstimatorState",
    "FullCovariance",
    "KroneckerFactors",
    "KroneckerGradientFactors",
    "Mean",
    "MeanVector",
    "SecondMoment",
    "SecondMomentVector",
    "Side",
    "Sketch",
    "SketchedCovariance",
    "Statistic",
]

#: A layer's side: its inputs (``"activation"``) or its output gradients (``"gradient"``).
#: ``"gradient_matrix"``: the layer's parameter gradient ``Ĝ = [∇W | ∇b]`` (Shampoo), read at
#: ``step()`` rather than by a hook.
Side = Literal["activation", "gradient", "gradient_matrix"]


@dataclass(frozen=True)
class Covariance:
    """A bias-corrected covariance, shape (g, q, q).

    Attributes
    ----------
    matrix : Tensor
        ``Ĉ = C / (1 − Πβ)``, one q × q block per group.
    """

    matrix: Tensor


@dataclass(frozen=True)
class Sketch:
    """A bias-corrected sketch ``AΩ`` (g, q, r) and its dense test matrix Ω (q, r).

    Attributes
    ----------
    sketch : Tensor
        ``Ĉ = AΩ``, shape (g, q, r).
    test_matrix : Tensor
        Ω, shape (q, r), shared by the groups.
    """

    sketch: Tensor
    test_matrix: Tensor


@dataclass(frozen=True)
class Mean:
    """A bias-corrected mean vector, shape (g, q).

    Attributes
    ----------
    vector : Tensor
        ``ā = E[a]``, one per group.
    attention : Tensor or None
        For a fused q/k/v Linear kept by ``MeanVector(attention=True)``: the attention-weighted
        mean ``v = Σ_n π_n ā_n`` (g, q) of MAC's V rows (see :mod:`nysact.curvature.attention`);
        None otherwise.
    """

    vector: Tensor
    attention: Tensor | None = None


@dataclass(frozen=True)
class SecondMoment:
    """Bias-corrected second moments of the input coordinates, shape (g, q).

    Attributes
    ----------
    vector : Tensor
        ``E[a_j²]`` (uncentred; the bias coordinate is 1), one vector per group.
    """

    vector: Tensor


@dataclass(frozen=True)
class KroneckerFactors:
    """Bias-corrected Kronecker factors of the gradient matrix (Shampoo).

    Attributes
    ----------
    left : Tensor
        ``L = E[ĜĜᵀ]``, shape (g, m, m), m = d_out/g.
    right : Tensor
        ``R = E[ĜᵀĜ]``, shape (g, p, p).
    """

    left: Tensor
    right: Tensor


#: What :meth:`EstimatorState.value` returns: one of the bias-corrected statistics.
Statistic = Covariance | Sketch | Mean | SecondMoment | KroneckerFactors


def _side_dim(spec: LayerSpec, side: Side) -> int:
    return spec.dim if side == "activation" else spec.out_dim


def _output_rows(spec: LayerSpec, grad_out: Tensor) -> Tensor:
    if spec.kind == "linear":
        return rows.linear_output_rows(grad_out)[None]
    assert spec.geometry is not None
    return rows.conv2d_output_rows(grad_out, spec.geometry)


def _check_decay(decay: float) -> float:
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"Invalid ema_decay: {decay!r}. Must be in [0, 1).")
    return decay


class EstimatorState(ABC):
    """Per-layer, per-side EMA of one statistic.

    Parameters
    ----------
    spec : LayerSpec
        The layer.
    side : {"activation", "gradient"}
        Which side of the layer the statistic summarises.
    """

    def __init__(self, spec: LayerSpec, side: Side) -> None:
        self.spec = spec
        self.side = side
        self.updates = 0  # EMA updates since the last restart

    @abstractmethod
    def batch_statistic(self, tensor: Tensor) -> Tensor:
        """Return the statistic of one batch (input, or output gradient, of the layer)."""

    def forward_statistic(self, inputs: Tensor, output: Tensor) -> Tensor:
        """Return the statistic of one forward pass from the layer's input and output.

        Called by the forward hook; the default uses the input only (:meth:`batch_statistic`).
        States that also need the output (MAC's fused q/k/v) override it.

        Parameters
        ----------
        inputs : Tensor
            The layer input (detached, float32 or wider).
        output : Tensor
            The layer output (detached, any dtype).

        Returns
        -------
        Tensor
            The statistic.
        """
        return self.batch_statistic(inputs)

    @abstractmethod
    def accumulate(self, statistic: Tensor, ema_decay: float) -> None:
        """EMA step with one step's (averaged) batch statistic."""

    #: Whether :meth:`accumulate_many` batches the class's updates (then the states' updates
    #: do not depend on their order; states that draw random numbers keep layer order).
    batched_accumulate = False

    @classmethod
    def accumulate_many(
        cls, states: list[EstimatorState], statistics: list[Tensor], ema_decay: float
    ) -> None:
        """:meth:`accumulate` for several states of this class with one β (default: a loop).

        Parameters
        ----------
        states : list of EstimatorState
            States of this class (the caller groups them by class and decay).
        statistics : list of Tensor
            Each state's batch statistic for this step, in the order of ``states``.
        ema_decay : float
            The EMA decay β ∈ [0, 1).

        Raises
        ------
        ValueError
            If β is outside [0, 1) or the lengths differ.
        """
        for state, stat in zip(states, statistics, strict=True):
            state.accumulate(stat, ema_decay)

    @abstractmethod
    def value(self) -> Statistic:
        """Return the bias-corrected statistic (only after at least one update)."""

    @abstractmethod
    def to(self, device: torch.device) -> None:
        """Move the state's tensors to ``device``."""

    def start_window(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Hook called right after an inverse refresh (used by sketches)."""

    def end_step(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Hook called when a statistics step ends (committed or dropped)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """All tensors and counters needed to resume bit-identically."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class _EMAState(EstimatorState):
    """EMA buffer with weight ``w = 1 − Πβ`` (shared by the covariance and mean states)."""

    batched_accumulate = True

    def __init__(
        self,
        spec: LayerSpec,
        side: Side,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__(spec, side)
        self.ema = torch.zeros(shape, dtype=dtype, device=device)
        self.weight = 0.0

    def accumulate(self, statistic: Tensor, ema_decay: float) -> None:
        """``C ← βC + (1−β)S``, ``w ← βw + (1−β)`` (in place)."""
        beta = _check_decay(ema_decay)
        self.ema.mul_(beta).add_(statistic.to(self.ema.dtype), alpha=1.0 - beta)
        self.weight = beta * self.weight + (1.0 - beta)
        self.updates += 1

    @classmethod
    def accumulate_many(
        cls, states: list[EstimatorState], statistics: list[Tensor], ema_decay: float
    ) -> None:
        """The same EMA steps as :meth:`accumulate`, with two foreach kernels per (device, dtype).

        ``C ← βC + (1−β)S`` and ``w ← βw + (1−β)`` for every state; the buffers are bucketed
        by device and dtype so each bucket is one ``_foreach_mul_`` and one ``_foreach_add_``
        (the same numbers as the loop: each element sees the same two roundings).

        Parameters
        ----------
        states : list of EstimatorState
            :class:`_EMAState` instances.
        statistics : list of Tensor
            Each state's batch statistic S (cast to the EMA's dtype).
        ema_decay : float
            β ∈ [0, 1).

        Raises
        ------
        ValueError
            If β is outside [0, 1) or the lengths differ.
        """
        beta = _check_decay(ema_decay)
        buckets: dict[tuple[torch.device, torch.dtype], list[tuple[_EMAState, Tensor]]] = {}
        for state, stat in zip(states, statistics, strict=True):
            assert isinstance(state, _EMAState)
            buckets.setdefault((state.ema.device, state.ema.dtype), []).append((state, stat))
        for (_, dtype), items in buckets.items():
            emas = [st.ema for st, _ in items]
            torch._foreach_mul_(emas, beta)
            torch._foreach_add_(emas, [t.to(dtype) for _, t in items], alpha=1.0 - beta)
            for st, _ in items:
                st.weight = beta * st.weight + (1.0 - beta)
                st.updates += 1

    def to(self, device: torch.device) -> None:
        """Move the EMA to ``device``."""
        self.ema = self.ema.to(device)

    def state_dict(self) -> dict[str, Any]:
        """EMA, weight and update count."""
        return {"ema": self.ema.clone(), "weight": self.weight, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the EMA, weight and count (shape must match)."""
        if tuple(state["ema"].shape) != tuple(self.ema.shape):
            raise ValueError(
                f"layer {self.spec.name!r} ({self.side}): saved statistic has shape "
                f"{tuple(state['ema'].shape)}, expected {tuple(self.ema.shape)}"
            )
        self.ema.copy_(state["ema"])
        self.weight = float(state["weight"])
        self.updates = int(state["updates"])


class _CovarianceState(_EMAState):
    def batch_statistic(self, tensor: Tensor) -> Tensor:
        spec = self.spec
        if self.side == "activation":
            if spec.kind == "linear":
                return rows.linear_covariance(tensor, bias=spec.bias is not None)[None]
            assert spec.geometry is not None
            return rows.conv2d_covariance(tensor, spec.geometry)
        r = _output_rows(spec, tensor)
        return r.mT @ r / r.shape[-2]

    def value(self) -> Covariance:
        return Covariance(self.ema / self.weight)


class _MeanState(_EMAState):
    def batch_statistic(self, tensor: Tensor) -> Tensor:
        spec = self.spec
        if self.side == "activation":
            if spec.kind == "linear":
                return rows.linear_mean(tensor, bias=spec.bias is not None)[None]
            assert spec.geometry is not None
            return rows.conv2d_mean(tensor, spec.geometry)
        return _output_rows(spec, tensor).mean(dim=-2)

    def value(self) -> Mean:
        return Mean(self.ema / self.weight)


class _SketchState(EstimatorState):
    def __init__(self, spec: LayerSpec, side: Side, stream: StreamingSketch) -> None:
        super().__init__(spec, side)
        self.stream = stream
        self._omega: TestMatrix | None = None  # Ω of the statistics step in progress

    def _step_omega(self) -> TestMatrix:
        if self._omega is None:
            self._omega = self.stream.begin_update()
        return self._omega

    def batch_statistic(self, tensor: Tensor) -> Tensor:
        spec, omega = self.spec, self._step_omega()
        if self.side == "activation":
            if spec.kind == "linear":
                return rows.linear_sketch(tensor, omega, bias=spec.bias is not None)[None]
            assert spec.geometry is not None
            return rows.conv2d_sketch(tensor, spec.geometry, omega)
        r = _output_rows(spec, tensor)
        return r.mT @ omega.right_multiply(r) / r.shape[-2]

    def accumulate(self, statistic: Tensor, ema_decay: float) -> None:
        self.stream.accumulate(statistic, _check_decay(ema_decay))
        self.updates = self.stream.updates

    def end_step(self) -> None:
        self._omega = None

    def value(self) -> Sketch:
        y, omega = self.stream.estimate()
        return Sketch(y, omega)

    def to(self, device: torch.device) -> None:
        self.stream.to(device)

    def start_window(self) -> None:
        self.stream.start_window()
        self.updates = self.stream.updates

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)
        self.updates = self.stream.updates


class Estimator(ABC):
    """Config of how one side of a layer is summarised (see the module docstring)."""

    @abstractmethod
    def make_state(
        self,
        spec: LayerSpec,
        side: Side,
        *,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator,
    ) -> EstimatorState:
        """Create the per-layer state for ``side`` of ``spec``."""


@dataclass(frozen=True)
class FullCovariance(Estimator):
    r"""EMA of the full covariance ``A = XᵀX/n`` (FOOF; KFAC's A and G factors).

    O(q²) memory per layer and side; the inverse costs O(q³) (Table I of the NysAct paper).
    """

    def make_state(
        self,
        spec: LayerSpec,
        side: Side,
        *,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator,
    ) -> EstimatorState:
        """Create a (g, q, q) EMA, zero-initialised."""
        q = _side_dim(spec, side)
        return _CovarianceState(spec, side, (spec.groups, q, q), dtype, device)


@dataclass(frozen=True)
class MeanVector(Estimator):
    r"""EMA of the mean ``ā = Xᵀ1/n`` (Eva's and MAC's rank-one statistic), O(q) memory.

    Parameters
    ----------
    attention : bool
        For a Linear marked with :func:`nysact.curvature.mark_fused_qkv`, also keep the EMA of
        MAC's attention-weighted mean ``v = Σ_n π_n ā_n`` of the V rows (its ``Mean.attention``),
        computed in the forward hook from the layer's own output. Default False.
    """

    attention: bool = False

    def make_state(
        self,
        spec: LayerSpec,
        side: Side,
        *,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator,
    ) -> EstimatorState:
        """Create a (g, q) EMA, zero-initialised ((1, 2, q) for a marked q/k/v layer)."""
        q = _side_dim(spec, side)
        if self.attention and side == "activation" and fused_qkv_of(spec.module) is not None:
            return _AttentionMeanState(spec, side, (1, 2, q), dtype, device)
        return _MeanState(spec, side, (spec.groups, q), dtype, device)


@dataclass(frozen=True)
class SketchedCovariance(Estimator):
    r"""EMA of the sketch ``AΩ`` of the covariance (NysAct), O(q·r) memory.

    Parameters
    ----------
    family : SketchFamily
        The test matrices (:class:`nysact.sketch.Subcolumn` for NysAct-S,
        :class:`nysact.sketch.Gaussian` for NysAct-G) and the rank r.
    policy : RefreshPolicy or str
        ``"window"`` (default: Ω fixed between inverse refreshes, EMA restarted with each new
        Ω — consistent), ``"every_update"`` (the authors' code: Ω redrawn at every statistics
        update, EMA mixing sketches of different Ω) or ``"fixed"``.
    dense_when_small : bool
        Layers with q ≤ r keep the exact full covariance (default True). Turn off to force the
        sketch path everywhere (used by the NysAct ≡ FOOF equivalence at r = q).
    """

    family: SketchFamily
    policy: RefreshPolicy | str = RefreshPolicy.WINDOW
    dense_when_small: bool = True
    _policy: RefreshPolicy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.family, SketchFamily):
            raise ValueError(f"Invalid family: {self.family!r}. Must be a SketchFamily.")
        try:
            object.__setattr__(self, "_policy", RefreshPolicy(self.policy))
        except ValueError:
            valid = [p.value for p in RefreshPolicy]
            raise ValueError(f"Invalid policy: {self.policy!r}. Must be one of {valid}.") from None

    def make_state(
        self,
        spec: LayerSpec,
        side: Side,
        *,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator,
    ) -> EstimatorState:
        """Create a :class:`StreamingSketch` state, or a full covariance when q ≤ r."""
        q = _side_dim(spec, side)
        if self.dense_when_small and q <= self.family.rank:
            return FullCovariance().make_state(
                spec, side, dtype=dtype, device=device, generator=generator
            )
        stream = StreamingSketch(
            self.family,
            q,
            policy=self._policy,
            generator=generator,
            dtype=dtype,
            device=device,
            batch_shape=(spec.groups,),
        )
        return _SketchState(spec, side, stream)


# --------------------------------------------------------------------------------------------
# MAC's V path, AdaAct's second moments, Shampoo's gradient factors, per-layer choice
# --------------------------------------------------------------------------------------------


class _AttentionMeanState(_EMAState):
    """EMA of ``[ā; v]`` (1, 2, q) for a fused q/k/v Linear (see nysact.curvature.attention)."""

    def batch_statistic(self, tensor: Tensor) -> Tensor:
        raise TypeError(
            f"layer {self.spec.name!r}: the attention-weighted mean needs the layer output "
            "(forward_statistic)"
        )

    def forward_statistic(self, inputs: Tensor, output: Tensor) -> Tensor:
        """``[ā; v]`` from the input (B, N, d) and the fused output (B, N, 3D)."""
        mark = fused_qkv_of(self.spec.module)
        assert mark is not None
        if inputs.ndim != 3:
            raise ValueError(
                f"layer {self.spec.name!r} is marked as a fused q/k/v projection but its input "
                f"has shape {tuple(inputs.shape)}, not (B, N, d)"
            )
        bias = self.spec.bias is not None
        pi = key_attention_weights(
            output.to(inputs.dtype),
            mark.num_heads,
            scale=mark.scale,
            probabilities=mark.probabilities,
        )
        v = attention_weighted_mean(inputs, pi, bias=bias)
        mean = rows.linear_mean(inputs, bias=bias)
        return torch.stack([mean, v])[None]

    def value(self) -> Mean:
        est = self.ema / self.weight
        return Mean(est[:, 0], est[:, 1])


class _SecondMomentState(_EMAState):
    def batch_statistic(self, tensor: Tensor) -> Tensor:
        spec = self.spec
        if spec.kind == "linear":
            return rows.linear_square_mean(tensor, bias=spec.bias is not None)[None]
        assert spec.geometry is not None
        return rows.conv2d_square_mean(tensor, spec.geometry)

    def value(self) -> SecondMoment:
        return SecondMoment(self.ema / self.weight)


class _KroneckerFactorsState(_EMAState):
    """EMA of ``[vec(ĜĜᵀ) | vec(ĜᵀĜ)]`` per group, one flat (g, m² + p²) buffer."""

    def batch_statistic(self, tensor: Tensor) -> Tensor:
        left = tensor @ tensor.mT
        right = tensor.mT @ tensor
        return torch.cat([left.flatten(1), right.flatten(1)], dim=1)

    def value(self) -> KroneckerFactors:
        m, p, est = self.spec.out_dim, self.spec.dim, self.ema / self.weight
        g = est.shape[0]
        return KroneckerFactors(est[:, : m * m].reshape(g, m, m), est[:, m * m :].reshape(g, p, p))


@dataclass(frozen=True)
class SecondMomentVector(Estimator):
    r"""EMA of the input coordinates' second moments ``s_j = E[a_j²]`` (AdaAct), O(q) memory.

    ``s = 1ᵀ(X ⊙ X)/n`` over the rows X of the layer (uncentred, bias coordinate 1; AdaAct's
    "activation variance", Seung et al. 2024); a conv's is the weight gradient of a one-filter
    convolution of the squared input (:func:`nysact.curvature.rows.conv2d_square_mean`, no
    unfold). Activation side only.
    """

    def make_state(
        self,
        spec: LayerSpec,
        side: Side,
        *,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator,
    ) -> EstimatorState:
        """Create a (g, q) EMA, zero-initialised.

        Raises
        ------
        ValueError
            If ``side`` is not ``"activation"``.
        """
        if side != "activation":
            raise ValueError(f"SecondMomentVector is an activation statistic, not {side!r}")
        return _SecondMomentState(spec, side, (spec.groups, spec.dim), dtype, device)


@dataclass(frozen=True)
class KroneckerGradientFactors(Estimator):
    r"""EMA of Shampoo's factors ``L = ĜĜᵀ`` and ``R = ĜᵀĜ`` of the gradient matrix.

    Ĝ = [∇W | ∇b] (d_out/g × p per group) is the layer's own (mini-batch) gradient, read when
    ``step()`` runs (Gupta et al. 2018, Alg. 1 lines 4–5, with an EMA and bias correction in
    place of the sums, as Distributed Shampoo's ``beta2 < 1``). Use it as the
    ``gradient_matrix`` side of :class:`nysact.curvature.Curvature`. O(m² + p²) memory.
    """

    def make_state(
        self,
        spec: LayerSpec,
        side: Side,
        *,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator,
    ) -> EstimatorState:
        """Create a (g, m² + p²) EMA, zero-initialised.

        Raises
        ------
        ValueError
            If ``side`` is not ``"gradient_matrix"``.
        """
        if side != "gradient_matrix":
            raise ValueError(
                f"KroneckerGradientFactors summarises the gradient matrix, not the {side!r} side"
            )
        size = spec.out_dim**2 + spec.dim**2
        return _KroneckerFactorsState(spec, side, (spec.groups, size), dtype, device)


@dataclass(frozen=True)
class ByLayer(Estimator):
    r"""A different estimator for the layers named in ``overrides`` (MAC's exact first layer).

    Parameters
    ----------
    default : Estimator
        The estimator of every other layer.
    overrides : mapping of str to Estimator
        Qualified layer name (as in ``model.named_modules()``) → its estimator.

    Raises
    ------
    ValueError
        If ``default`` or an override is not an :class:`Estimator`.
    """

    default: Estimator
    overrides: tuple[tuple[str, Estimator], ...] | dict[str, Estimator] = ()

    def __post_init__(self) -> None:
        items = tuple(dict(self.overrides).items())
        if not isinstance(self.default, Estimator):
            raise ValueError(f"Invalid default estimator: {self.default!r}")
        for name, est in items:
            if not isinstance(est, Estimator):
                raise ValueError(f"Invalid estimator for layer {name!r}: {est!r}")
        object.__setattr__(self, "overrides", items)

    def make_state(
        self,
        spec: LayerSpec,
        side: Side,
        *,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator,
    ) -> EstimatorState:
        """Create the state of the estimator chosen for ``spec.name``."""
        est = dict(self.overrides).get(spec.name, self.default)
        return est.make_state(spec, side, dtype=dtype, device=device, generator=generator)
