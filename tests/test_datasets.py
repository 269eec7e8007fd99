"""Dataset readers: tiny files in the exact on-disk formats, real digits and real MNIST."""

from __future__ import annotations

import ast
import os
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nysact.train.datasets as ds_mod
from nysact.train.datasets import (
    DIGITS_MEAN,
    DIGITS_STD,
    ArrayDataset,
    DatasetLayoutError,
    ImageFolderDataset,
    RandomResizedCrop,
    RepeatedAugmentationSampler,
    ResizeCenterCrop,
    get_dataset,
    load_cifar10,
    load_cifar100,
    load_digits_dataset,
    load_imagenet,
    load_mnist_dataset,
    split_dataset,
)
from nysact.train.mnist import MnistFormatError

MNIST_DIR = Path(
    os.environ.get(
        "NYSACT_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    )
)


# ------------------------------------------------------------------------------------------
# CIFAR: python pickles written here in the published layout
# ------------------------------------------------------------------------------------------


def _hand_image(k: int) -> list[list[list[int]]]:
    """A 3 × 32 × 32 image, as nested lists, with pixel values known by formula."""
    return [
        [[(k * 11 + c * 85 + i * 7 + j * 3) % 256 for j in range(32)] for i in range(32)]
        for c in range(3)
    ]


def _hand_row(img: list[list[list[int]]]) -> list[int]:
    """The published layout: 1024 red values row by row, then 1024 green, then 1024 blue."""
    row = []
    for c in range(3):
        for i in range(32):
            for j in range(32):
                row.append(img[c][i][j])
    return row


def _write_pickle(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_batch(ks: list[int], label_keys: dict[bytes, list[int]]) -> dict[bytes, object]:
    data = np.array([_hand_row(_hand_image(k)) for k in ks], dtype=np.uint8)
    batch: dict[bytes, object] = {b"batch_label": b"x", b"data": data, b"filenames": []}
    batch.update(label_keys)
    return batch


def _write_cifar10(parent: Path) -> Path:
    d = parent / "cifar-10-batches-py"
    d.mkdir(parents=True)
    k = 0
    for b in range(1, 6):
        ks = [k, k + 1]
        _write_pickle(d / f"data_batch_{b}", _cifar_batch(ks, {b"labels": [x % 10 for x in ks]}))
        k += 2
    _write_pickle(d / "test_batch", _cifar_batch([100, 101, 102], {b"labels": [3, 9, 0]}))
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer")]
    names += [n.encode() for n in ("dog", "frog", "horse", "ship", "truck")]
    _write_pickle(d / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return d


def _write_cifar100(parent: Path) -> Path:
    d = parent / "cifar-100-python"
    d.mkdir(parents=True)
    _write_pickle(
        d / "train",
        _cifar_batch(
            [5, 6, 7, 8], {b"fine_labels": [99, 0, 42, 7], b"coarse_labels": [19, 0, 3, 1]}
        ),
    )
    _write_pickle(
        d / "test", _cifar_batch([9, 10], {b"fine_labels": [1, 2], b"coarse_labels": [4, 5]})
    )
    _write_pickle(
        d / "meta",
        {
            b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)],
        },
    )
    return d


def test_cifar10_channel_major_layout(tmp_path: Path) -> None:
    d = _write_cifar10(tmp_path)
    train = load_cifar10(tmp_path, "train")
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [k % 10 for k in range(10)]
    for k in range(10):
        assert train.images[k].tolist() == _hand_image(k)
    # Spot checks against the flat row: red (0,0), green (5,7) and blue (31,31).
    row = _hand_row(_hand_image(4))
    x = train.images[4]
    assert int(x[0, 0, 0]) == row[0]
    assert int(x[1, 5, 7]) == row[1024 + 5 * 32 + 7]
    assert int(x[2, 31, 31]) == row[3071]
    test = load_cifar10(d, "test")  # the batches directory itself
    assert test.labels.tolist() == [3, 9, 0]
    assert test.images[2].tolist() == _hand_image(102)
    assert test.classes is not None and test.classes[0] == "airplane" and len(test.classes) == 10


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    d = _write_cifar100(tmp_path)
    train = load_cifar100(tmp_path, "train")
    assert train.labels.tolist() == [99, 0, 42, 7]
    assert train.images[3].tolist() == _hand_image(8)
    assert train.classes is not None and train.classes[99] == "f99"
    coarse = load_cifar100(d, "test", coarse=True)
    assert coarse.labels.tolist() == [4, 5] and coarse.classes is not None
    assert len(coarse.classes) == 20
    tr, te, info = get_dataset("cifar100", tmp_path)
    assert len(tr) == 4 and len(te) == 2
    assert info.num_classes == 100 and info.channels == 3 and info.image_size == 32
    assert info.mean == (0.5071, 0.4865, 0.4409) and info.std == (0.2673, 0.2564, 0.2762)
    assert get_dataset("cifar100", tmp_path, cifar100_coarse=True).info.num_classes == 20


def test_get_dataset_cifar10(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    train, test, info = get_dataset("cifar10", tmp_path)
    assert len(train) == 10 and len(test) == 3
    assert info.num_classes == 10 and info.mean == (0.4914, 0.4822, 0.4465)
    assert info.std == (0.2470, 0.2435, 0.2616)
    x, y = train[3]
    assert x.shape == (3, 32, 32) and int(y) == 3


def test_cifar_missing_and_malformed(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetLayoutError, match="nowhere") as e:
        load_cifar10(missing)
    assert "data_batch_1" in str(e.value)
    with pytest.raises(DatasetLayoutError, match="cifar-100-python"):
        load_cifar100(tmp_path)  # exists but holds nothing
    d = _write_cifar10(tmp_path / "a")
    (d / "data_batch_3").unlink()
    with pytest.raises(DatasetLayoutError, match="data_batch_3"):
        load_cifar10(d)
    (d / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetLayoutError, match="test_batch"):
        load_cifar10(d, "test")
    _write_pickle(d / "test_batch", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DatasetLayoutError, match="labels"):
        load_cifar10(d, "test")
    _write_pickle(d / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetLayoutError, match="3072"):
        load_cifar10(d, "test")
    _write_pickle(d / "test_batch", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]})
    with pytest.raises(DatasetLayoutError, match="labels range"):
        load_cifar10(d, "test")
    assert issubclass(DatasetLayoutError, ValueError)


# ------------------------------------------------------------------------------------------
# ImageNet-style class folders
# ------------------------------------------------------------------------------------------


def _pattern(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _write_tree(root: Path) -> dict[str, np.ndarray]:
    """root/{train,val}/{cat,ant,bee}/...; returns the exact pixels of the PNGs."""
    pngs: dict[str, np.ndarray] = {}
    for split, n in (("train", 2), ("val", 1)):
        for ci, cls in enumerate(("cat", "ant", "bee")):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                arr = _pattern(10 + k, 12 + ci, seed=100 * ci + 10 * k + len(split))
                if k == 0:
                    Image.fromarray(arr).save(d / f"img{k}.png")
                    pngs[f"{split}/{cls}/img{k}.png"] = arr
                else:
                    Image.fromarray(arr).save(d / f"img{k}.JPEG", quality=95)
            (d / "notes.txt").write_text("not an image")
    return pngs


def test_image_folder_classes_and_exact_png(tmp_path: Path) -> None:
    pngs = _write_tree(tmp_path)
    train = load_imagenet(tmp_path, "train")
    assert train.classes == ("ant", "bee", "cat")
    assert len(train) == 6  # the .txt files are skipped, .JPEG (upper case) is read
    assert Counter(train.targets) == {0: 2, 1: 2, 2: 2}
    for path, label in train.samples:
        assert label == train.classes.index(path.parent.name)
    by_name = {f"train/{p.parent.name}/{p.name}": i for i, (p, _) in enumerate(train.samples)}
    for key, arr in pngs.items():
        if key.startswith("train/"):
            x, y = train[by_name[key]]
            assert x.dtype == torch.uint8 and x.shape == (3, *arr.shape[:2])
            assert torch.equal(x, torch.from_numpy(arr).permute(2, 0, 1))
            assert y == train.classes.index(key.split("/")[1])
    jpeg_idx = next(i for i, (p, _) in enumerate(train.samples) if p.suffix == ".JPEG")
    xj, _ = train[jpeg_idx]
    assert xj.shape[0] == 3 and xj.dtype == torch.uint8
    val = load_imagenet(tmp_path, "val")
    assert val.classes == train.classes and len(val) == 3


def test_grayscale_png_is_decoded_to_rgb(tmp_path: Path) -> None:
    d = tmp_path / "only"
    d.mkdir()
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    Image.fromarray(gray).save(d / "g.png")
    x, y = ImageFolderDataset(tmp_path)[0]
    assert y == 0 and x.shape == (3, 4, 5)
    for c in range(3):
        assert x[c].tolist() == gray.tolist()


def test_crops(tmp_path: Path) -> None:
    arr = _pattern(10, 12, seed=7)  # height 10, width 12
    img = Image.fromarray(arr)
    # Shorter side already equal to `resize`: the centre crop is plain slicing.
    out = ResizeCenterCrop(8, resize=10)(img)
    assert torch.equal(out, torch.from_numpy(arr[1:9, 2:10]).permute(2, 0, 1))
    big = Image.fromarray(_pattern(50, 80, seed=1))
    assert ResizeCenterCrop(16)(big).shape == (3, 16, 16)
    assert ResizeCenterCrop(224).resize == 256
    rrc = RandomResizedCrop(16, generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        top, left, h, w = rrc.get_params(80, 50)
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 80 and h > 0 and w > 0
        assert 0.08 * 4000 * 0.8 <= h * w <= 4000
        assert rrc(big).shape == (3, 16, 16)
    a = RandomResizedCrop(16, generator=torch.Generator().manual_seed(3))(big)
    b = RandomResizedCrop(16, generator=torch.Generator().manual_seed(3))(big)
    assert torch.equal(a, b) and a.dtype == torch.uint8
    # A full-image crop (scale 1, ratio of the image) is the resized image itself.
    whole = RandomResizedCrop(16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    sq = Image.fromarray(_pattern(16, 16, seed=2))
    assert torch.equal(whole(sq), torch.from_numpy(np.array(sq)).permute(2, 0, 1))


def test_get_dataset_imagenet(tmp_path: Path) -> None:
    _write_tree(tmp_path)
    train, test, info = get_dataset("imagenet", tmp_path, image_size=8)
    assert info.num_classes == 3 and info.channels == 3 and info.image_size == 8
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    assert info.classes == ("ant", "bee", "cat")
    x, y = train[0]
    assert x.shape == (3, 8, 8) and y == 0
    xt, _ = test[0]
    assert xt.shape == (3, 8, 8)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="nowhere") as e:
        load_imagenet(tmp_path / "nowhere")
    assert "train/<class>" in str(e.value)
    (tmp_path / "r" / "train").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="no class sub-directories"):
        load_imagenet(tmp_path / "r")
    (tmp_path / "r" / "train" / "a").mkdir()
    with pytest.raises(DatasetLayoutError, match="no image files"):
        load_imagenet(tmp_path / "r")
    Image.fromarray(_pattern(4, 4, 0)).save(tmp_path / "r" / "train" / "a" / "x.png")
    assert len(load_imagenet(tmp_path / "r")) == 1
    with pytest.raises(DatasetLayoutError, match=re.escape(str(tmp_path / "r" / "val"))):
        load_imagenet(tmp_path / "r", "val")
    (tmp_path / "r" / "val" / "zzz").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="zzz"):
        load_imagenet(tmp_path / "r", "val")
    bad = tmp_path / "r" / "train" / "a" / "y.png"
    bad.write_bytes(b"garbage")
    folder = load_imagenet(tmp_path / "r")
    idx = [p.name for p, _ in folder.samples].index("y.png")
    with pytest.raises(DatasetLayoutError, match=r"y\.png"):
        folder[idx]


def test_missing_roots_name_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "absent_dir"
    for name in ("mnist", "cifar10", "cifar100", "imagenet"):
        with pytest.raises(ValueError, match="absent_dir"):
            get_dataset(name, missing)
    monkeypatch.delenv("NYSACT_DATA_DIR", raising=False)
    with pytest.raises(DatasetLayoutError, match="NYSACT_DATA_DIR"):
        get_dataset("cifar10")
    with pytest.raises(ValueError, match="Unknown dataset"):
        get_dataset("svhn", tmp_path)


# ------------------------------------------------------------------------------------------
# Real data: digits (scikit-learn) and MNIST
# ------------------------------------------------------------------------------------------


def test_digits_real() -> None:
    d = load_digits_dataset()
    assert len(d) == 1797 and d.images.shape == (1797, 1, 8, 8)
    assert d.images.dtype == torch.float32
    assert float(d.images.min()) == 0.0 and float(d.images.max()) == 1.0
    assert sorted(set(d.labels.tolist())) == list(range(10))
    # The documented normalization constants are the data's.
    assert abs(float(d.images.double().mean()) - DIGITS_MEAN[0]) < 1e-4
    assert abs(float(d.images.double().std(unbiased=False)) - DIGITS_STD[0]) < 1e-4
    train, test, info = get_dataset("digits")
    assert (len(train), len(test)) == (1437, 360)
    assert info.num_classes == 10 and info.channels == 1 and info.image_size == 8
    assert isinstance(train, ArrayDataset) and isinstance(test, ArrayDataset)
    # The two parts partition the data: their pixel rows together are all the rows.
    rows = Counter(map(bytes, d.images.flatten(1).numpy()))
    parts = Counter(map(bytes, torch.cat([train.images, test.images]).flatten(1).numpy()))
    assert rows == parts
    again = get_dataset("digits").train
    assert isinstance(again, ArrayDataset) and torch.equal(again.images, train.images)


def test_mnist_real() -> None:
    assert MNIST_DIR.is_dir(), f"MNIST data folder missing: {MNIST_DIR} (set NYSACT_MNIST_DIR)"
    test = load_mnist_dataset(MNIST_DIR, "test")
    assert len(test) == 10000 and test.images.shape == (10000, 1, 28, 28)
    assert float(test.images.min()) == 0.0 and float(test.images.max()) == 1.0
    tr, te, info = get_dataset("mnist", MNIST_DIR, split_from="test", seed=1)
    assert (len(tr), len(te)) == (8000, 2000)
    assert info.mean == (0.1307,) and info.std == (0.3081,) and info.image_size == 28
    assert isinstance(tr, ArrayDataset) and isinstance(te, ArrayDataset)
    assert Counter(tr.labels.tolist()) + Counter(te.labels.tolist()) == Counter(
        test.labels.tolist()
    )
    has_train = any((MNIST_DIR / f"train-images-idx3-ubyte{s}").is_file() for s in ("", ".gz"))
    if has_train:
        assert len(get_dataset("mnist", MNIST_DIR).train) == 60000
    else:
        with pytest.raises(MnistFormatError, match="train-images-idx3-ubyte"):
            get_dataset("mnist", MNIST_DIR)


# ------------------------------------------------------------------------------------------
# Splits and the repeated-augmentation sampler
# ------------------------------------------------------------------------------------------


def _toy(n: int) -> ArrayDataset:
    return ArrayDataset(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n))


def test_split_dataset() -> None:
    data = _toy(10)
    a, b = split_dataset(data, 8, seed=0)
    assert isinstance(a, ArrayDataset) and isinstance(b, ArrayDataset)
    la, lb = a.labels.tolist(), b.labels.tolist()
    assert len(la) == 8 and len(lb) == 2 and sorted(la + lb) == list(range(10))
    a2, _ = split_dataset(data, 8, seed=0)
    assert isinstance(a2, ArrayDataset) and a2.labels.tolist() == la
    a3, _ = split_dataset(data, 8, seed=5)
    assert isinstance(a3, ArrayDataset) and a3.labels.tolist() != la
    r1, r2 = split_dataset(data, 3, seed=None, n_test=4)
    assert isinstance(r1, ArrayDataset) and isinstance(r2, ArrayDataset)
    assert r1.labels.tolist() == [0, 1, 2] and r2.labels.tolist() == [3, 4, 5, 6]
    plain = torch.utils.data.TensorDataset(torch.arange(6))
    s1, s2 = split_dataset(plain, 4, seed=0)
    assert isinstance(s1, torch.utils.data.Subset)
    got = sorted([int(s1[i][0]) for i in range(4)] + [int(s2[i][0]) for i in range(2)])
    assert got == list(range(6))
    with pytest.raises(ValueError):
        split_dataset(data, 11, seed=0)
    with pytest.raises(ValueError):
        split_dataset(data, 5, seed=0, n_test=6)


def test_repeated_augmentation_counts_and_determinism() -> None:
    data = _toy(10)
    s = RepeatedAugmentationSampler(data, num_repeats=3, seed=4)
    first = list(s)
    assert len(s) == 30 and len(first) == 30
    assert Counter(first) == {i: 3 for i in range(10)}
    # Copies are consecutive (same batch, different augmentations).
    assert all(first[3 * k] == first[3 * k + 1] == first[3 * k + 2] for k in range(10))
    assert list(s) == first
    assert list(RepeatedAugmentationSampler(data, num_repeats=3, seed=4)) == first
    s.set_epoch(1)
    assert list(s) != first and Counter(list(s)) == Counter(first)
    ordered = list(RepeatedAugmentationSampler(data, num_repeats=2, shuffle=False))
    assert ordered == [i // 2 for i in range(20)]


def test_repeated_augmentation_rank_split() -> None:
    data = _toy(10)
    # As many replicas as repeats: every replica sees every index once.
    shares = [list(RepeatedAugmentationSampler(data, 3, 3, r, seed=2)) for r in range(3)]
    for share in shares:
        assert sorted(share) == list(range(10))
    # Four replicas: equal shares (padded to 32 = 4 × 8), all copies present.
    shares = [RepeatedAugmentationSampler(data, 3, 4, r, seed=2) for r in range(4)]
    lists = [list(s) for s in shares]
    assert all(len(s) == 8 and len(li) == 8 for s, li in zip(shares, lists, strict=True))
    total = Counter(i for li in lists for i in li)
    assert sum(total.values()) == 32 and all(total[i] >= 3 for i in range(10))
    # The shares interleave the single-replica sequence (padded by wrapping around).
    single = list(RepeatedAugmentationSampler(data, 3, 1, 0, seed=2))
    padded = single + single[:2]
    for r in range(4):
        assert lists[r] == padded[r::4]
    truncated = RepeatedAugmentationSampler(data, 3, 4, 1, seed=2, truncate=True)
    assert len(truncated) == 2 and list(truncated) == lists[1][:2]
    with pytest.raises(ValueError):
        RepeatedAugmentationSampler(data, 3, 2, 2)


def test_modules_do_not_import_optim_or_curvature() -> None:
    from nysact.train import transforms

    for module in (ds_mod, transforms):
        tree = ast.parse(Path(str(module.__file__)).read_text())
        names: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
        assert not [n for n in names if n.startswith(("nysact.optim", "nysact.curvature"))]
