r"""Per-parameter update transforms (optax-style parts: ``init`` and ``update``), and ``chain``.

A transform maps a direction ``d`` (the possibly preconditioned gradient) to a new direction,
keeping its state in the optimizer's ``state[p]`` under ``"<name>.<field>"`` keys, so that
``state_dict`` round-trips. The optimizer shell then applies ``θ ← θ − lr·d``. Hyperparameters
left as None are read from the parameter's group at every step, so per-group values and
schedulers work as in ``torch.optim``.

Weight decay placement is the order of the chain:

* coupled (the paper's code, ``torch.optim.SGD``): ``chain(add_weight_decay(), trace_momentum())``
  — ``d = Pg + wd·θ`` enters the momentum;
* decoupled: ``chain(trace_momentum(), add_weight_decay())`` — ``θ ← θ − lr(buf + wd·θ)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

__all__ = ["Transform", "add_weight_decay", "chain", "trace_first_moment", "trace_momentum"]


class Transform(ABC):
    """An update part: ``init(param) → state``, ``update(d, state, param, group) → d'``."""

    name: str = "transform"

    def init(self, param: Tensor) -> dict[str, Tensor]:
        """Return the initial state for ``param`` (default: none)."""
        return {}

    @abstractmethod
    def update(
        self, direction: Tensor, state: dict[str, Tensor], param: Tensor, group: dict[str, Any]
    ) -> Tensor:
        """Return the new direction; may update ``state`` in place.

        A part never writes into the ``direction`` it receives (it may be a ``.grad`` or another
        part's state), so parts can hand their state tensors on without copying.
        """

    def update_many(
        self,
        directions: list[Tensor],
        states: list[dict[str, Tensor]],
        params: list[Tensor],
        group: dict[str, Any],
    ) -> list[Tensor]:
        """:meth:`update` for several parameters of one group (same device and dtype).

        The default loops over :meth:`update`; parts override it with ``torch._foreach_*``
        kernels (one launch for all parameters, as ``torch.optim.SGD(foreach=True)``), which
        compute the same numbers element by element.
        """
        return [
            self.update(d, s, p, group) for d, s, p in zip(directions, states, params, strict=True)
        ]


def _hyper(value: float | None, group: dict[str, Any], key: str) -> float:
    return float(group[key] if value is None else value)


class _AddWeightDecay(Transform):
    name = "weight_decay"

    def __init__(self, weight_decay: float | None) -> None:
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"Invalid weight_decay: {weight_decay!r}. Must be >= 0.")
        self.weight_decay = weight_decay

    def update(
        self, direction: Tensor, state: dict[str, Tensor], param: Tensor, group: dict[str, Any]
    ) -> Tensor:
        wd = _hyper(self.weight_decay, group, "weight_decay")
        return direction.add(param, alpha=wd) if wd != 0 else direction

    def update_many(
        self,
        directions: list[Tensor],
        states: list[dict[str, Tensor]],
        params: list[Tensor],
        group: dict[str, Any],
    ) -> list[Tensor]:
        wd = _hyper(self.weight_decay, group, "weight_decay")
        return list(torch._foreach_add(directions, params, alpha=wd)) if wd != 0 else directions


def add_weight_decay(weight_decay: float | None = None) -> Transform:
    r"""``d ← d + wd·θ`` (L2 term; its place in the chain makes it coupled or decoupled).

    Parameters
    ----------
    weight_decay : float, optional
        wd ≥ 0; None reads ``group["weight_decay"]`` at every step.

    Returns
    -------
    Transform
        The part.

    Raises
    ------
    ValueError
        If ``weight_decay < 0``.
    """
    return _AddWeightDecay(weight_decay)


class _TraceMomentum(Transform):
    name = "momentum"

    def __init__(self, momentum: float | None, nesterov: bool | None) -> None:
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum!r}. Must be in [0, 1).")
        self.momentum = momentum
        self.nesterov = nesterov

    def init(self, param: Tensor) -> dict[str, Tensor]:
        return {"buf": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def update(
        self, direction: Tensor, state: dict[str, Tensor], param: Tensor, group: dict[str, Any]
    ) -> Tensor:
        mu = _hyper(self.momentum, group, "momentum")
        nesterov = bool(group.get("nesterov", False) if self.nesterov is None else self.nesterov)
        if mu == 0.0:
            return direction
        buf = state["buf"]
        buf.mul_(mu).add_(direction)
        return direction.add(buf, alpha=mu) if nesterov else buf.clone()

    def update_many(
        self,
        directions: list[Tensor],
        states: list[dict[str, Tensor]],
        params: list[Tensor],
        group: dict[str, Any],
    ) -> list[Tensor]:
        mu = _hyper(self.momentum, group, "momentum")
        nesterov = bool(group.get("nesterov", False) if self.nesterov is None else self.nesterov)
        if mu == 0.0:
            return directions
        bufs = [s["buf"] for s in states]
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, directions)
        # The buffers themselves are handed on: no part writes into its input direction.
        return list(torch._foreach_add(directions, bufs, alpha=mu)) if nesterov else bufs


def trace_momentum(momentum: float | None = None, nesterov: bool | None = None) -> Transform:
    r"""Heavy-ball momentum ``buf ← μ·buf + d`` (buf₀ = 0), then ``d ← buf``.

    With Nesterov ``d ← d + μ·buf``. Exactly ``torch.optim.SGD`` (dampening 0) and the NysAct
    authors' ``momentum_step`` / ``nag_step``.

    Parameters
    ----------
    momentum : float, optional
        μ ∈ [0, 1); None reads ``group["momentum"]``.
    nesterov : bool, optional
        None reads ``group["nesterov"]`` (default False).

    Returns
    -------
    Transform
        The part.

    Raises
    ------
    ValueError
        If μ ∉ [0, 1).
    """
    return _TraceMomentum(momentum, nesterov)


class _TraceFirstMoment(Transform):
    name = "first_moment"

    def __init__(self, beta: float | None, key: str = "betas") -> None:
        if beta is not None and not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta1: {beta!r}. Must be in [0, 1).")
        self.beta = beta
        self.key = key

    def init(self, param: Tensor) -> dict[str, Tensor]:
        return {
            "m": torch.zeros_like(param, memory_format=torch.preserve_format),
            "weight": torch.zeros((), dtype=param.dtype, device=param.device),
        }

    def update(
        self, direction: Tensor, state: dict[str, Tensor], param: Tensor, group: dict[str, Any]
    ) -> Tensor:
        beta = self._beta(group)
        state["m"].mul_(beta).add_(direction, alpha=1.0 - beta)
        state["weight"].mul_(beta).add_(1.0 - beta)
        return state["m"] / state["weight"]

    def update_many(
        self,
        directions: list[Tensor],
        states: list[dict[str, Tensor]],
        params: list[Tensor],
        group: dict[str, Any],
    ) -> list[Tensor]:
        beta = self._beta(group)
        ms = [s["m"] for s in states]
        weights = [s["weight"] for s in states]
        torch._foreach_mul_(ms, beta)
        torch._foreach_add_(ms, directions, alpha=1.0 - beta)
        torch._foreach_mul_(weights, beta)
        torch._foreach_add_(weights, 1.0 - beta)
        return list(torch._foreach_div(ms, weights))

    def _beta(self, group: dict[str, Any]) -> float:
        if self.beta is not None:
            return self.beta
        value = group[self.key]
        return float(value[0] if self.key == "betas" else value)


def trace_first_moment(beta: float | None = None, *, key: str = "betas") -> Transform:
    r"""Adam's bias-corrected first moment: ``m ← β₁m + (1−β₁)d``, then ``d ← m / (1 − β₁ᵗ)``.

    The correction ``1 − β₁ᵗ`` is kept as the weight ``w ← β₁w + (1−β₁)`` (w₀ = 0), which equals
    it for a constant β₁ and stays exact if β₁ is changed between steps (Kingma & Ba 2015,
    Alg. 1; AdaHessian, Yao et al. 2021, Alg. 1, uses the same moment).

    Parameters
    ----------
    beta : float, optional
        β₁ ∈ [0, 1); None reads it from the param group at every step.
    key : str
        The group entry holding β₁ when ``beta`` is None: ``"betas"`` (default, its first
        element, as ``torch.optim.Adam``) or a scalar entry such as the composer's
        ``"momentum"`` (AdaAct).

    Returns
    -------
    Transform
        The part (state ``m`` and ``weight``).

    Raises
    ------
    ValueError
        If β₁ ∉ [0, 1).
    """
    return _TraceFirstMoment(beta, key)


class _Chain(Transform):
    name = "chain"

    def __init__(self, parts: tuple[Transform, ...]) -> None:
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"chain parts need distinct names, got {names}")
        self.parts = parts

    def init(self, param: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for p in self.parts:
            out.update({f"{p.name}.{k}": v for k, v in p.init(param).items()})
        return out

    def update(
        self, direction: Tensor, state: dict[str, Tensor], param: Tensor, group: dict[str, Any]
    ) -> Tensor:
        for p in self.parts:
            prefix = f"{p.name}."
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            direction = p.update(direction, sub, param, group)
            for k, v in sub.items():
                state[prefix + k] = v
        return direction

    def update_many(
        self,
        directions: list[Tensor],
        states: list[dict[str, Tensor]],
        params: list[Tensor],
        group: dict[str, Any],
    ) -> list[Tensor]:
        for p in self.parts:
            prefix = f"{p.name}."
            subs = [
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                for state in states
            ]
            directions = p.update_many(directions, subs, params, group)
            for state, sub in zip(states, subs, strict=True):
                for k, v in sub.items():
                    state[prefix + k] = v
        return directions


def chain(*transforms: Transform) -> Transform:
    """Apply transforms in order (optax ``chain``); their states are keyed by their names.

    Parameters
    ----------
    *transforms : Transform
        The parts, applied left to right.

    Returns
    -------
    Transform
        The composite.

    Raises
    ------
    ValueError
        If two parts share a name.
    """
    return _Chain(tuple(transforms))
