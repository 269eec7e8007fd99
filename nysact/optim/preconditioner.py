r"""The gradient preconditioner: curvature capture + solver, rewriting ``.grad`` per layer.

:class:`GradientPreconditioner` is the engine of every optimizer in :mod:`nysact.optim` and
also works on its own in front of any ``torch.optim`` optimizer::

    pre = GradientPreconditioner(model, curvature=..., solver=..., damping=1.0)
    loss.backward(); pre.step(); adamw.step()

Schedule (NysAct paper, Alg. 1; the authors' counters): with ``k`` the number of ``step()``
calls so far,

* statistics step when ``k % cov_every == 0``: the hooks installed for this step captured the
  forward/backward; :meth:`step` folds them into the EMAs (one :meth:`CurvatureCapture.accumulate`);
* inverse refresh when ``k % inv_every == 0``: every layer's operator is rebuilt from the
  bias-corrected statistics, then each sketch starts a new window;
* every step: each layer's gradient matrix Ĝ becomes ``operator.apply(Ĝ)``.

Preconditioning therefore starts at step 0 (statistics and a first inverse from the first
batch, as the authors' code does).

Under ``torch.distributed`` (e.g. a DDP-wrapped model under ``torchrun``) the statistics are
averaged across ranks in one all-reduce per statistics step and the refreshes are spread over
the ranks: see :mod:`nysact.optim.distributed`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from nysact.curvature.capture import Curvature, CurvatureCapture, LayerCurvature
from nysact.curvature.estimators import Side, Statistic
from nysact.curvature.layers import (
    LayerSpec,
    find_layers,
    read_gradient_matrix,
    write_gradient_matrix,
)
from nysact.optim.distributed import (
    DistributedConfig,
    DistributedCurvature,
    check_supported_model,
)
from nysact.optim.solvers import LayerOperator, Solver

__all__ = ["GradientPreconditioner"]


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r}. Must be an int >= 1.")
    return value


def _check_damping(value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Invalid damping: {value!r}. Must be a finite number > 0.")
    return float(value)


def _non_negative_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Invalid {name}: {value!r}. Must be an int >= 0.")
    return value


def _check_ema_decay(value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"Invalid ema_decay: {value!r}. Must be in [0, 1).")
    return float(value)


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", None)  # DistributedDataParallel / DataParallel
    return inner if isinstance(inner, nn.Module) else model


class GradientPreconditioner:
    """Preconditions the gradients of a model's Linear/Conv2d layers in place.

    Parameters
    ----------
    model : nn.Module
        The model (a DDP wrapper is looked through).
    curvature : Curvature
        Estimators per side (see :mod:`nysact.curvature`).
    solver : Solver
        Turns statistics into per-layer operators (see :mod:`nysact.optim.solvers`).
    damping : float
        ρ > 0 (used when no per-layer value is passed to :meth:`step`).
    ema_decay : float
        β ∈ [0, 1).
    cov_every, inv_every : int
        Statistics and inverse periods, ``1 ≤ cov_every ≤ inv_every`` (paper: 5 and 50).
    kl_clip : float, optional
        κ > 0: scale every preconditioned gradient by ``ν = min(1, √(κ / Σ lr²⟨Ĝ', Ĝ⟩))``
        (KFAC, Eva); None disables it.
    layers : iterable of nn.Parameter, optional
        Restrict preconditioning to layers whose weight is among these parameters.
    grad_scaler : torch.amp.GradScaler, optional
        Gradient-side statistics are divided by its loss scale.
    seed : int
        Seed of the sketch generator (its state is saved in :meth:`state_dict`); under
        ``torch.distributed`` rank 0's seed is used on every rank.
    distributed : DistributedConfig, optional
        How statistics and inverse work are shared across ranks (see
        :mod:`nysact.optim.distributed`); None detects an initialized process group of more
        than one rank and then averages the statistics and spreads the refreshes.
    start_preconditioning_step : int
        Gradients pass unchanged before this step (statistics and refreshes run as scheduled):
        Distributed Shampoo's ``start_preconditioning_step``, so that the first operator applied
        is not the one factored from the very first batch. Default 0 (precondition at once).

    Raises
    ------
    ValueError
        On an invalid hyperparameter (the message names it), or a sharded (FSDP) model.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        curvature: Curvature,
        solver: Solver,
        damping: float = 1.0,
        ema_decay: float = 0.95,
        cov_every: int = 5,
        inv_every: int = 50,
        kl_clip: float | None = None,
        layers: Iterable[nn.Parameter] | None = None,
        grad_scaler: Any = None,
        seed: int = 0,
        distributed: DistributedConfig | None = None,
        start_preconditioning_step: int = 0,
    ) -> None:
        check_supported_model(model)
        self.damping = _check_damping(damping)
        self.ema_decay = _check_ema_decay(ema_decay)
        self.cov_every = _positive_int(cov_every, "cov_every")
        self.inv_every = _positive_int(inv_every, "inv_every")
        if self.inv_every < self.cov_every:
            raise ValueError(
                f"Invalid inv_every: {inv_every!r}. Must be >= cov_every ({cov_every})."
            )
        if kl_clip is not None and (not math.isfinite(kl_clip) or kl_clip <= 0):
            raise ValueError(f"Invalid kl_clip: {kl_clip!r}. Must be > 0 or None.")
        if not isinstance(curvature, Curvature):
            raise ValueError(f"Invalid curvature: {curvature!r}. Must be a Curvature.")
        if not isinstance(solver, Solver):
            raise ValueError(f"Invalid solver: {solver!r}. Must be a Solver.")
        missing = set(solver.sides) - set(curvature.sides)
        if missing:
            raise ValueError(
                f"solver {type(solver).__name__} needs statistics for {sorted(missing)}; "
                f"configure Curvature({', '.join(f'{m}=...' for m in sorted(missing))})"
            )
        self.start_preconditioning_step = _non_negative_int(
            start_preconditioning_step, "start_preconditioning_step"
        )
        self.kl_clip = kl_clip
        self.curvature = curvature
        self.solver = solver
        specs = find_layers(_unwrap(model))
        if layers is not None:
            wanted = {id(p) for p in layers}
            specs = [s for s in specs if id(s.weight) in wanted]
        self.specs: list[LayerSpec] = specs
        #: The collectives (None in a single process); ``.stats`` counts calls and bytes.
        self.distributed = DistributedCurvature.from_config(
            distributed, specs[0].weight.device if specs else torch.device("cpu")
        )
        if self.distributed is not None:
            seed = self.distributed.agree_seed(seed)
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self.layers: list[LayerCurvature] = []
        for spec in specs:
            w = spec.weight
            dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
            self.layers.append(
                LayerCurvature(
                    spec, curvature, dtype=dtype, device=w.device, generator=self.generator
                )
            )
        scale_fn: Callable[[], Tensor | float] | None = None
        if grad_scaler is not None:
            scaler = grad_scaler

            def scale_fn() -> Tensor | float:
                s = getattr(scaler, "_scale", None)
                return s if s is not None else 1.0

        self.capture = CurvatureCapture(
            self.layers,
            gradient_batch_scaling=curvature.gradient_batch_scaling,
            loss_scale=scale_fn,
        )
        self.operators: list[LayerOperator | None] = [None] * len(self.layers)
        self.steps = 0
        self.refreshes = 0
        self.fallbacks = 0
        self.reduce: Callable[[Tensor], Tensor] | None = None  # the statistics all-reduce
        if self.distributed is not None:
            self.distributed.assign(self.specs, curvature)
            self.reduce = self.distributed.reduce
            self.capture.data_parallel_size = self.distributed.world_size
        #: Seconds per phase ("statistics" also includes the hooks), for logging.
        self.seconds = {"statistics": 0.0, "inverse": 0.0, "precondition": 0.0}
        self.capture.install()  # step 0 is a statistics step

    # ----------------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Names of the preconditioned layers."""
        return [s.name for s in self.specs]

    @property
    def skipped_updates(self) -> int:
        """Statistics updates skipped for non-finite values."""
        return self.capture.skipped_updates

    def clear_pending(self) -> None:
        """Drop statistics captured since the last step (a step that will not happen)."""
        self.capture.clear_pending()

    def _refresh(self, dampings: list[float]) -> None:
        def stats_of(i: int) -> dict[Side, Statistic]:
            return {k: s.value() for k, s in self.layers[i].sides.items()}

        def factor(i: int) -> LayerOperator:
            return self.solver.factor(stats_of(i), dampings[i])

        def load(i: int, state: dict[str, Any]) -> LayerOperator:
            return self.solver.load(_to_device(state, self.layers[i].device))

        with torch.autograd.profiler.record_function("## nysact:inverse ##"):
            # a layer without statistics in this window (e.g. all skipped) keeps its operator
            due = [i for i, lc in enumerate(self.layers) if lc.updates > 0]
            if self.distributed is None:
                made = self.solver.factor_many(
                    [stats_of(i) for i in due], [dampings[i] for i in due]
                )
                ops = dict(zip(due, made, strict=True))
            else:
                ops = self.distributed.refresh(due, factor, load)
            for i in due:  # the sketches' new windows draw Ω in layer order on every rank
                self.fallbacks += int(ops[i].fallback)
                self.operators[i] = ops[i]
                for s in self.layers[i].sides.values():
                    s.start_window()
        self.refreshes += 1

    @torch.no_grad()
    def step(
        self,
        dampings: list[float] | None = None,
        ema_decays: list[float] | None = None,
        lr: float | None = None,
        before_precondition: Callable[[], None] | None = None,
    ) -> bool:
        """Accumulate statistics / refresh inverses as scheduled, then precondition ``.grad``.

        Parameters
        ----------
        dampings, ema_decays : list of float, optional
            Per-layer values (default: ``self.damping`` / ``self.ema_decay`` for all).
        lr : float, optional
            Learning rate used by the KL clip (required when ``kl_clip`` is set).
        before_precondition : callable, optional
            Called once the step is known to go ahead (statistics accepted, operators
            refreshed), right before the gradients are preconditioned; it may rewrite ``.grad``
            (how :class:`ComposedOptimizer` runs its ``pre_update``, e.g. AdaAct's momentum).

        Returns
        -------
        bool
            False when this was a statistics step whose statistics were non-finite (NaN/Inf in
            the batch's activations or gradients): the update is skipped with a warning, the
            EMAs and ``.grad`` are left as they were and the step counter does not advance (the
            next iteration is again a statistics step). The caller should then skip its
            parameter update — :class:`ComposedOptimizer` does — since the gradients came from
            the same batch. True otherwise.
        """
        n = len(self.layers)
        dampings = dampings or [self.damping] * n
        ema_decays = ema_decays or [self.ema_decay] * n
        self._follow_devices()
        k = self.steps
        device = self.specs[0].weight.device if self.specs else torch.device("cpu")
        clock = self.capture._clock
        if k % self.cov_every == 0:
            t0 = clock(device)
            self.capture.remove()
            self.capture.capture_gradient_matrices()
            if self.capture.has_pending():
                if not self.capture.accumulate(ema_decays, reduce=self.reduce):
                    self.capture.install()
                    return False
            else:
                self.capture.clear_pending()
            self.capture.seconds += clock(device) - t0
        if k % self.inv_every == 0:
            t0 = clock(device)
            self._refresh(dampings)
            self.seconds["inverse"] += clock(device) - t0
        if before_precondition is not None:
            before_precondition()
        t0 = clock(device)
        with torch.autograd.profiler.record_function("## nysact:precondition ##"):
            if k >= self.start_preconditioning_step:
                self._precondition(lr)
        self.seconds["precondition"] += clock(device) - t0
        self.seconds["statistics"] = self.capture.seconds
        self.steps += 1
        if self.steps % self.cov_every == 0:
            self.capture.install()
        return True

    def _follow_devices(self) -> None:
        """Move a layer's curvature state to its weight's device (after ``model.to(...)``)."""
        for i, lc in enumerate(self.layers):
            device = lc.spec.weight.device
            if lc.device == device:
                continue
            lc.to(device)
            op = self.operators[i]
            if op is not None:
                self.operators[i] = self.solver.load(_to_device(op.state_dict(), device))

    def _precondition(self, lr: float | None) -> None:
        # Layers are applied in batches of one operator class (LayerOperator.apply_many: one
        # foreach call for elementwise operators such as AdaAct's column scaling).
        batches: dict[type[LayerOperator], list[tuple[LayerSpec, LayerOperator, Tensor]]] = {}
        for spec, op in zip(self.specs, self.operators, strict=True):
            if op is None:
                continue
            g = read_gradient_matrix(spec)
            if g is None:
                continue
            batches.setdefault(type(op), []).append((spec, op, g))
        pairs: list[tuple[LayerSpec, Tensor, Tensor]] = []
        for cls, items in batches.items():
            news = cls.apply_many(
                [op for _, op, _ in items], [g.to(_op_dtype(g)) for *_, g in items]
            )
            pairs.extend(
                (spec, g, new.to(g.dtype)) for (spec, _, g), new in zip(items, news, strict=True)
            )
        if self.kl_clip is not None and pairs:
            if lr is None:
                raise ValueError("kl_clip needs the learning rate: pass lr to step()")
            s = sum(((new * old).sum() for _, old, new in pairs), pairs[0][1].new_zeros(()))
            s = s * lr * lr
            nu = torch.where(s > 0, torch.sqrt(self.kl_clip / s.clamp_min(1e-30)), 1.0)
            nu = nu.clamp(max=1.0)
            pairs = [(spec, old, new * nu) for spec, old, new in pairs]
        for spec, _, new in pairs:
            write_gradient_matrix(spec, new)

    # ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Curvature state: counters, estimator EMAs (incl. sketches and RNG), operators."""
        return {
            "steps": self.steps,
            "refreshes": self.refreshes,
            "fallbacks": self.fallbacks,
            "skipped_updates": self.capture.skipped_updates,
            "generator": self.generator.get_state(),
            "layers": [
                {
                    "name": lc.spec.name,
                    "sides": {k: s.state_dict() for k, s in lc.sides.items()},
                    "operator": None if op is None else op.state_dict(),
                }
                for lc, op in zip(self.layers, self.operators, strict=True)
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; layer names and shapes must match.

        Raises
        ------
        ValueError
            If the saved layers differ from this model's.
        """
        saved = [entry["name"] for entry in state["layers"]]
        if saved != self.layer_names:
            raise ValueError(
                f"state_dict has preconditioned layers {saved}, this model has {self.layer_names}"
            )
        self.capture.remove()
        self.capture.clear_pending()
        for lc, entry, i in zip(self.layers, state["layers"], range(len(self.layers)), strict=True):
            for k, s in lc.sides.items():
                s.load_state_dict(entry["sides"][k])
            op_state = entry["operator"]
            self.operators[i] = (
                None
                if op_state is None
                else self.solver.load(_to_device(op_state, lc.spec.weight.device))
            )
        self.steps = int(state["steps"])
        self.refreshes = int(state["refreshes"])
        self.fallbacks = int(state["fallbacks"])
        self.capture.skipped_updates = int(state["skipped_updates"])
        self.generator.set_state(state["generator"])
        if self.steps % self.cov_every == 0:
            self.capture.install()


def _op_dtype(g: Tensor) -> torch.dtype:
    return torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else g.dtype


def _to_device(state: Any, device: torch.device) -> Any:
    if isinstance(state, Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to_device(v, device) for k, v in state.items()}
    return state
