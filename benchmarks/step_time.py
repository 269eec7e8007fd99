"""Benchmark 1: step time of every optimizer relative to SGD, interleaved in one process.

Each method trains its own copy of the model (same initial weights) on the same synthetic
batch; step i of every method runs before step i+1 of any, in a rotating order, so drift of
the machine hits all alike (:func:`benchmarks.common.interleaved_times`). A step is
``zero_grad → forward → backward → optimizer.step()``. With τ_cov = 5 and τ_inv = 50 the
default 100 recorded steps include 20 statistics steps and 2 inverse refreshes per method.

Reported per method: mean step time, its ratio to SGD's (total time over the same steps),
the median step, and the optimizer's phase split (statistics incl. hooks / inverse refresh /
preconditioning) where the optimizer records one.

Run ``python -m benchmarks.step_time --help``; the paper's setting is the default
(ResNet-32, batch 128, CIFAR-shaped input, rank 10).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import (
    INPUT_SHAPES,
    base_parser,
    interleaved_times,
    markdown_table,
    parse_methods,
    resolve_device,
    synthetic_setup,
    write_results,
)
from nysact.train.optimizers import OPTIMIZERS, PAPER_DEFAULTS, build_optimizer

__all__ = ["main", "run"]

DEFAULT_METHODS = ["sgd", "adam", "nysact-s", "nysact-g", "foof", "kfac", "eva"]
FAMILY = ["mac", "adaact", "shampoo", "adahessian", "ginger", "qng", "sketchysgd"]
#: Reference rows that are not optimizers: the bare autograd work a method cannot avoid.
REFERENCES = ["hvp-floor"]


def _hvp_floor_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
) -> Callable[[int], None]:
    """``hvp-floor``: what every AdaHessian step does, with nothing else (the authors' included).

    ``loss.backward(create_graph=True)``, one Rademacher Hessian-vector product over all
    parameters by double backward (``torch.autograd.grad`` with ``grad_outputs=z``), then a
    plain SGD update. AdaHessian's own cost is this plus its O(n) moment arithmetic.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    sgd = torch.optim.SGD(params, lr=1e-3)
    gen = torch.Generator(device=x.device).manual_seed(seed)

    def step(i: int) -> None:
        sgd.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward(create_graph=True)
        grads = [p.grad for p in params]
        zs = [
            torch.randint(0, 2, p.shape, generator=gen, device=p.device).to(p.dtype) * 2 - 1
            for p in params
        ]
        torch.autograd.grad(grads, params, grad_outputs=zs)  # type: ignore[arg-type]
        sgd.step()

    return step


def _overrides(name: str, rank: int, cov_every: int, inv_every: int) -> dict[str, Any]:
    """The paper's step-time setting, for the knobs the method's defaults have."""
    wanted = {"rank": rank, "cov_every": cov_every, "inv_every": inv_every}
    return {k: v for k, v in wanted.items() if k in PAPER_DEFAULTS.get(name, {})}


def _make_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[int], None]:
    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        # Hessian-based methods (AdaHessian, SketchySGD) say when they need the graph.
        loss.backward(create_graph=bool(getattr(opt, "create_graph", False)))
        opt.step()

    return step


def _phases(opt: torch.optim.Optimizer) -> dict[str, float] | None:
    pre = getattr(opt, "preconditioner", None)
    seconds = getattr(pre, "seconds", None)
    return dict(seconds) if isinstance(seconds, dict) else None


def run(
    model_name: str,
    batch: int,
    methods: list[str],
    steps: int,
    device: torch.device,
    rank: int = 10,
    cov_every: int = 5,
    inv_every: int = 50,
    warmup: int = 3,
    seed: int = 0,
    timer: str = "wall",
) -> dict[str, Any]:
    """Measure; returns the payload written to the results file.

    ``methods`` are specs of :func:`benchmarks.common.parse_methods` (``name`` or
    ``name:key=value,...``); unregistered names are skipped with a message.
    """
    base, x, y = synthetic_setup(model_name, batch, device, seed)
    references = [m for m in methods if m in REFERENCES]
    specs = parse_methods([m for m in methods if m not in REFERENCES], OPTIMIZERS)
    if "sgd" not in [m.label for m in specs]:
        specs = parse_methods(["sgd"], OPTIMIZERS) + specs
    steps_fns: dict[str, Callable[[int], None]] = {}
    opts: dict[str, torch.optim.Optimizer] = {}
    for spec in specs:
        model = copy.deepcopy(base)
        kw = {**_overrides(spec.name, rank, cov_every, inv_every), **spec.overrides}
        opt = build_optimizer(spec.name, model, **kw)
        opts[spec.label] = opt
        steps_fns[spec.label] = _make_step(model, opt, x, y)
    for ref in references:  # only "hvp-floor" so far
        steps_fns[ref] = _hvp_floor_step(copy.deepcopy(base), x, y, seed)
    available = list(steps_fns)
    print(
        f"step time: {model_name}, batch {batch}, {steps} steps (+{warmup} warm-up), "
        f"{len(available)} methods, device {device}",
        flush=True,
    )
    phase0 = {m: _phases(o) or {} for m, o in opts.items()}
    clock = time.process_time if timer == "process" else time.perf_counter
    times = interleaved_times(steps_fns, steps, device, warmup=warmup, timer=clock)
    sgd_total = sum(times["sgd"])
    rows: list[dict[str, Any]] = []
    for m in available:
        t = times[m]
        ph_end = _phases(opts[m]) if m in opts else None
        phases = None
        if ph_end is not None:
            # Phase seconds accumulate from the first (warm-up) step; scale to recorded steps.
            total = len(t) + warmup
            phases = {k: (v - phase0[m].get(k, 0.0)) / total * 1e3 for k, v in ph_end.items()}
        rows.append(
            {
                "method": m,
                "mean_ms": 1e3 * sum(t) / len(t),
                "median_ms": 1e3 * statistics.median(t),
                "ratio_to_sgd": sum(t) / sgd_total,
                "phase_ms_per_step": phases,
            }
        )
    return {
        "benchmark": "step_time",
        "model": model_name,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "rank": rank,
        "cov_every": cov_every,
        "inv_every": inv_every,
        "timer": timer,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }


def _markdown(payload: dict[str, Any]) -> str:
    header = ["method", "mean ms", "median ms", "× SGD", "stats ms", "inverse ms", "precond ms"]
    body = []
    for r in payload["rows"]:
        ph = r["phase_ms_per_step"] or {}
        body.append(
            [
                r["method"],
                f"{r['mean_ms']:.1f}",
                f"{r['median_ms']:.1f}",
                f"{r['ratio_to_sgd']:.3f}",
                f"{ph['statistics']:.1f}" if "statistics" in ph else "–",
                f"{ph['inverse']:.1f}" if "inverse" in ph else "–",
                f"{ph['precondition']:.1f}" if "precondition" in ph else "–",
            ]
        )
    head = (
        f"{payload['model']}, batch {payload['batch']}, {payload['steps']} interleaved steps "
        f"(after {payload['warmup']} warm-up), τ_cov {payload['cov_every']}, "
        f"τ_inv {payload['inv_every']}, rank {payload['rank']}; {payload['timer']} time, "
        f"{payload['torch_threads']} torch threads. Phase columns are per-step averages over "
        "all steps (statistics includes the hooks; wall-clock)."
    )
    return head + "\n\n" + markdown_table(header, body)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m benchmarks.step_time``."""
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None, help="default: resnet32 resnet110")
    p.add_argument("--batch", type=int, default=None, help="default 128 (256 for ImageNet)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS + FAMILY,
        help="optimizer specs (name or name:key=value,...) and reference rows "
        f"({', '.join(REFERENCES)}: the bare double backward of a Hessian-vector product)",
    )
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--cov-every", type=int, default=5)
    p.add_argument("--inv-every", type=int, default=50)
    p.add_argument(
        "--timer",
        choices=["wall", "process"],
        default="wall",
        help="wall-clock (default) or CPU seconds of this process (steadier on a shared "
        "machine; use with --threads 1)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--tag", default="", help="suffix of the results file name (several method sets)"
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    models = a.models or (
        ["resnet32", "resnet110", "resnet50"]
        if device.type == "cuda"
        else ["resnet32", "resnet110"]
    )
    for model_name in models:
        big = INPUT_SHAPES[model_name][0][1] > 64
        batch = a.batch or (256 if big else 128)
        steps = a.steps
        if a.quick:
            batch, steps = min(batch, 8), 12
        payload = run(
            model_name,
            batch,
            a.methods,
            steps,
            device,
            rank=a.rank,
            cov_every=a.cov_every if not a.quick else 2,
            inv_every=a.inv_every if not a.quick else 6,
            warmup=3 if not a.quick else 1,
            timer=a.timer,
        )
        write_results(
            f"step_time-{model_name}" + (f"-{a.tag}" if a.tag else ""),
            payload,
            _markdown(payload),
            device,
            out_dir=a.out,
            title=f"Step time relative to SGD: {model_name}",
        )


if __name__ == "__main__":
    main()
