"""Training harness: resume equals the straight run, checkpoints fail loudly, CLI and compare."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from nysact.train.checkpoint import CheckpointError
from nysact.train.cli import compare_main, main
from nysact.train.datasets import get_dataset
from nysact.train.models import build_model
from nysact.train.trainer import TrainConfig, train

MNIST_DIR = Path(
    os.environ.get(
        "NYSACT_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    )
)
_TIMES = (
    "epoch_seconds",
    "seconds_statistics",
    "seconds_inverse",
    "seconds_precondition",
    "peak_memory_bytes",
)


def _cfg(tmp: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "dataset": "digits",
        "model": "small_cnn",
        "optimizer": "nysact-s",
        "epochs": 4,
        "batch_size": 64,
        "out_dir": str(tmp),
        "quiet": True,
        "optimizer_args": {"cov_every": 2, "inv_every": 10, "rank": 5},
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _strip(h: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in e.items() if k not in _TIMES} for e in h]


@pytest.mark.parametrize("optimizer", ["nysact-s", "kfac", "sgd"])
def test_resume_equals_uninterrupted_run(tmp_path: Path, optimizer: str) -> None:
    args = {} if optimizer == "sgd" else {"cov_every": 2, "inv_every": 10}
    straight = train(_cfg(tmp_path / "a", optimizer=optimizer, optimizer_args=args))
    train(_cfg(tmp_path / "b", optimizer=optimizer, optimizer_args=args), stop_after=2)
    resumed = train(_cfg(tmp_path / "b", optimizer=optimizer, optimizer_args=args), resume=True)
    assert _strip(resumed) == _strip(straight)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4]


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        train(_cfg(tmp_path / "none", epochs=1), resume=True)
    train(_cfg(tmp_path / "r", epochs=1))
    with pytest.raises(CheckpointError, match="different run"):
        train(_cfg(tmp_path / "r", epochs=2, seed=5), resume=True)
    ckpt = tmp_path / "r" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        train(_cfg(tmp_path / "r", epochs=2), resume=True)
    torch.save({"hello": 1}, ckpt)
    with pytest.raises(CheckpointError, match="not a nysact checkpoint"):
        train(_cfg(tmp_path / "r", epochs=2), resume=True)


def test_metrics_match_an_independent_evaluation(tmp_path: Path) -> None:
    """The logged test accuracy equals evaluating the checkpointed model here."""
    hist = train(_cfg(tmp_path, epochs=2, optimizer="foof", optimizer_args={"inv_every": 10}))
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    data = get_dataset("digits", seed=0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    model.load_state_dict(ckpt["model"])
    model.eval()
    mean, std = data.info.mean[0], data.info.std[0]
    with torch.no_grad():
        pred = model((data.test.images - mean) / std).argmax(1)
    acc = int((pred == data.test.labels).sum()) / len(data.test.labels)
    assert hist[-1]["test_acc"] == pytest.approx(acc, abs=1e-12)
    assert hist[-1]["optimizer_state_bytes"] > 0
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("train_loss", "test_loss", "seconds_inverse", "lr", "fallbacks"):
        assert key in rec
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["optimizer"] == "foof" and cfg["epochs"] == 2


def test_cli_help_lists_options_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in (
        "--optimizer",
        "--dataset",
        "--resume",
        "--amp",
        "--rank",
        "--damping",
        "--config",
        "--schedule",
        "--warmup-epochs",
        "--label-smoothing",
    ):
        assert opt in out


def test_cli_config_file_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text('optimizer = "sgd"\nepochs = 3\nbatch_size = 256\nlr = 0.05\n')
    assert (
        main(["--config", str(cfg), "--epochs", "1", "--out-dir", str(tmp_path / "o"), "--quiet"])
        == 0
    )
    saved = json.loads((tmp_path / "o" / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["batch_size"] == 256 and saved["optimizer"] == "sgd"
    assert saved["optimizer_args"] == {"lr": 0.05}
    with pytest.raises(SystemExit, match="unknown option"):
        bad = tmp_path / "bad.toml"
        bad.write_text("epoch = 3\n")
        main(["--config", str(bad), "--out-dir", str(tmp_path / "x")])


def test_compare_writes_table_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    assert (
        compare_main(
            [
                "--optimizers",
                "sgd",
                "nysact-s",
                "--epochs",
                "1",
                "--seeds",
                "0",
                "1",
                "--out-dir",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    table = (out / "table.md").read_text()
    assert "| sgd |" in table and "| nysact-s |" in table
    summary = json.loads((out / "summary.json").read_text())
    accs = [
        json.loads((out / f"nysact-s-seed{s}" / "metrics.jsonl").read_text().splitlines()[-1])[
            "test_acc"
        ]
        for s in (0, 1)
    ]
    assert summary["nysact-s"]["test_acc_mean"] == pytest.approx(100 * sum(accs) / 2)
    for name in ("train_loss_vs_epoch", "test_acc_vs_time"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_on_real_mnist_directory(tmp_path: Path) -> None:
    assert MNIST_DIR.is_dir(), f"MNIST data folder missing: {MNIST_DIR}"
    hist = train(
        TrainConfig(
            dataset="mnist",
            data_dir=str(MNIST_DIR),
            split_from="test",
            n_train=8000,
            model="small_cnn",
            optimizer="nysact-g",
            epochs=1,
            out_dir=str(tmp_path),
            quiet=True,
        )
    )
    assert hist[0]["test_acc"] > 0.9


def test_profile_trace_has_the_labelled_phases(tmp_path: Path) -> None:
    """--profile writes a Chrome/TensorBoard trace whose events include every optimizer phase."""
    assert (
        main(
            [
                "--optimizer",
                "kfac",
                "--epochs",
                "1",
                "--out-dir",
                str(tmp_path),
                "--quiet",
                "--profile",
                "--cov-every",
                "1",
                "--inv-every",
                "2",
            ]
        )
        == 0
    )
    traces = list((tmp_path / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    for phase in ("statistics", "inverse", "precondition", "update"):
        assert f"## nysact:{phase} ##" in names, phase
