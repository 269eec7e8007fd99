"""Benchmark 2: optimizer state memory and peak memory of a training step, relative to SGD.

For every model (ResNet-32, ResNet-110, DenseNet-121 at CIFAR shape; ResNet-50, DeiT-S at
ImageNet shape) and method, a **fresh subprocess** builds the model and optimizer, runs
``--steps`` training steps on one synthetic batch and reports

* **optimizer state bytes** — every tensor of ``optimizer.state_dict()`` after the steps
  (:func:`nysact.train.trainer.optimizer_state_bytes`: momentum / Adam moments and all
  curvature state: EMAs, sketches, test matrices, factored inverses; RNG states excluded), also
  per preconditioned layer for the nysact optimizers;
* **peak memory of the steps**, measured from just before the optimizer is built: on CUDA
  ``torch.cuda.max_memory_allocated`` minus the allocation before; on CPU the peak resident set
  (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) minus the RSS before. The
  delta therefore holds gradients, activations, optimizer state and the optimizer's transient
  buffers; the model and the batch are in the baseline. A fresh process per method keeps one
  method's high-water mark out of another's.

Decisions where the issue is silent: step 0 of the nysact optimizers is a statistics step and
an inverse refresh, so the default two steps create every piece of lazily built state and
include the most expensive step; the batch is 128 for the CIFAR models and 16 for ResNet-50 and
DeiT-S (the issue's CPU setting), on both devices so that CPU and GPU results compare.

Targets checked (the issue's), each printed pass/fail with its numbers, for every method whose
name starts with ``nysact``:

1. extra state over SGD ≤ ``2·r·Σ_l g_l p_l + 2·r²·Σ_l g_l`` floats — ``p_l`` the layer's input
   size (bias column included), ``g_l`` its conv groups; the O(r²) term is taken as 2r² per
   covariance block (it covers the r eigenvalues and r int64 indices of a sketched layer and the
   two p×p matrices of a layer with p ≤ r, which keeps the exact dense path);
2. for every sketched layer (``p > r``): its curvature bytes ≤ ``(r+2)/p`` × FOOF's for the same
   layer (reported as the worst layer's ratio to its bound);
3. whole optimizer state ≤ 1.1 × SGD's for ResNet-50 and DeiT-S.

Run ``python -m benchmarks.memory --help``.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import (
    INPUT_SHAPES,
    MethodSpec,
    base_parser,
    markdown_table,
    parse_methods,
    resolve_device,
    rss_bytes,
    sync,
    synthetic_setup,
    write_results,
)
from nysact.curvature import find_layers
from nysact.train.optimizers import OPTIMIZERS, PAPER_DEFAULTS, build_optimizer
from nysact.train.trainer import optimizer_state_bytes, tensor_bytes

__all__ = ["check_targets", "main", "measure", "state_bound_floats"]

DEFAULT_MODELS = ["resnet32", "resnet110", "densenet121", "resnet50", "deit_small"]
DEFAULT_METHODS = ["sgd", "adam", "nysact-s", "nysact-g", "foof", "kfac", "eva"]
#: The rest of the family, measured by default beside the methods above.
FAMILY = ["mac", "adaact", "shampoo", "ginger", "qng", "adahessian", "sketchysgd"]
#: Models whose whole optimizer state must stay within 1.1× SGD's (target 3).
WHOLE_STATE_MODELS = ("resnet50", "deit_small")
WHOLE_STATE_LIMIT = 1.1
_ROOT = Path(__file__).resolve().parent.parent
_MARK = "MEMORY-RESULT "


# --------------------------------------------------------------------------------------------
# The measurement (runs in a fresh subprocess per model and method)
# --------------------------------------------------------------------------------------------


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ≥ 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:  # pragma: no cover - not Linux, or not permitted
        return False


def _peak_rss() -> int:
    """Peak resident set (``VmHWM``) in bytes; falls back to ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _layer_state_bytes(opt: torch.optim.Optimizer) -> dict[str, int]:
    """Curvature bytes per preconditioned layer (statistics + operator), {} if not a nysact one."""
    curv = opt.state_dict().get("nysact")
    layers = curv.get("layers") if isinstance(curv, dict) else None
    if not isinstance(layers, list):
        return {}
    return {
        str(e["name"]): tensor_bytes({k: v for k, v in e.items() if k != "name"})
        for e in layers
        if isinstance(e, dict) and "name" in e
    }


def measure(
    model_name: str,
    method: MethodSpec,
    batch: int,
    steps: int,
    device: torch.device,
    seed: int = 0,
) -> dict[str, Any]:
    """Build, train ``steps`` steps on one synthetic batch, and measure (in this process).

    Parameters
    ----------
    model_name : str
        A key of :data:`benchmarks.common.INPUT_SHAPES`.
    method : MethodSpec
        The optimizer and its overrides.
    batch, steps : int
        Batch size and number of training steps (≥ 1).
    device : torch.device
        Where to run.
    seed : int
        Seed of the model initialisation and the batch.

    Returns
    -------
    dict
        ``state_bytes``, ``layer_state_bytes`` (name → bytes), ``peak_bytes`` (peak of the
        steps minus the baseline before the optimizer was built), ``baseline_bytes``,
        ``params``, ``param_bytes``, ``element_size`` and ``layers`` (name, groups g, input
        size p of every supported layer).
    """
    model, x, y = synthetic_setup(model_name, batch, device, seed)
    # One forward/backward before the baseline, so that one-time library initialisation
    # (thread pools, oneDNN/cuDNN workspaces) is not charged to the first method's step.
    torch.autograd.backward(F.cross_entropy(model(x), y))
    model.zero_grad(set_to_none=True)
    gc.collect()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = int(torch.cuda.memory_allocated(device))
    else:
        baseline = rss_bytes()
        _reset_peak_rss()
    opt = build_optimizer(method.name, model, **method.overrides)
    create_graph = bool(getattr(opt, "create_graph", False))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        torch.autograd.backward(loss, create_graph=create_graph)
        opt.step()
    sync(device)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else _peak_rss()
    params = [p for p in model.parameters() if p.requires_grad]
    return {
        "state_bytes": optimizer_state_bytes(opt),
        "layer_state_bytes": _layer_state_bytes(opt),
        "peak_bytes": peak - baseline,
        "baseline_bytes": baseline,
        "params": sum(p.numel() for p in params),
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "element_size": params[0].element_size(),
        "layers": [[s.name, s.groups, s.dim] for s in find_layers(model)],
    }


def _worker(arg: str) -> None:
    cfg = json.loads(arg)
    method = MethodSpec(cfg["label"], cfg["name"], cfg["overrides"])
    out = measure(cfg["model"], method, cfg["batch"], cfg["steps"], torch.device(cfg["device"]))
    print(_MARK + json.dumps(out), flush=True)


def _run_fresh(model_name: str, method: MethodSpec, batch: int, steps: int, device: str) -> Any:
    """:func:`measure` in a fresh interpreter; returns its dict or ``{"error": ...}``."""
    cfg = {
        "model": model_name,
        "label": method.label,
        "name": method.name,
        "overrides": method.overrides,
        "batch": batch,
        "steps": steps,
        "device": device,
    }
    env = dict(os.environ)
    # glibc: a fixed mmap threshold sends every allocation ≥ 128 KiB to mmap and returns it to
    # the OS when freed, so the RSS follows the live tensors instead of malloc's retained heap.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--worker", json.dumps(cfg)],
        cwd=_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


def state_bound_floats(layers: list[list[Any]], rank: int) -> int:
    """Target 1's bound on NysAct's extra state, in floats: ``2·r·Σ g·p + 2·r²·Σ g``.

    Parameters
    ----------
    layers : list of [name, g, p]
        The supported layers (groups g, input size p with the bias column).
    rank : int
        r.

    Returns
    -------
    int
        The bound.
    """
    return sum(2 * rank * g * p + 2 * rank * rank * g for _, g, p in layers)


def _rank(method: MethodSpec) -> int | None:
    r = method.overrides.get("rank", PAPER_DEFAULTS.get(method.name, {}).get("rank"))
    return int(r) if r is not None else None


def check_targets(
    results: dict[str, dict[str, Any]], methods: list[MethodSpec]
) -> list[dict[str, Any]]:
    """Evaluate the issue's state targets on measured results (see the module docstring).

    Parameters
    ----------
    results : dict
        ``results[model][method label]`` as returned by :func:`measure`.
    methods : list of MethodSpec
        The methods measured.

    Returns
    -------
    list of dict
        One record per (target, model, method): ``target``, ``model``, ``method``, ``passed``
        (None when it could not be evaluated) and ``detail`` (the numbers).
    """
    checks: list[dict[str, Any]] = []
    for model, per in results.items():
        sgd = per.get("sgd", {})
        foof = per.get("foof", {})
        for m in methods:
            res = per.get(m.label, {})
            r = _rank(m)
            if not m.name.startswith("nysact") or r is None or "state_bytes" not in res:
                continue

            def add(
                target: str,
                passed: bool | None,
                detail: str,
                model: str = model,
                label: str = m.label,
            ) -> None:
                checks.append(
                    {
                        "target": target,
                        "model": model,
                        "method": label,
                        "passed": passed,
                        "detail": detail,
                    }
                )

            if "state_bytes" in sgd:
                extra = res["state_bytes"] - sgd["state_bytes"]
                bound = state_bound_floats(res["layers"], r) * res["element_size"]
                add(
                    "extra state ≤ 2·r·Σp + 2r² per layer",
                    extra <= bound,
                    f"extra {extra / 2**20:.3f} MiB vs bound {bound / 2**20:.3f} MiB "
                    f"(params {sgd['param_bytes'] / 2**20:.2f} MiB)",
                )
                if model in WHOLE_STATE_MODELS:
                    ratio = res["state_bytes"] / sgd["state_bytes"]
                    add(
                        f"whole state ≤ {WHOLE_STATE_LIMIT}× SGD",
                        ratio <= WHOLE_STATE_LIMIT,
                        f"{ratio:.3f}× SGD",
                    )
            else:
                add("extra state ≤ 2·r·Σp + 2r² per layer", None, "no SGD result")
            ours, theirs = res.get("layer_state_bytes", {}), foof.get("layer_state_bytes", {})
            worst: tuple[float, str, float, float] | None = None
            for name, _g, p in res["layers"]:
                if p <= r or name not in ours or not theirs.get(name):
                    continue
                ratio = ours[name] / theirs[name]
                frac = ratio / ((r + 2) / p)
                if worst is None or frac > worst[0]:
                    worst = (frac, name, ratio, (r + 2) / p)
            if worst is None:
                add("per large layer ≤ (r+2)/p of FOOF", None, "no FOOF per-layer result")
            else:
                frac, name, ratio, lim = worst
                add(
                    "per large layer ≤ (r+2)/p of FOOF",
                    frac <= 1.0,
                    f"worst layer {name}: {ratio:.4f} of FOOF vs (r+2)/p = {lim:.4f}",
                )
    return checks


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _mib(b: float) -> str:
    return f"{b / 2**20:.2f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); returns the exit status."""
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help=f"default {DEFAULT_MODELS}")
    p.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS + FAMILY,
        help="optimizer names, or name:key=value,... (unregistered names are skipped)",
    )
    p.add_argument("--batch-cifar", type=int, default=None, help="default 128 (quick 8)")
    p.add_argument("--batch-imagenet", type=int, default=None, help="default 16 (quick 2)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 2, quick 1)")
    p.add_argument("--worker", help="(internal) measure one configuration in this process")
    args = p.parse_args(argv)
    if args.worker is not None:
        _worker(args.worker)
        return 0
    device = resolve_device(args.device)
    models = args.models or (["resnet32"] if args.quick else DEFAULT_MODELS)
    steps = args.steps or (1 if args.quick else 2)
    bc = args.batch_cifar or (8 if args.quick else 128)
    bi = args.batch_imagenet or (2 if args.quick else 16)
    methods = parse_methods(args.methods, OPTIMIZERS)
    unknown = [m for m in models if m not in INPUT_SHAPES]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(INPUT_SHAPES)}")

    results: dict[str, dict[str, Any]] = {}
    batches: dict[str, int] = {}
    t_start = time.perf_counter()
    for model in models:
        batch = bc if INPUT_SHAPES[model][0][1] <= 64 else bi
        batches[model] = batch
        results[model] = {}
        for m in methods:
            t0 = time.perf_counter()
            res = _run_fresh(model, m, batch, steps, str(device))
            results[model][m.label] = res
            note = res.get("error", f"state {_mib(res.get('state_bytes', 0))} MiB")
            print(
                f"  {model} / {m.label}: {note}  ({time.perf_counter() - t0:.0f} s, "
                f"total {time.perf_counter() - t_start:.0f} s)",
                flush=True,
            )

    rows = []
    for model, per in results.items():
        sgd = per.get("sgd", {})
        for m in methods:
            res = per[m.label]
            if "error" in res:
                rows.append([model, "–", m.label, "error", "–", "–", "–"])
                continue
            st = res["state_bytes"]
            rs = f"{st / sgd['state_bytes']:.3f}×" if sgd.get("state_bytes") else "–"
            rp = f"{res['peak_bytes'] / sgd['peak_bytes']:.2f}×" if sgd.get("peak_bytes") else "–"
            peak = [_mib(res["peak_bytes"]), rp]
            rows.append([model, f"{res['params'] / 1e6:.2f} M", m.label, _mib(st), rs, *peak])
    checks = check_targets(results, methods)
    peak_kind = (
        "CUDA max allocated" if device.type == "cuda" else "peak RSS (VmHWM) over the baseline"
    )
    md = markdown_table(
        [
            "model",
            "params",
            "method",
            "opt. state (MiB)",
            "state / SGD",
            "peak step Δ (MiB)",
            "peak / SGD",
        ],
        rows,
    )
    lines = [
        f"Batch per model: {batches}; {steps} training step(s) per method, each method in a "
        f"fresh process; peak = {peak_kind}, from before the optimizer was built.",
        "",
        md,
        "",
        "## Targets",
        "",
    ]
    for c in checks:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c["passed"]]
        lines.append(f"- {verdict} — {c['target']} — {c['model']} / {c['method']}: {c['detail']}")
    absent = [t for t in WHOLE_STATE_MODELS if t not in results]
    if absent:
        lines.append(f"- n/a — whole state ≤ {WHOLE_STATE_LIMIT}× SGD: {absent} not measured")
    payload = {
        "config": {
            "models": models,
            "methods": [m.label for m in methods],
            "batch": batches,
            "steps": steps,
            "quick": args.quick,
            "peak_measure": peak_kind,
        },
        "results": results,
        "targets": checks,
    }
    write_results(
        "memory",
        payload,
        "\n".join(lines),
        device,
        args.out,
        title="Optimizer state and peak step memory relative to SGD",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
