"""Smoke and oracle tests of the benchmark programs (benchmarks 2–5 and the runner).

Each program runs with ``--quick`` (and smaller options where the quick run is still heavy)
into a temporary ``--out``; the JSON must carry the expected keys with finite positive numbers.
The measuring functions are checked against independent oracles: torch's SGD/Adam state sizes
counted by hand, Eckart–Young (no rank-r matrix beats the truncated eigendecomposition), an
exactly low-rank covariance that the Tropp Nyström recovers, SciPy-free dense eigenvalues.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks import approximation, convergence, memory, refresh
from benchmarks.common import MethodSpec, default_mnist_dir, parse_methods
from nysact.linalg import nystrom_tropp
from nysact.train.models import build_model
from nysact.train.optimizers import OPTIMIZERS
from nysact.train.trainer import tensor_bytes

ROOT = Path(__file__).resolve().parents[1]
needs_mnist = pytest.mark.skipif(
    not default_mnist_dir().is_dir(), reason=f"MNIST not found at {default_mnist_dir()}"
)


def _load(out: Path, name: str) -> dict[str, Any]:
    md = out / f"{name}-cpu.md"
    assert md.is_file() and md.read_text().startswith("# ")
    data: dict[str, Any] = json.loads((out / f"{name}-cpu.json").read_text())
    assert {"cpu", "cores", "torch", "device"} <= set(data["machine"])
    return data


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# --------------------------------------------------------------------------------------------
# common
# --------------------------------------------------------------------------------------------


def test_parse_methods_overrides_and_skips_unregistered(capsys: pytest.CaptureFixture[str]) -> None:
    specs = parse_methods(
        ["sgd", "nysact-s:nystrom=paper,rank=20", "no-such-optimizer"], OPTIMIZERS
    )
    assert specs == [
        MethodSpec("sgd", "sgd", {}),
        MethodSpec("nysact-s:nystrom=paper,rank=20", "nysact-s", {"nystrom": "paper", "rank": 20}),
    ]
    assert "no-such-optimizer" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse_methods(["sgd:lr"], OPTIMIZERS)


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------


def test_memory_state_bytes_match_hand_counts() -> None:
    dev = torch.device("cpu")
    sgd = memory.measure("resnet32", MethodSpec("sgd", "sgd"), 2, 1, dev)
    adam = memory.measure("resnet32", MethodSpec("adam", "adam"), 2, 1, dev)
    nys = memory.measure("resnet32", MethodSpec("nysact-s", "nysact-s"), 2, 1, dev)
    model = build_model("resnet32", num_classes=10)
    params = list(model.parameters())
    n_bytes = sum(p.numel() * 4 for p in params)
    # SGD with momentum: one float32 buffer per parameter; Adam: two, plus a float32 step each.
    assert sgd["state_bytes"] == n_bytes == sgd["param_bytes"]
    assert adam["state_bytes"] == 2 * n_bytes + 4 * len(params)
    # NysAct's per-layer curvature state is part of what it holds beyond SGD's momentum.
    assert sum(nys["layer_state_bytes"].values()) == nys["state_bytes"] - sgd["state_bytes"]
    assert [row[0] for row in nys["layers"]] == list(nys["layer_state_bytes"])
    # In this process the RSS peak over the baseline may be 0 (memory freed by earlier tests is
    # reused); the benchmark measures each configuration in a fresh process for that reason.
    for x in (sgd["peak_bytes"], nys["peak_bytes"]):
        assert isinstance(x, int) and x >= 0


def test_tensor_bytes_counts_each_tensor_once_without_rng_states() -> None:
    t = torch.zeros(3)  # 12 bytes
    state = {
        "a": t,
        "b": [t, (torch.zeros(2, dtype=torch.int64), 1.5)],  # t again, 16 bytes
        "generator": torch.zeros(100, dtype=torch.uint8),
        "layers": [{"generator": torch.zeros(5056, dtype=torch.uint8), "ema": torch.zeros(2, 2)}],
    }
    assert tensor_bytes(state) == 12 + 16 + 16


def test_memory_bound_by_hand() -> None:
    layers = [["a", 1, 27], ["b", 2, 100]]
    # 2·r·Σ g·p + 2·r²·Σ g with r = 10: 2·10·(27 + 200) + 2·100·3
    assert memory.state_bound_floats(layers, 10) == 2 * 10 * 227 + 600


def test_memory_main_quick(tmp_path: Path) -> None:
    memory.main(["--quick", "--methods", "sgd", "nysact-s", "--out", str(tmp_path)])
    data = _load(tmp_path, "memory")
    res = data["results"]["resnet32"]
    assert set(res) == {"sgd", "nysact-s"}
    for r in res.values():
        for k in ("state_bytes", "peak_bytes", "params", "param_bytes"):
            assert _positive(r[k]), (k, r[k])
    targets = {t["target"]: t for t in data["targets"]}
    extra = targets["extra state ≤ 2·r·Σp + 2r² per layer"]
    assert extra["method"] == "nysact-s" and isinstance(extra["passed"], bool)


# --------------------------------------------------------------------------------------------
# refresh
# --------------------------------------------------------------------------------------------


def test_refresh_inputs() -> None:
    a = refresh.psd_covariance(50, torch.Generator().manual_seed(0), torch.float64)
    assert torch.equal(a, a.mT)
    assert float(torch.linalg.eigvalsh(a).min()) > -1e-12
    assert [refresh.kfac_out_dim(d) for d in (64, 576, 4608)] == [64, 64, 512]


def test_refresh_main_quick(tmp_path: Path) -> None:
    refresh.main(["--quick", "--out", str(tmp_path)])
    data = _load(tmp_path, "refresh")
    secs = data["seconds"]
    assert set(secs) == {"64", "576"}
    want = {"foof", "kfac"} | {f"nysact-{v}/r={r}" for v in ("tropp", "paper") for r in (5, 10)}
    for per_d in secs.values():
        assert set(per_d) == want
        assert all(_positive(t) for t in per_d.values())
    assert data["target"]["d"] == refresh.TARGET_D


# --------------------------------------------------------------------------------------------
# approximation
# --------------------------------------------------------------------------------------------


def test_spectral_norm_both_paths() -> None:
    rng = np.random.default_rng(0)
    for n in (40, 700):
        m = rng.standard_normal((n, n))
        m = m + m.T
        want = float(np.abs(np.linalg.eigvalsh(m)).max())
        got = approximation.spectral_norm(torch.from_numpy(m))
        assert got == pytest.approx(want, rel=1e-6)


def test_errors_vanish_for_an_exactly_low_rank_covariance() -> None:
    """Tropp et al. 2017: Â = A when rank(A) ≤ r and Ω is Gaussian (almost surely)."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(30, 3, generator=g, dtype=torch.float64)
    a = u @ u.mT
    omega = torch.randn(30, 6, generator=g, dtype=torch.float64)
    op = nystrom_tropp(a @ omega, omega, 1.0)
    grad = torch.randn(4, 30, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(a + torch.eye(30, dtype=torch.float64), grad.mT).mT
    norm2 = float(torch.linalg.eigvalsh(a).max())
    errs = approximation.errors(a, norm2, op, grad, exact)
    assert errs["fro"] < 1e-6 and errs["spectral"] < 1e-6 and errs["grad"] < 1e-6


@needs_mnist
def test_approximation_main_quick(tmp_path: Path) -> None:
    approximation.main(["--quick", "--train-steps", "5", "--updates", "2", "--out", str(tmp_path)])
    data = _load(tmp_path, "approximation")
    for name in data["plots"]:
        assert (tmp_path / name).stat().st_size > 1000
    assert data["layers"]
    for layer in data["layers"].values():
        assert _positive(layer["plain_grad_error"])
        assert len(layer["runs"]) == 2 * 2 * 2 * 2  # ranks × families × policies × variants
        for run in layer["runs"]:
            best = layer["best"][str(run["rank"])]
            for k in ("fro", "spectral", "grad"):
                assert _positive(run[k])
            # Eckart–Young–Mirsky: no rank-r Â is closer to Ā than its truncation.
            assert run["fro"] >= best["fro"] * (1 - 1e-4)
            assert run["spectral"] >= best["spectral"] * (1 - 1e-4)


# --------------------------------------------------------------------------------------------
# convergence
# --------------------------------------------------------------------------------------------


def test_summarise_by_hand() -> None:
    run = [{"test_acc": 0.5, "train_loss": 1.0, "epoch_seconds": 2.0}]
    runs = {
        "sgd": [[*run, {"test_acc": 0.9, "train_loss": 0.3, "epoch_seconds": 2.0}]],
        "x": [
            [{"test_acc": 0.9, "train_loss": 0.2, "epoch_seconds": 6.0}],
            [{"test_acc": 0.8, "train_loss": 0.4, "epoch_seconds": 10.0}],
        ],
    }
    s = convergence.summarise(runs)
    assert s["sgd"]["test_acc"] == 0.9 and s["sgd"]["seconds"] == 4.0
    assert s["x"]["test_acc"] == pytest.approx(0.85)
    assert s["x"]["test_acc_std"] == pytest.approx(math.sqrt(0.005))
    assert s["x"]["time_vs_sgd"] == pytest.approx(8.0 / 4.0)


@needs_mnist
def test_convergence_main_quick(tmp_path: Path) -> None:
    convergence.main(
        [
            *("--quick", "--methods", "sgd", "nysact-s", "--n-train", "256", "--n-test", "128"),
            *("--out", str(tmp_path)),
        ]
    )
    data = _load(tmp_path, "convergence")
    assert (tmp_path / data["plot"]).stat().st_size > 1000
    assert set(data["summary"]) == {"sgd", "nysact-s"}
    for s in data["summary"].values():
        assert 0 < s["test_acc"] <= 1 and _positive(s["train_loss"]) and _positive(s["seconds"])
    assert data["summary"]["sgd"]["time_vs_sgd"] == 1.0
    assert [len(h) for h in data["runs"]["nysact-s"]] == [1]


@needs_mnist
def test_convergence_family_quick_writes_its_own_file(tmp_path: Path) -> None:
    assert convergence.FAMILY_METHODS[0] == "sgd"
    assert {m.name for m in parse_methods(convergence.FAMILY_METHODS, OPTIMIZERS)} == {
        "sgd",
        "mac",
        "adaact",
        "shampoo",
        "ginger",
        "qng",
        "adahessian",
        "sketchysgd",
    }
    convergence.main(
        [
            *("--quick", "--family", "--methods", "sgd", "adahessian:lr=0.08"),
            *("--n-train", "256", "--n-test", "128", "--out", str(tmp_path)),
        ]
    )
    data = _load(tmp_path, "convergence-family")
    assert not (tmp_path / "convergence-cpu.json").exists()
    assert set(data["summary"]) == {"sgd", "adahessian:lr=0.08"}
    assert 0 < data["summary"]["adahessian:lr=0.08"]["test_acc"] <= 1


# --------------------------------------------------------------------------------------------
# runner
# --------------------------------------------------------------------------------------------


def test_run_runs_the_selected_benchmark(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "refresh", "--out", tmp_path],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refresh: ok" in proc.stdout
    assert (tmp_path / "refresh-cpu.json").is_file()


def test_step_time_reference_row_runs_beside_optimizers() -> None:
    from benchmarks import step_time

    payload = step_time.run(
        "resnet32",
        2,
        ["adahessian", "hvp-floor", "no-such-method"],
        2,
        torch.device("cpu"),
        cov_every=1,
        inv_every=2,
        warmup=1,
    )
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) == {"sgd", "adahessian", "hvp-floor"}
    assert rows["sgd"]["ratio_to_sgd"] == 1.0
    assert all(_positive(r["mean_ms"]) and _positive(r["ratio_to_sgd"]) for r in rows.values())
    # A double backward costs more than SGD's single one: the reference row does the work.
    assert rows["hvp-floor"]["ratio_to_sgd"] > 1.0
    assert rows["hvp-floor"]["phase_ms_per_step"] is None
