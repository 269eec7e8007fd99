"""The training loop: one run of one optimizer on one dataset/model, with everything it leaves.

Every run writes to its output directory:

* ``config.json`` — the resolved configuration;
* ``metrics.jsonl`` — one JSON line per epoch: train/test loss and accuracy, epoch wall time,
  optimizer seconds split into statistics / inverse refresh / preconditioning, peak memory
  (CUDA max allocated on GPU; on CPU the resident set size sampled after every step, which
  includes the data and the interpreter), the optimizer state's bytes (exact), learning rate,
  fallback and skipped-update counts;
* ``checkpoint.pt`` — each epoch, atomically: model, optimizer (all curvature state),
  scheduler, RNG states, epoch. ``resume=True`` continues from it; on CPU the resumed run's
  metrics (except times) equal the uninterrupted run's, because the data order and
  augmentation of epoch ``e`` are drawn from generators seeded by ``(seed, e)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nysact.optim import ComposedOptimizer
from nysact.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from nysact.train.datasets import ArrayDataset, DatasetSplits, get_dataset
from nysact.train.models import build_model
from nysact.train.optimizers import OPTIMIZERS, build_optimizer
from nysact.train.transforms import (
    Compose,
    cifar_train_transform,
    eval_transform,
    soft_target_cross_entropy,
)

__all__ = ["TrainConfig", "train"]

_SCHEDULES = ("cosine", "multistep", "constant")


@dataclass(kw_only=True)
class TrainConfig:
    """Everything that defines a run (validated; saved as ``config.json``).

    Attributes
    ----------
    dataset, data_dir, split_from, n_train
        See :func:`nysact.train.datasets.get_dataset` (``split_from="test"`` with
        ``n_train=8000`` is the MNIST 8k/2k split of the tests).
    model : str
        A name of :data:`nysact.train.models.MODELS`.
    optimizer : str
        A name of :data:`nysact.train.optimizers.OPTIMIZERS`.
    optimizer_args : dict
        Overrides of the optimizer's (paper) defaults, e.g. ``{"lr": 0.05, "rank": 20}``.
    epochs, batch_size : int
        Training length and batch size.
    schedule : {"cosine", "multistep", "constant"}
        Per-iteration learning-rate schedule after ``warmup_epochs`` of linear warm-up;
        ``milestones`` (epochs) and ``gamma`` for "multistep".
    label_smoothing : float
        Cross-entropy label smoothing.
    augment : bool
        Standard augmentation (CIFAR: crop with padding 4 and flip); digits/MNIST have none.
    seed : int
        Seeds model init, data order and augmentation.
    device : str
        "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    amp : bool
        Mixed precision (bf16 on CPU, fp16 with a GradScaler on CUDA).
    out_dir : str
        Output directory.
    quiet : bool
        Only one line per epoch (no progress bar).
    profile : bool
        Run ``torch.profiler`` over the first steps, ``profile_schedule = (wait, warmup,
        active)``, with CPU (and CUDA) activities, and write the trace with
        ``tensorboard_trace_handler`` to ``out_dir/profile`` (open it with TensorBoard's
        torch-tb-profiler plugin). The optimizer phases carry ``record_function`` labels
        ``## nysact:statistics ##``, ``## nysact:inverse ##``, ``## nysact:precondition ##``
        and ``## nysact:update ##``.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    split_from: str | None = None
    n_train: int | None = None
    model: str = "small_cnn"
    optimizer: str = "nysact-s"
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    out_dir: str = "runs/run"
    quiet: bool = False
    profile: bool = False
    profile_schedule: list[int] = field(default_factory=lambda: [1, 1, 3])

    def __post_init__(self) -> None:
        if self.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(
                f"Invalid optimizer: {self.optimizer!r}. Choose from {sorted(OPTIMIZERS)}."
            )
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Invalid {name}: {v!r}. Must be an int >= 1.")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"Invalid schedule: {self.schedule!r}. Must be one of {_SCHEDULES}.")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(
                f"Invalid warmup_epochs: {self.warmup_epochs!r}. Must be in [0, epochs]."
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"Invalid label_smoothing: {self.label_smoothing!r}. Must be in [0, 1)."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Invalid device: {spec!r}: CUDA is not available on this machine")
    return dev


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
        if cfg.schedule == "multistep":
            epoch = step // steps_per_epoch
            return float(cfg.gamma ** sum(epoch >= m for m in cfg.milestones))
        return 1.0

    return factor


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc; falls back to the process-wide maximum)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):  # pragma: no cover - non-Linux
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state dict (curvature state included)."""
    seen: set[int] = set()

    def walk(x: Any) -> int:
        if isinstance(x, torch.Tensor):
            if id(x) in seen:
                return 0
            seen.add(id(x))
            return x.numel() * x.element_size()
        if isinstance(x, dict):
            return sum(walk(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        return 0

    sd = opt.state_dict()
    sd.get("nysact", {}).pop("generator", None)
    return walk(sd)


def _batches(
    ds: Any, batch_size: int, device: torch.device, generator: torch.Generator | None
) -> Any:
    if isinstance(ds, ArrayDataset):
        n = len(ds)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield ds.images[idx].to(device), ds.labels[idx].to(device)
        return
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        num_workers=0,
    )
    for x, y in loader:
        yield x.to(device), torch.as_tensor(y).to(device)


def _phase_seconds(opt: torch.optim.Optimizer) -> dict[str, float]:
    if isinstance(opt, ComposedOptimizer):
        return dict(opt.preconditioner.seconds)
    return {"statistics": 0.0, "inverse": 0.0, "precondition": 0.0}


def _evaluate(
    model: nn.Module, ds: Any, cfg: TrainConfig, device: torch.device, tf: Compose
) -> tuple[float, float]:
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for x, y in _batches(ds, 1024, device, None):
            logits = model(tf(x, y)[0])
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += int(y.numel())
    return loss_sum / total, correct / total


def _progress(msg: str, done: int, total: int, quiet: bool) -> None:
    if quiet or not sys.stderr.isatty():
        return
    width = 30
    fill = int(width * done / max(1, total))
    sys.stderr.write(f"\r{msg} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}")
    sys.stderr.flush()


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    data: DatasetSplits | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) one training run; return the per-epoch metrics.

    Parameters
    ----------
    cfg : TrainConfig
        The run.
    resume : bool
        Continue from ``cfg.out_dir/checkpoint.pt`` (which must exist and match ``cfg``).
    data : DatasetSplits, optional
        Already-opened data (the comparison shares one copy across runs).
    stop_after : int, optional
        Stop after this epoch (1-based) as if interrupted; the checkpoint allows a resume.

    Returns
    -------
    list of dict
        The metrics of every epoch of the run (earlier ones read back when resuming).

    Raises
    ------
    CheckpointError
        When resuming from a missing, corrupt or mismatched checkpoint.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    splits = data or get_dataset(
        cfg.dataset, cfg.data_dir, split_from=cfg.split_from, n_train=cfg.n_train, seed=cfg.seed
    )
    info = splits.info
    model = build_model(cfg.model, num_classes=info.num_classes, **_model_kwargs(cfg, info)).to(
        device
    )
    opt = build_optimizer(cfg.optimizer, model, **cfg.optimizer_args)
    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)  # type: ignore[arg-type]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps_per_epoch))
    train_tf = (
        cifar_train_transform(info.mean, info.std)
        if cfg.augment and info.name in ("cifar10", "cifar100")
        else eval_transform(info.mean, info.std)
    )
    test_tf = eval_transform(info.mean, info.std)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt_path = out / "checkpoint.pt"
    if resume:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        saved = ckpt.get("config", {})
        free = ("epochs", "quiet", "device", "profile", "profile_schedule")
        same = {k: v for k, v in cfg.to_dict().items() if k not in free}
        diff = sorted(k for k, v in same.items() if saved.get(k) != v)
        if diff:
            raise CheckpointError(f"{ckpt_path} was written by a different run: {diff} differ")
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"{ckpt_path} does not fit this model/optimizer: {err}") from err
        set_rng_state(ckpt["rng"])
        start_epoch = int(ckpt["epoch"]) + 1
        history = list(ckpt["history"])
    else:
        (out / "metrics.jsonl").write_text("")
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    use_amp = cfg.amp
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type) if use_amp and device.type == "cuda" else None
    if scaler is not None and isinstance(opt, ComposedOptimizer):
        opt.preconditioner.capture.loss_scale = lambda: scaler.get_scale()

    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    for epoch in range(start_epoch, last):
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        aug = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch + 7)
        _set_generator(train_tf, aug)
        before = _phase_seconds(opt)
        t0 = time.perf_counter()
        seen, correct, loss_sum = 0, 0, 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        peak_rss = _rss_bytes()
        prof = _profiler(cfg, out, device) if cfg.profile and epoch == start_epoch else None
        if prof is not None:
            prof.start()
        for step, (x, y) in enumerate(_batches(splits.train, cfg.batch_size, device, gen)):
            opt.zero_grad(set_to_none=True)
            xb, target = train_tf(x, y)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(xb)
                if target.is_floating_point():  # soft targets (mixup / cutmix)
                    loss = soft_target_cross_entropy(logits.float(), target)
                else:
                    loss = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
            if scaler is not None:
                torch.autograd.backward(scaler.scale(loss))
                scaler.step(opt)
                scaler.update()
            else:
                torch.autograd.backward(loss)
                opt.step()
            sched.step()
            n = int(y.numel())
            seen += n
            loss_sum += float(loss.detach()) * n
            correct += int((logits.detach().argmax(1) == y).sum())
            if device.type != "cuda":
                peak_rss = max(peak_rss, _rss_bytes())
            _progress(f"epoch {epoch + 1}/{cfg.epochs}", step + 1, steps_per_epoch, cfg.quiet)
            if prof is not None:
                prof.step()
        if prof is not None:
            prof.stop()
        wall = time.perf_counter() - t0
        test_loss, test_acc = _evaluate(model, splits.test, cfg, device, test_tf)
        after = _phase_seconds(opt)
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_seconds": wall,
            "seconds_statistics": after["statistics"] - before["statistics"],
            "seconds_inverse": after["inverse"] - before["inverse"],
            "seconds_precondition": after["precondition"] - before["precondition"],
            # CUDA: max allocated in the epoch; CPU: peak RSS sampled after each step.
            "peak_memory_bytes": (
                int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else peak_rss
            ),
            "optimizer_state_bytes": _state_bytes(opt),
            "lr": float(opt.param_groups[0]["lr"]),
        }
        if isinstance(opt, ComposedOptimizer):
            rec["fallbacks"] = opt.preconditioner.fallbacks
            rec["skipped_updates"] = opt.preconditioner.skipped_updates
        history.append(rec)
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(rec) + "\n")
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": rng_state(),
                "epoch": epoch,
                "config": cfg.to_dict(),
                "history": history,
            },
        )
        if not cfg.quiet and sys.stderr.isatty():
            sys.stderr.write("\n")
        print(
            f"[{cfg.optimizer}] epoch {epoch + 1}/{cfg.epochs}  loss {rec['train_loss']:.4f}  "
            f"acc {rec['train_acc']:.4f}  test_acc {test_acc:.4f}  "
            f"{wall:.1f}s ({seen / wall:.0f} img/s)",
            flush=True,
        )
    return history


def _profiler(cfg: TrainConfig, out: Path, device: torch.device) -> torch.profiler.profile:
    wait, warmup, active = cfg.profile_schedule
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(
        activities=acts,
        schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(str(out / "profile")),
        record_shapes=False,
    )


def _set_generator(tf: Compose, gen: torch.Generator) -> None:
    for t in getattr(tf, "transforms", []):
        if hasattr(t, "generator"):
            t.generator = gen


def _model_kwargs(cfg: TrainConfig, info: Any) -> dict[str, Any]:
    if cfg.model == "small_cnn":
        return {"in_channels": info.channels, "image_size": info.image_size}
    if cfg.model == "mlp":
        return {"in_features": info.channels * info.image_size**2}
    return {}
