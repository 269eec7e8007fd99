"""MNIST idx reader: the real test set (md5-checked) and malformed files written here."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nysact.train.mnist import MnistFormatError, load_mnist, read_idx

MNIST_DIR = Path(
    os.environ.get(
        "NYSACT_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    )
)

# Published class counts of the MNIST test set (LeCun et al.), an independent oracle.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_real_mnist_test_set() -> None:
    assert MNIST_DIR.is_dir(), f"MNIST data folder missing: {MNIST_DIR} (set NYSACT_MNIST_DIR)"
    x, y = load_mnist(MNIST_DIR, "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.bincount().tolist() == MNIST_TEST_COUNTS
    # the pixels equal the raw bytes / 255, read independently with gzip + numpy
    with gzip.open(MNIST_DIR / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(10000, 28, 28)
    np.testing.assert_array_equal(x[:, 0].numpy(), raw.astype(np.float32) / 255.0)


@pytest.mark.parametrize("gz", [True, False])
def test_roundtrip_written_files(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    lbls = rng.integers(0, 10, size=7, dtype=np.uint8)
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", imgs, gz=gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", lbls, gz=gz)
    x, y = load_mnist(tmp_path, "test")
    np.testing.assert_array_equal((x[:, 0].numpy() * 255).round().astype(np.uint8), imgs)
    np.testing.assert_array_equal(y.numpy(), lbls)


def test_md5_mismatch_is_an_error(tmp_path: Path) -> None:
    imgs = np.zeros((2, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs, gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8), gz=False)
    good = hashlib.md5((tmp_path / "t10k-labels-idx1-ubyte").read_bytes()).hexdigest()
    (tmp_path / "MD5SUMS").write_text(
        f"{'0' * 32}  t10k-images-idx3-ubyte\n{good}  t10k-labels-idx1-ubyte\n"
    )
    with pytest.raises(MnistFormatError, match="t10k-images-idx3-ubyte: MD5"):
        load_mnist(tmp_path, "test")


def test_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(MnistFormatError, match="MNIST directory not found"):
        load_mnist(tmp_path / "nope", "test")
    with pytest.raises(MnistFormatError, match="has no t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, "test")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(MnistFormatError, match="not an idx file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(MnistFormatError, match="header says shape"):
        read_idx(short)
    with pytest.raises(ValueError, match="Invalid split"):
        load_mnist(tmp_path, "validation")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8), gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8), gz=False)
    with pytest.raises(MnistFormatError, match="do not form"):
        load_mnist(tmp_path, "test")
