"""Reader of the standard MNIST idx files (``.gz`` or not), with optional MD5 verification.

The idx format (LeCun et al.): a big-endian header ``0x00 0x00 <dtype code> <ndim>`` followed by
``ndim`` big-endian uint32 sizes and the data. Images are ``idx3`` uint8 (n × 28 × 28), labels
``idx1`` uint8 (n). Nothing is ever downloaded: the files must be in the given directory.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["MNIST_FILES", "MnistFormatError", "load_mnist", "read_idx"]

#: Stems of the four standard files, by split.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class MnistFormatError(ValueError):
    """A missing, truncated or malformed idx file; the message names the path."""


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed) into a numpy array.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    numpy.ndarray
        The data with the shape stored in the header.

    Raises
    ------
    MnistFormatError
        If the file is missing, its magic number is not idx, or its size does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise MnistFormatError(f"idx file not found: {path}")
    try:
        raw = _read_bytes(path)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise MnistFormatError(f"cannot read idx file {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise MnistFormatError(f"{path} is not an idx file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MnistFormatError(f"{path}: truncated idx header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise MnistFormatError(
            f"{path}: header says shape {shape} ({expected} bytes of data), "
            f"file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise MnistFormatError(
        f"MNIST directory {directory} has no {stem} (or {stem}.gz); expected the standard idx "
        f"files {', '.join(s for pair in MNIST_FILES.values() for s in pair)}"
    )


def _verify_md5(directory: Path, files: list[Path]) -> None:
    sums = directory / "MD5SUMS"
    if not sums.is_file():
        return
    table = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            table[parts[1].lstrip("*")] = parts[0]
    for f in files:
        want = table.get(f.name)
        if want is not None and hashlib.md5(f.read_bytes()).hexdigest() != want:
            raise MnistFormatError(f"{f}: MD5 does not match {sums}")


def load_mnist(directory: str | Path, split: str = "test") -> tuple[Tensor, Tensor]:
    """Load an MNIST split as float images in [0, 1] (n × 1 × 28 × 28) and int64 labels.

    If the directory has an ``MD5SUMS`` file (``md5sum`` format), the files are checked
    against it.

    Parameters
    ----------
    directory : str or Path
        Directory holding the idx files (``.gz`` or not).
    split : {"train", "test"}
        Which pair of files.

    Returns
    -------
    images : Tensor
        float32, shape (n, 1, 28, 28), values in [0, 1].
    labels : Tensor
        int64, shape (n,).

    Raises
    ------
    MnistFormatError
        If the directory or a file is missing or malformed, or the counts differ.
    ValueError
        If ``split`` is unknown.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"Invalid split: {split!r}. Must be one of {sorted(MNIST_FILES)}.")
    directory = Path(directory)
    if not directory.is_dir():
        raise MnistFormatError(
            f"MNIST directory not found: {directory} (expected a directory with the idx files "
            f"{' and '.join(MNIST_FILES[split])}, optionally .gz)"
        )
    img_path, lbl_path = (_find(directory, s) for s in MNIST_FILES[split])
    _verify_md5(directory, [img_path, lbl_path])
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise MnistFormatError(
            f"{img_path} / {lbl_path}: shapes {images.shape} and {labels.shape} do not form "
            "an image set (n × H × W) with n labels"
        )
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
