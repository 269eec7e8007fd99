r"""Module hooks that feed the estimators, and the single place where statistics accumulate.

Hooks are installed only for a statistics step and removed after it (curvlinops' install →
loop → remove), so steps between statistics updates cost nothing. A forward hook reads the
layer input; a full backward hook (only when a gradient-side estimator is configured) reads
the output gradient. Nothing is captured in eval mode or under ``torch.no_grad()``.
Activations in float16/bfloat16 (AMP) give float32 statistics.

Several forward/backward passes in one step (gradient accumulation) are averaged. Pending
statistics are folded into the EMAs by :meth:`CurvatureCapture.accumulate` — the one place a
distributed backend all-reduces them (one flat buffer) — or dropped by
:meth:`CurvatureCapture.clear_pending` (e.g. a step that a ``GradScaler`` skipped).

Gradient-side scaling: the hooks see ``∂(mean loss)/∂z``. Per-sample output gradients are
``B·∂L/∂z`` (B the batch size); as kfac-pytorch does, the gradient rows are multiplied by B
(and, for a conv, by the number of output positions, the KFC convention of Grosse & Martens
2016) when ``gradient_batch_scaling`` is on, and divided by the ``GradScaler``'s loss scale
when one is given. Under data parallelism over N replicas the minimised loss is the mean of the
replicas' mean losses, so output gradients are also divided by N
(``CurvatureCapture.data_parallel_size``; with batch scaling the net factor stays the local
batch size, the per-sample gradients).

Gradient-matrix statistics (Shampoo's ``"gradient_matrix"`` side) need no hook: they are read
from the layer's ``.grad`` by :meth:`CurvatureCapture.capture_gradient_matrices` when the
optimizer steps, and go through the same pending/accumulate path.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from nysact.curvature.estimators import Estimator, EstimatorState, Side
from nysact.curvature.layers import LayerSpec, read_gradient_matrix

__all__ = ["Curvature", "CurvatureCapture", "LayerCurvature"]


@dataclass(frozen=True, kw_only=True)
class Curvature:
    """What statistics a preconditioner keeps for each layer.

    Parameters
    ----------
    activation : Estimator, optional
        Statistic of the layer inputs (every method but Shampoo).
    gradient : Estimator, optional
        Statistic of the output gradients (KFAC's G factor, Eva's ḡ); None for FOOF/NysAct.
        Needs ``activation`` (its backward hook fires only after a captured forward).
    gradient_batch_scaling : bool
        Multiply output gradients by the batch size (and conv output positions) before the
        statistic; see the module docstring. Default True.
    gradient_matrix : Estimator, optional
        Statistic of the layer's parameter gradient ``Ĝ = [∇W | ∇b]`` (Shampoo's factors),
        read at ``step()`` without hooks.

    Raises
    ------
    ValueError
        If an estimator is not an :class:`Estimator`, none of ``activation`` and
        ``gradient_matrix`` is given, or ``gradient`` is given without ``activation``.
    """

    activation: Estimator | None = None
    gradient: Estimator | None = None
    gradient_batch_scaling: bool = True
    gradient_matrix: Estimator | None = None

    def __post_init__(self) -> None:
        if self.activation is None and self.gradient_matrix is None:
            raise ValueError("Invalid curvature: give an activation or a gradient_matrix estimator")
        for side in ("activation", "gradient", "gradient_matrix"):
            est = getattr(self, side)
            if est is not None and not isinstance(est, Estimator):
                raise ValueError(f"Invalid {side} estimator: {est!r}")
        if self.gradient is not None and self.activation is None:
            raise ValueError("Invalid curvature: a gradient estimator needs an activation one")

    @property
    def sides(self) -> tuple[Side, ...]:
        """The sides with an estimator, in the order activation, gradient, gradient_matrix."""
        names: tuple[Side, ...] = ("activation", "gradient", "gradient_matrix")
        return tuple(n for n in names if getattr(self, n) is not None)


class LayerCurvature:
    """The estimator states of one layer (activation side and optional gradient side).

    Parameters
    ----------
    spec : LayerSpec
        The layer.
    curvature : Curvature
        Which estimators to keep.
    dtype, device
        Of the statistics (float32 for a half-precision layer).
    generator : torch.Generator
        The sketches' random generator (shared by the layers of one preconditioner).
    """

    def __init__(
        self,
        spec: LayerSpec,
        curvature: Curvature,
        *,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator,
    ) -> None:
        self.spec = spec
        self.sides: dict[Side, EstimatorState] = {}
        for side in curvature.sides:
            est = getattr(curvature, side)
            self.sides[side] = est.make_state(
                spec, side, dtype=dtype, device=device, generator=generator
            )
        self.captured = False  # a training-mode forward was captured in this step
        self.device = device

    def to(self, device: torch.device) -> None:
        """Move every side's state to ``device``."""
        for s in self.sides.values():
            s.to(device)
        self.device = device

    @property
    def updates(self) -> int:
        """EMA updates since the last window restart (the minimum over sides)."""
        return min(s.updates for s in self.sides.values())


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class CurvatureCapture:
    """Hooks for a statistics step, pending batch statistics, and their accumulation.

    Parameters
    ----------
    layers : list of LayerCurvature
        The layers to capture.
    gradient_batch_scaling : bool
        See the module docstring.
    loss_scale : callable, optional
        Returns the current loss scale (a tensor or float) of a ``GradScaler``; gradient-side
        statistics are divided by it.
    """

    def __init__(
        self,
        layers: list[LayerCurvature],
        *,
        gradient_batch_scaling: bool = True,
        loss_scale: Callable[[], Tensor | float] | None = None,
    ) -> None:
        self.layers = layers
        self.gradient_batch_scaling = gradient_batch_scaling
        self.loss_scale = loss_scale
        self._handles: list[RemovableHandle] = []
        # pending[layer index][side] = [sum of batch statistics, number of batches]
        self.pending: list[dict[Side, list[Any]]] = [{} for _ in layers]
        self.skipped_updates = 0
        #: Seconds spent computing statistics (hooks and accumulation), for logging. On CUDA the
        #: kernels run asynchronously: set ``synchronize=True`` for wall-clock phase times.
        self.seconds = 0.0
        self.synchronize = False
        #: N, the number of data-parallel replicas whose mean loss is minimised (DDP averages
        #: their gradients): the hooks see ∂(own mean loss)/∂z, N times ∂(mean loss)/∂z, so
        #: output gradients are divided by N (and the batch scaling multiplies by the global
        #: batch N·B: net factor B). Set by the distributed engine; 1 in a single process.
        self.data_parallel_size = 1

    def _clock(self, device: torch.device) -> float:
        if self.synchronize and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    @property
    def installed(self) -> bool:
        """Whether hooks are currently installed."""
        return bool(self._handles)

    def install(self) -> None:
        """Install the hooks for the next statistics step (idempotent)."""
        if self._handles:
            return
        # The first layer's input never requires grad; its full backward hook still receives
        # grad_output, which is all it reads — PyTorch's warning about that is expected here.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients")
        for i, lc in enumerate(self.layers):
            mod = lc.spec.module
            if "activation" not in lc.sides:
                continue  # gradient-matrix statistics only: no hook
            self._handles.append(mod.register_forward_hook(self._forward_hook(i)))
            if "gradient" in lc.sides:
                self._handles.append(mod.register_full_backward_hook(self._backward_hook(i)))

    def remove(self) -> None:
        """Remove all hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _add(self, i: int, side: Side, stat: Tensor) -> None:
        entry = self.pending[i].get(side)
        if entry is None:
            self.pending[i][side] = [stat, 1]
        else:
            entry[0] = entry[0] + stat
            entry[1] += 1

    def _forward_hook(self, i: int) -> _ForwardHook:
        return _ForwardHook(self, i)

    def _backward_hook(self, i: int) -> _BackwardHook:
        return _BackwardHook(self, i)

    def capture_gradient_matrices(self) -> None:
        """Read ``Ĝ = [∇W | ∇b]`` of every layer with a ``"gradient_matrix"`` side (no hook).

        Called by the optimizer at a statistics step, before :meth:`accumulate` (which it
        times): each layer's batch statistic of its current gradient (float32 or wider) joins
        the pending ones. Layers without a gradient are left out.
        """
        for i, lc in enumerate(self.layers):
            side = lc.sides.get("gradient_matrix")
            if side is None:
                continue
            mat = read_gradient_matrix(lc.spec)
            if mat is None:
                continue
            mat = mat.detach().to(_stat_dtype(mat.dtype))
            with torch.autograd.profiler.record_function("## nysact:statistics ##"):
                self._add(i, "gradient_matrix", side.batch_statistic(mat))

    def has_pending(self) -> bool:
        """Whether any statistic was captured since the last accumulate/clear."""
        return any(bool(p) for p in self.pending)

    def clear_pending(self) -> None:
        """Drop the pending statistics (a skipped step)."""
        self.pending = [{} for _ in self.layers]
        for lc in self.layers:
            lc.captured = False
            for s in lc.sides.values():
                s.end_step()

    def accumulate(
        self,
        decays: list[float],
        *,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> bool:
        """Fold the pending statistics into the EMAs: the one place statistics accumulate.

        All pending batch statistics are averaged over the passes of this step and packed into
        one flat buffer, which ``reduce`` (e.g. a distributed all-reduce mean) may transform in
        a single call; a non-finite entry anywhere skips the whole update with a warning and
        leaves every EMA as it was.

        Parameters
        ----------
        decays : list of float
            β per layer (from the layer's param group).
        reduce : callable, optional
            Applied once to the flat buffer (distributed averaging).

        Returns
        -------
        bool
            True if the update was applied, False if it was skipped (or nothing was pending).
        """
        entries: list[tuple[int, Side, Tensor]] = []
        for i, pend in enumerate(self.pending):
            for side, (total, count) in pend.items():
                entries.append((i, side, total / count))
        if not entries:
            self.clear_pending()
            return False
        dtype = entries[0][2].dtype
        flat = torch.cat([e[2].reshape(-1).to(dtype) for e in entries])
        if reduce is not None:
            flat = reduce(flat)
        if not bool(torch.isfinite(flat).all()):
            self.skipped_updates += 1
            bad = sorted(
                {
                    self.layers[i].spec.name
                    for i, _, t in entries
                    if not bool(torch.isfinite(t).all())
                }
            )
            warnings.warn(
                f"nysact: non-finite curvature statistics (layers {bad or 'on another rank'}); "
                "this statistics update is skipped and the EMAs are unchanged",
                RuntimeWarning,
                stacklevel=3,
            )
            self.clear_pending()
            return False
        # One accumulate_many per estimator class and β: the EMA states batch their updates
        # (foreach kernels, the same numbers as one state at a time).
        batches: dict[tuple[type[EstimatorState], float], list[tuple[EstimatorState, Tensor]]]
        batches = {}
        offset = 0
        for i, side, t in entries:
            n = t.numel()
            state = self.layers[i].sides[side]
            value = flat[offset : offset + n].view_as(t)
            offset += n
            if state.batched_accumulate:
                batches.setdefault((type(state), decays[i]), []).append((state, value))
            else:
                state.accumulate(value, decays[i])
        for (cls, decay), items in batches.items():
            cls.accumulate_many([st for st, _ in items], [t for _, t in items], decay)
        self.clear_pending()
        return True


class _ForwardHook:
    """Forward hook of layer ``i``.

    An object, not a closure, so that ``copy.deepcopy`` of a model together with its optimizer
    rebinds it to the copied capture.
    """

    def __init__(self, capture: CurvatureCapture, i: int) -> None:
        self.capture = capture
        self.i = i

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return
        cap = self.capture
        lc = cap.layers[self.i]
        x = inputs[0].detach()
        t0 = cap._clock(x.device)
        state = lc.sides["activation"]
        x = x.to(_stat_dtype(x.dtype))
        if torch.is_autocast_enabled(x.device.type) or torch.autograd.profiler._is_profiler_enabled:
            # Inside the user's autocast region statistics are computed outside it, in float32
            # or wider (a bf16 matmul would round them); under the profiler they are labelled.
            # Neither context is entered otherwise: the hook runs for every layer and every
            # forward of a statistics step (AdaAct: every step), and the two cost ~7 µs a call.
            with (
                torch.autocast(x.device.type, enabled=False),
                torch.autograd.profiler.record_function("## nysact:statistics ##"),
            ):
                stat = state.forward_statistic(x, output.detach())
        else:
            stat = state.forward_statistic(x, output.detach())
        cap._add(self.i, "activation", stat)
        lc.captured = True
        cap.seconds += cap._clock(x.device) - t0


class _BackwardHook:
    """Full backward hook of layer ``i``: reads the output gradient (see the module notes)."""

    def __init__(self, capture: CurvatureCapture, i: int) -> None:
        self.capture = capture
        self.i = i

    def __call__(self, module: nn.Module, grad_input: Any, grad_output: Any) -> None:
        cap = self.capture
        lc = cap.layers[self.i]
        if not lc.captured:
            return  # no training-mode forward was captured for this step
        go = grad_output[0]
        if go is None:
            return
        go = go.detach().to(_stat_dtype(go.dtype))
        t0 = cap._clock(go.device)
        scale = 1.0
        if cap.gradient_batch_scaling:
            scale = float(go.shape[0])  # the global batch N·B over the N replicas: B
            if lc.spec.kind == "conv2d":
                scale *= float(math.prod(go.shape[2:]))
        elif cap.data_parallel_size != 1:
            scale = 1.0 / cap.data_parallel_size
        if scale != 1.0:
            go = go * scale
        if cap.loss_scale is not None:
            go = go / cap.loss_scale()
        with (
            torch.autocast(go.device.type, enabled=False),
            torch.autograd.profiler.record_function("## nysact:statistics ##"),
        ):
            stat = lc.sides["gradient"].batch_statistic(go)
        cap._add(self.i, "gradient", stat)
        cap.seconds += cap._clock(go.device) - t0
