r"""The composer: a ``torch.optim.Optimizer`` built from parts.

::

    opt = compose(
        model, lr=0.1,
        curvature=Curvature(activation=SketchedCovariance(Gaussian(10))),
        solver=ActivationInverse(nystrom="tropp"),
        update=chain(add_weight_decay(), trace_momentum(nesterov=True)),
        damping=1.0, ema_decay=0.95, cov_every=5, inv_every=50,
        momentum=0.9, weight_decay=5e-4,
    )

The optimizer keeps ``lr``, ``damping``, ``ema_decay``, ``momentum``, ``weight_decay`` and
``nesterov`` in its param groups (so schedulers and per-group settings work); a layer's damping
and EMA decay are those of the group holding its weight (they apply to the whole [W | b]
block, whatever group the bias is in). Each step: the :class:`GradientPreconditioner`
rewrites the layers' ``.grad``; then, for every parameter, ``d = update(grad)`` and
``θ ← θ − lr·d``. Parameters of unsupported layers get the same update without
preconditioning.

Two optional parts change that order for methods that need it:

* ``pre_update`` — a transform run on the preconditioned layers' gradients *before* the
  operator (once the step is known to go ahead): AdaAct preconditions its gradient momentum
  ``m̂``, not the gradient, so its EMA momentum is a ``pre_update``;
* ``fallback`` — the update of the parameters outside the preconditioned layers (default:
  ``update``); AdaAct's norms get plain SGD (``add_weight_decay()`` only), as the authors' code.

``start_preconditioning_step`` (Distributed Shampoo's name) leaves the gradients unchanged
before that step.

Non-finite input: on a statistics step the engine checks the captured statistics (one host
sync, every ``cov_every`` steps); NaN/Inf there skips the whole step — statistics, EMAs,
parameters and momentum stay as they were — with a ``RuntimeWarning``. Other steps are not
checked (as ``torch.optim.SGD``; use a ``GradScaler`` for AMP, which skips ``step()`` on
overflow and whose captured statistics are then dropped at the next ``zero_grad()``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from nysact.curvature.capture import Curvature
from nysact.optim.distributed import DistributedConfig
from nysact.optim.preconditioner import GradientPreconditioner, _unwrap
from nysact.optim.solvers import Solver
from nysact.optim.transforms import Transform, add_weight_decay, chain, trace_momentum

__all__ = ["ComposedOptimizer", "compose"]


def _check_group(group: dict[str, Any]) -> None:
    """Validate a param group's hyperparameters (ValueError naming the bad one)."""
    if "lr" in group:
        _check_lr(group["lr"])
    d = group.get("damping", 1.0)
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0:
        raise ValueError(f"Invalid damping: {d!r}. Must be a finite number > 0.")
    b = group.get("ema_decay", 0.0)
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 <= b < 1.0:
        raise ValueError(f"Invalid ema_decay: {b!r}. Must be in [0, 1).")
    m = group.get("momentum", 0.0)
    if not isinstance(m, (int, float)) or not 0.0 <= m < 1.0:
        raise ValueError(f"Invalid momentum: {m!r}. Must be in [0, 1).")
    wd = group.get("weight_decay", 0.0)
    if not isinstance(wd, (int, float)) or wd < 0:
        raise ValueError(f"Invalid weight_decay: {wd!r}. Must be >= 0.")


def _check_lr(lr: float) -> float:
    if (
        isinstance(lr, Tensor)
        or not isinstance(lr, (int, float))
        or not math.isfinite(lr)
        or lr < 0
    ):
        raise ValueError(f"Invalid lr: {lr!r}. Must be a finite number >= 0.")
    return float(lr)


class ComposedOptimizer(Optimizer):
    """A preconditioned optimizer assembled from curvature, solver and update parts.

    Use :func:`compose` (or a ready optimizer such as :class:`nysact.optim.NysAct`) to build
    one. Follows the ``torch.optim`` contract: ``step(closure)``, ``zero_grad``, param groups,
    schedulers, ``state_dict``/``load_state_dict`` (which also carry all curvature state).

    Attributes
    ----------
    preconditioner : GradientPreconditioner
        The curvature engine (``.layer_names``, ``.fallbacks``, ``.skipped_updates``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        params: Iterable[Any] | None = None,
        *,
        curvature: Curvature,
        solver: Solver,
        update: Transform,
        lr: float = 0.1,
        damping: float = 1.0,
        ema_decay: float = 0.95,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        cov_every: int = 5,
        inv_every: int = 50,
        kl_clip: float | None = None,
        grad_scaler: Any = None,
        seed: int = 0,
        distributed: DistributedConfig | None = None,
        pre_update: Transform | None = None,
        fallback: Transform | None = None,
        start_preconditioning_step: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
        defaults = {
            "lr": _check_lr(lr),
            "damping": damping,
            "ema_decay": ema_decay,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(model.parameters() if params is None else params, defaults)
        model_params = {id(p) for p in _unwrap(model).parameters()}
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) not in model_params:
                    raise ValueError(
                        f"Invalid params: a parameter of shape {tuple(p.shape)} is not in the model"
                    )
        self.update_rule = update
        self.fallback_rule = update if fallback is None else fallback
        self.pre_update = None if pre_update is None else chain(pre_update)
        if self.pre_update is not None:
            probe = torch.zeros(1)
            shared = set(self.pre_update.init(probe)) & set(update.init(probe))
            if shared:
                raise ValueError(
                    f"Invalid pre_update: its state keys {sorted(shared)} clash with the update's"
                )
        ours = [p for g in self.param_groups for p in g["params"]]
        self.preconditioner = GradientPreconditioner(
            model,
            curvature=curvature,
            solver=solver,
            damping=damping,
            ema_decay=ema_decay,
            cov_every=cov_every,
            inv_every=inv_every,
            kl_clip=kl_clip,
            layers=ours,
            grad_scaler=grad_scaler,
            seed=seed,
            distributed=distributed,
            start_preconditioning_step=start_preconditioning_step,
        )
        if not self.preconditioner.specs:
            import warnings

            warnings.warn(
                "nysact: the model has no supported layer (nn.Linear / nn.Conv2d) among the "
                "optimizer's parameters; every parameter gets the plain update",
                UserWarning,
                stacklevel=2,
            )
        self._group_of: dict[int, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer pickles only defaults/state/param_groups; the curvature engine
        # must travel too (deepcopy of a model together with its optimizer).
        return self.__dict__.copy()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its hyperparameters are validated before it is added."""
        _check_group({**getattr(self, "defaults", {}), **param_group})
        super().add_param_group(param_group)

    def _layer_groups(self) -> list[dict[str, Any]]:
        index = {id(p): g for g in self.param_groups for p in g["params"]}
        return [index[id(s.weight)] for s in self.preconditioner.specs]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients and drop statistics of a step that did not happen.

        If ``step()`` was skipped (e.g. by a ``GradScaler`` after an inf), the statistics
        captured in that iteration are dropped here so they never enter the EMA.
        """
        self.preconditioner.clear_pending()
        super().zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Precondition, then update every parameter (``θ ← θ − lr·update(d)``).

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with gradients enabled).

        Returns
        -------
        Any
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self._layer_groups()
        for g in groups:
            _check_lr(g["lr"])
            if not (isinstance(g["damping"], (int, float)) and g["damping"] > 0):
                raise ValueError(f"Invalid damping: {g['damping']!r}. Must be > 0.")
        layer_params = {id(q) for s in self.preconditioner.specs for q in s.parameters}
        applied = self.preconditioner.step(
            dampings=[float(g["damping"]) for g in groups],
            ema_decays=[float(g["ema_decay"]) for g in groups],
            lr=float(self.param_groups[0]["lr"]),
            before_precondition=None
            if self.pre_update is None
            else lambda: self._run_pre_update(layer_params),
        )
        if not applied:
            return loss  # non-finite statistics: the whole step is skipped (see the engine)
        with torch.autograd.profiler.record_function("## nysact:update ##"):
            for group in self.param_groups:
                # One bucket per rule, device and dtype: the parts update a bucket with
                # foreach kernels (the same numbers as a loop over parameters, fewer launches).
                buckets: dict[tuple[bool, torch.device, torch.dtype], list[Tensor]] = {}
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    key = (id(p) in layer_params, p.device, p.dtype)
                    buckets.setdefault(key, []).append(p)
                for (in_layer, _, _), params in buckets.items():
                    states = [self._param_state(p, in_layer) for p in params]
                    rule = self.update_rule if in_layer else self.fallback_rule
                    grads = [p.grad for p in params]
                    ds = rule.update_many(grads, states, params, group)  # type: ignore[arg-type]
                    torch._foreach_add_(params, ds, alpha=-group["lr"])
        return loss

    def _param_state(self, p: Tensor, in_layer: bool) -> dict[str, Any]:
        """``self.state[p]``, initialised by every part that will update it."""
        state: dict[str, Any] = self.state[p]
        if not state:
            if in_layer:
                if self.pre_update is not None:
                    state.update(self.pre_update.init(p))
                state.update(self.update_rule.init(p))
            else:
                state.update(self.fallback_rule.init(p))
        else:
            # Follow the parameter after model.to(device), as the curvature state does.
            for k, v in state.items():
                if isinstance(v, Tensor) and v.device != p.device:
                    state[k] = v.to(p.device)
        return state

    def _run_pre_update(self, layer_params: set[int]) -> None:
        """``.grad ← pre_update(.grad)`` for the preconditioned layers' parameters."""
        assert self.pre_update is not None
        for group in self.param_groups:
            buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None and id(p) in layer_params:
                    buckets.setdefault((p.device, p.dtype), []).append(p)
            for params in buckets.values():
                states = [self._param_state(p, True) for p in params]
                grads: list[Tensor] = [p.grad for p in params]  # type: ignore[misc]
                ds = self.pre_update.update_many(grads, states, params, group)
                torch._foreach_copy_(grads, ds)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim state (update parts per parameter) plus the curvature state."""
        sd = super().state_dict()
        sd["nysact"] = self.preconditioner.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a state without curvature is an error, not ignored).

        Raises
        ------
        ValueError
            If the curvature state is missing or belongs to a different model.
        """
        if "nysact" not in state_dict:
            raise ValueError("state_dict has no 'nysact' curvature state (not saved by nysact?)")
        state_dict = dict(state_dict)
        curv = state_dict.pop("nysact")
        self._check_parameter_state_shapes(state_dict)
        # Atomic: on any mismatch restore what we had, so a failed load never leaves a
        # half-loaded optimizer behind.
        backup = copy.deepcopy((super().state_dict(), self.preconditioner.state_dict()))
        try:
            super().load_state_dict(state_dict)
            self.preconditioner.load_state_dict(curv)
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            super().load_state_dict(backup[0])
            self.preconditioner.load_state_dict(backup[1])
            raise ValueError(
                f"cannot load this state_dict into {type(self).__name__}: {err!r}"
            ) from err

    def _check_parameter_state_shapes(self, state_dict: dict[str, Any]) -> None:
        saved_groups = state_dict.get("param_groups", [])
        ids = [i for g in saved_groups for i in g.get("params", [])]
        params = [p for g in self.param_groups for p in g["params"]]
        if len(ids) != len(params):
            raise ValueError(
                f"state_dict has {len(ids)} parameters, this optimizer has {len(params)}"
            )
        by_id = dict(zip(ids, params, strict=True))
        for key, st in state_dict.get("state", {}).items():
            p = by_id.get(key)
            if p is None:
                raise ValueError(f"state_dict has state for unknown parameter index {key!r}")
            for name, value in st.items():
                if isinstance(value, Tensor) and value.ndim > 0 and value.shape != p.shape:
                    raise ValueError(
                        f"state_dict entry {name!r} has shape {tuple(value.shape)} but the "
                        f"parameter has shape {tuple(p.shape)}"
                    )


def compose(
    model: nn.Module,
    params: Iterable[Any] | None = None,
    *,
    curvature: Curvature,
    solver: Solver,
    update: Transform | None = None,
    **hyperparameters: Any,
) -> ComposedOptimizer:
    """Build a :class:`ComposedOptimizer` from parts.

    Parameters
    ----------
    model : nn.Module
        The model whose Linear/Conv2d layers are preconditioned.
    params : iterable, optional
        Parameters or param groups (default: all of the model's).
    curvature : Curvature
        Estimators.
    solver : Solver
        Per-layer inverse.
    update : Transform, optional
        Default: coupled weight decay then momentum, ``chain(add_weight_decay(),
        trace_momentum())``, reading both from the param groups.
    **hyperparameters
        ``lr``, ``damping``, ``ema_decay``, ``momentum``, ``weight_decay``, ``nesterov``,
        ``cov_every``, ``inv_every``, ``kl_clip``, ``grad_scaler``, ``seed``, ``distributed``
        (a :class:`nysact.optim.DistributedConfig`), ``pre_update`` and ``fallback`` (see
        the module docstring), ``start_preconditioning_step``.

    Returns
    -------
    ComposedOptimizer
        The optimizer.

    Examples
    --------
    KFAC with the Nyström solver on both factors (a variant nysact does not ship; see the
    documentation's "Compose your own optimizer"):

    >>> import torch
    >>> from torch import nn
    >>> from nysact.curvature import Curvature, SketchedCovariance
    >>> from nysact.optim import KroneckerInverse, compose
    >>> from nysact.sketch import Gaussian
    >>> model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3))
    >>> opt = compose(
    ...     model,
    ...     curvature=Curvature(
    ...         activation=SketchedCovariance(Gaussian(8)), gradient=SketchedCovariance(Gaussian(8))
    ...     ),
    ...     solver=KroneckerInverse(),
    ...     lr=0.1, damping=0.03, momentum=0.9, kl_clip=1e-3,
    ... )
    >>> x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    >>> opt.zero_grad()
    >>> nn.functional.cross_entropy(model(x), y).backward()
    >>> opt.step()
    >>> opt.preconditioner.refreshes
    1
    """
    if update is None:
        update = chain(add_weight_decay(), trace_momentum())
    return ComposedOptimizer(
        model, params, curvature=curvature, solver=solver, update=update, **hyperparameters
    )
