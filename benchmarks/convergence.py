"""Benchmark 5: convergence on real MNIST — train loss and held-out accuracy per epoch and time.

Every method trains the small CNN (:func:`nysact.train.models.small_cnn`) on the 8k/2k split
of the real MNIST test set (8000 images to train on, 2000 held out), for ``--epochs`` epochs,
batch 128, cosine learning-rate schedule, once per seed, with each optimizer at its paper
defaults (:data:`nysact.train.optimizers.PAPER_DEFAULTS`). The training loop is the project's
trainer (:func:`nysact.train.trainer.train`), so the per-epoch metrics are the harness's:
train loss, held-out accuracy, epoch wall time (training only, not the evaluation).

Methods: SGD, Adam, NysAct-S and NysAct-G with both Nyström variants (``nystrom="tropp"``, the
default, and ``nystrom="paper"``, Alg. 1), FOOF, KFAC, Eva. A method is written ``name`` or
``name:key=value,...`` (e.g. ``nysact-s:nystrom=paper``); names not registered in this
version are skipped with a message.

Decisions where the issue is silent: the 8k/2k split is drawn once (``--split-seed``) and
shared by all methods and seeds, so that every run is scored on the same 2000 images; the
seeds vary the initialisation and the data order. Default 3 epochs and 3 seeds: the 27 runs
take about 7–10 minutes on the project's 2-core CPU.

Writes ``convergence-<device>.json/.md`` (final held-out accuracy mean ± std, final train
loss, training time and its ratio to SGD's, and every run's per-epoch metrics) and the plot
``convergence-<device>.png`` (train loss and held-out accuracy against epoch and against
wall-clock time, mean over seeds with ± std bands). Run ``python -m benchmarks.convergence
--help``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from itertools import accumulate
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    MethodSpec,
    base_parser,
    default_mnist_dir,
    markdown_table,
    parse_methods,
    resolve_device,
    write_results,
)
from nysact.train.datasets import get_dataset, split_dataset
from nysact.train.optimizers import OPTIMIZERS
from nysact.train.trainer import TrainConfig, train

__all__ = ["DEFAULT_METHODS", "FAMILY_METHODS", "main", "summarise"]

DEFAULT_METHODS = [
    "sgd",
    "adam",
    "nysact-s",
    "nysact-s:nystrom=paper",
    "nysact-g",
    "nysact-g:nystrom=paper",
    "foof",
    "kfac",
    "eva",
]
#: The rest of the family (``--family``), with the learning rates of the MNIST smoke test
#: (tests/test_mnist_smoke.py, chosen there on three seeds and documented): QNG 0.05,
#: AdaHessian 0.08, SketchySGD rank 20 every 50 steps with momentum 0.9; the others at their
#: defaults. SGD comes first as the time reference.
FAMILY_METHODS = [
    "sgd",
    "mac",
    "adaact",
    "shampoo",
    "ginger",
    "qng:lr=0.05",
    "adahessian:lr=0.08",
    "sketchysgd:rank=20,inv_every=50,momentum=0.9",
]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(runs: dict[str, list[list[dict[str, Any]]]]) -> dict[str, dict[str, float]]:
    """Per method: final held-out accuracy and train loss (mean, std over seeds), train time.

    Parameters
    ----------
    runs : dict
        ``runs[label][seed index]`` = the trainer's per-epoch metrics of that run.

    Returns
    -------
    dict
        ``test_acc``, ``test_acc_std``, ``train_loss``, ``train_loss_std``, ``seconds``
        (training time summed over epochs, mean over seeds) and ``time_vs_sgd`` (None without
        an ``sgd`` row) per label.
    """
    out: dict[str, dict[str, Any]] = {}
    for label, seeds in runs.items():
        acc = _mean_std([h[-1]["test_acc"] for h in seeds])
        loss = _mean_std([h[-1]["train_loss"] for h in seeds])
        secs = statistics.fmean(sum(e["epoch_seconds"] for e in h) for h in seeds)
        out[label] = {
            "test_acc": acc[0],
            "test_acc_std": acc[1],
            "train_loss": loss[0],
            "train_loss_std": loss[1],
            "seconds": secs,
        }
    base = out.get("sgd", {}).get("seconds")
    for rec in out.values():
        rec["time_vs_sgd"] = rec["seconds"] / base if base else None
    return out


def _plot(runs: dict[str, list[list[dict[str, Any]]]], path: Path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for k, label in enumerate(runs):
        seeds = runs[label]
        n = min(len(h) for h in seeds)
        epochs = np.arange(1, n + 1)
        wall = np.mean([list(accumulate(e["epoch_seconds"] for e in h[:n])) for h in seeds], axis=0)
        style = {"color": f"C{k % 10}", "ls": "-" if k < 10 else "--", "marker": "o", "ms": 3}
        for row, (key, name) in enumerate(
            (("train_loss", "train loss"), ("test_acc", "held-out accuracy"))
        ):
            vals = np.array([[e[key] for e in h[:n]] for h in seeds])
            mean, std = vals.mean(axis=0), vals.std(axis=0)
            for col, xs in enumerate((epochs, wall)):
                ax = axes[row][col]
                ax.plot(xs, mean, label=label, **style)
                ax.fill_between(xs, mean - std, mean + std, color=style["color"], alpha=0.15)
                ax.set_xlabel("epoch" if col == 0 else "training wall-clock time (s)")
                ax.set_ylabel(name)
                if key == "train_loss":
                    ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    for row in axes:
        row[0].xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"Small CNN on real MNIST ({split} split): mean over seeds, ± std bands")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); returns the exit status."""
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--mnist-dir", type=Path, default=default_mnist_dir())
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="optimizer names, or name:key=value,... (unregistered names are skipped; "
        "default: SGD, Adam, NysAct and its baselines)",
    )
    p.add_argument(
        "--family",
        action="store_true",
        help="the rest of the family instead (FAMILY_METHODS); results are written as "
        "convergence-family-<device>",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick 0)")
    p.add_argument("--epochs", type=int, default=None, help="default 3 (quick 1)")
    p.add_argument("--n-train", type=int, default=None, help="default 8000 (quick 1000)")
    p.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="held-out images (default the other 2000; quick 500)",
    )
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--split-seed", type=int, default=0)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (1 if args.quick else 3)
    n_train = args.n_train or (1000 if args.quick else 8000)
    wanted = args.methods or (FAMILY_METHODS if args.family else DEFAULT_METHODS)
    methods: list[MethodSpec] = parse_methods(wanted, OPTIMIZERS)
    name = "convergence-family" if args.family else "convergence"
    out_dir = RESULTS if args.out is None else args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    data = get_dataset(
        "mnist", args.mnist_dir, split_from="test", n_train=n_train, seed=args.split_seed
    )
    n_test = args.n_test or (500 if args.quick else None)
    if n_test is not None:
        data = data._replace(test=split_dataset(data.test, n_test, seed=None)[0])
    n_held = len(data.test)  # type: ignore[arg-type]
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    total, done, t0 = len(methods) * len(seeds), 0, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nysact-convergence-") as tmp:
        for m in methods:
            for seed in seeds:
                done += 1
                print(f"[{done}/{total}] {m.label} seed {seed}", flush=True)
                cfg = TrainConfig(
                    dataset="mnist",
                    data_dir=str(args.mnist_dir),
                    split_from="test",
                    n_train=n_train,
                    model="small_cnn",
                    optimizer=m.name,
                    optimizer_args=dict(m.overrides),
                    epochs=epochs,
                    batch_size=args.batch,
                    seed=seed,
                    device=str(device),
                    out_dir=str(Path(tmp) / f"{done}"),
                    quiet=True,
                )
                runs.setdefault(m.label, []).append(train(cfg, data=data))
        elapsed = time.perf_counter() - t0
    summary = summarise(runs)
    plot = out_dir / f"{name}-{device.type}.png"
    _plot(runs, plot, f"{n_train}/{n_held}")
    rows = []
    for label, s in summary.items():
        ratio = f"{s['time_vs_sgd']:.2f}×" if s["time_vs_sgd"] else "–"
        rows.append(
            [
                label,
                f"{100 * s['test_acc']:.2f} ± {100 * s['test_acc_std']:.2f}",
                f"{s['train_loss']:.4f} ± {s['train_loss_std']:.4f}",
                f"{s['seconds']:.1f}",
                ratio,
            ]
        )
    md = markdown_table(
        ["method", "held-out acc (%)", "final train loss", "train time (s)", "time / SGD"], rows
    )
    text = "\n".join(
        [
            f"small_cnn, {n_train}/{n_held} split of the MNIST test set (split seed "
            f"{args.split_seed}), {epochs} epoch(s), batch {args.batch}, cosine schedule, paper "
            f"defaults per optimizer; seeds {seeds}; mean ± std over seeds. Whole run "
            f"{elapsed:.0f} s.",
            "",
            md,
            "",
            f"Plot: {plot.name}",
        ]
    )
    payload = {
        "config": {
            "methods": [m.label for m in methods],
            "seeds": seeds,
            "epochs": epochs,
            "n_train": n_train,
            "n_test": n_held,
            "batch": args.batch,
            "split_seed": args.split_seed,
            "mnist_dir": str(args.mnist_dir),
            "quick": args.quick,
        },
        "summary": summary,
        "runs": runs,
        "plot": plot.name,
        "elapsed_seconds": elapsed,
    }
    write_results(
        name,
        payload,
        text,
        device,
        args.out,
        title="Convergence on real MNIST: loss and held-out accuracy per epoch and time",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
