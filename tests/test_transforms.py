"""Batched augmentations against hand computations, with fixed generators."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from nysact.train.transforms import (
    Compose,
    MixupCutmix,
    Normalize,
    RandAugment,
    RandomCrop,
    RandomErasing,
    RandomHorizontalFlip,
    ToFloat,
    TorchvisionUnavailableError,
    TrivialAugment,
    cifar_train_transform,
    crop_at,
    cutmix,
    eval_transform,
    horizontal_flip,
    imagenet_train_transform,
    mixup,
    normalize,
    one_hot,
    random_crop,
    random_crop_offsets,
    random_erasing,
    sample_beta,
    soft_target_cross_entropy,
    to_float,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _hand_pad(img: torch.Tensor, p: int) -> torch.Tensor:
    c, h, w = img.shape
    out = torch.zeros(c, h + 2 * p, w + 2 * p, dtype=img.dtype)
    for i in range(h):
        for j in range(w):
            out[:, i + p, j + p] = img[:, i, j]
    return out


def test_random_crop_matches_hand_crop() -> None:
    x = torch.randn(12, 3, 8, 8, generator=_gen(0))
    out = random_crop(x, 8, padding=2, generator=_gen(1))
    off = random_crop_offsets(12, 8, 8, 8, padding=2, generator=_gen(1))
    assert out.shape == x.shape
    for b in range(12):
        t, left = int(off[b, 0]), int(off[b, 1])
        assert 0 <= t <= 4 and 0 <= left <= 4
        expected = _hand_pad(x[b], 2)[:, t : t + 8, left : left + 8]
        assert torch.equal(out[b], expected)
        # Independently of the offsets: the output is one of the 25 valid crops.
        padded = _hand_pad(x[b], 2)
        crops = [padded[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], c) for c in crops)
    assert torch.equal(crop_at(x, off, 8, 2), out)
    # RandomCrop draws the same offsets from an identically seeded generator.
    y = torch.arange(12)
    out2, y2 = RandomCrop(8, 2, _gen(1))(x, y)
    assert torch.equal(out2, out) and torch.equal(y2, y)
    # Every offset is reachable.
    many = random_crop_offsets(2000, 32, 32, 32, 4, _gen(3))
    assert set(many[:, 0].tolist()) == set(range(9)) == set(many[:, 1].tolist())
    # A smaller rectangular crop with no padding.
    small = random_crop(x, (5, 6), padding=0, generator=_gen(4))
    off2 = random_crop_offsets(12, 8, 8, (5, 6), 0, _gen(4))
    for b in range(12):
        t, left = int(off2[b, 0]), int(off2[b, 1])
        assert torch.equal(small[b], x[b, :, t : t + 5, left : left + 6])


def test_horizontal_flip() -> None:
    x = torch.randn(64, 2, 3, 5, generator=_gen(0))
    assert torch.equal(horizontal_flip(x, 1.0), x[..., [4, 3, 2, 1, 0]])
    assert torch.equal(horizontal_flip(x, 0.0), x)
    out = horizontal_flip(x, 0.5, _gen(2))
    flipped = [torch.equal(out[b], x[b].flip(-1)) for b in range(64)]
    kept = [torch.equal(out[b], x[b]) for b in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54
    again, _ = RandomHorizontalFlip(0.5, _gen(2))(x, torch.zeros(64))
    assert torch.equal(again, out)


def test_to_float_and_normalize() -> None:
    u = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    assert torch.allclose(to_float(u), torch.tensor([0.0, 0.2, 1.0]).view(1, 1, 1, 3))
    x = torch.rand(2, 3, 4, 4, generator=_gen(0))
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    out = normalize(x, mean, std)
    for b in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(4):
                    hand = (float(x[b, c, i, j]) - mean[c]) / std[c]
                    assert abs(float(out[b, c, i, j]) - hand) < 1e-5
    got, _ = Compose([ToFloat(), Normalize(mean, std)])((x * 255).round().byte(), torch.zeros(2))
    assert torch.allclose(got, normalize((x * 255).round() / 255, mean, std), atol=1e-6)
    with pytest.raises(ValueError):
        normalize(x, (0.5,), (0.5,))


def test_one_hot_smoothing() -> None:
    t = one_hot(torch.tensor([2, 0]), 4, smoothing=0.1)
    assert torch.allclose(t[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert torch.equal(one_hot(torch.tensor([1]), 3), torch.tensor([[0.0, 1.0, 0.0]]))


def test_sample_beta_moments() -> None:
    g = _gen(0)
    draws = torch.tensor([sample_beta(0.8, g) for _ in range(3000)])
    assert float(draws.min()) >= 0.0 and float(draws.max()) <= 1.0
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 0.0962 for a = 0.8.
    assert abs(float(draws.mean()) - 0.5) < 0.02
    assert abs(float(draws.var()) - 1.0 / (4 * 2.6)) < 0.01
    assert sample_beta(1.0, _gen(5)) == sample_beta(1.0, _gen(5))


def test_mixup_is_a_convex_pair_combination() -> None:
    x = torch.randn(8, 3, 4, 4, generator=_gen(0))
    t = one_hot(torch.arange(8) % 5, 5)
    res = mixup(x, t, 0.8, generator=_gen(7))
    lam, j = res.lam, res.partner
    assert 0.0 <= lam <= 1.0
    assert sorted(j.tolist()) == list(range(8))
    for i in range(8):
        assert torch.allclose(res.images[i], lam * x[i] + (1 - lam) * x[j[i]], atol=1e-6)
        assert torch.allclose(res.targets[i], lam * t[i] + (1 - lam) * t[j[i]], atol=1e-6)
    assert torch.allclose(res.targets.sum(1), torch.ones(8))
    again = mixup(x, t, 0.8, generator=_gen(7))
    assert again.lam == lam and torch.equal(again.images, res.images)
    fixed = mixup(x, t, lam=0.3, generator=_gen(1))
    i0 = int(fixed.partner[0])
    assert torch.allclose(fixed.images[0], 0.3 * x[0] + 0.7 * x[i0], atol=1e-6)


def test_cutmix_box_and_area_weight() -> None:
    x = torch.randn(6, 2, 16, 16, generator=_gen(0))
    t = one_hot(torch.arange(6), 6)
    for seed in range(8):
        res = cutmix(x, t, 1.0, generator=_gen(seed))
        j = res.partner
        assert res.box is not None
        top, left, bottom, right = res.box
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        for i in range(6):
            src = x[int(j[i])]
            assert torch.equal(res.images[i][:, inside], src[:, inside])
            assert torch.equal(res.images[i][:, ~inside], x[i][:, ~inside])
            if int(j[i]) != i:
                # The true pasted area, counted pixel by pixel.
                pasted = (res.images[i] != x[i]).any(0)
                frac = float(pasted.sum()) / 256.0
                assert abs(res.lam - (1.0 - frac)) < 1e-12
                assert abs(float(res.targets[i, i]) - (1.0 - frac)) < 1e-6
                assert abs(float(res.targets[i, int(j[i])]) - frac) < 1e-6
    # lam = 0.75 gives sides 16 · √0.25 = 8 (before clipping at the border).
    res = cutmix(x, t, lam=0.75, generator=_gen(3))
    assert res.box is not None
    top, left, bottom, right = res.box
    assert bottom - top <= 8 and right - left <= 8
    assert abs(res.lam - (1 - (bottom - top) * (right - left) / 256)) < 1e-12


def _changed_box(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int, int, int] | None:
    changed = (before != after).any(0)
    if not bool(changed.any()):
        return None
    rows = torch.nonzero(changed.any(1)).flatten()
    cols = torch.nonzero(changed.any(0)).flatten()
    t, b = int(rows.min()), int(rows.max()) + 1
    left, r = int(cols.min()), int(cols.max()) + 1
    assert bool(changed[t:b, left:r].all()), "the erased pixels are not a full rectangle"
    assert int(changed.sum()) == (b - t) * (r - left)
    return t, left, b - t, r - left


def test_random_erasing_rectangle_within_bounds() -> None:
    x = torch.zeros(64, 3, 40, 40)
    out = random_erasing(x, p=1.0, generator=_gen(0))
    for b in range(64):
        box = _changed_box(x[b], out[b])
        assert box is not None
        _, _, h, w = box
        assert h < 40 and w < 40
        # Area fraction in [0.02, 1/3] and aspect in [0.3, 1/0.3], up to the rounding of h, w.
        assert (h - 0.5) * (w - 0.5) <= 1600 / 3 and (h + 0.5) * (w + 0.5) >= 0.02 * 1600
        assert (h - 0.5) / (w + 0.5) <= 1 / 0.3 and (h + 0.5) / (w - 0.5) >= 0.3
    assert torch.equal(random_erasing(x, p=0.0, generator=_gen(0)), x)
    half = random_erasing(x, p=0.5, generator=_gen(1))
    n = sum(_changed_box(x[b], half[b]) is not None for b in range(64))
    assert 15 < n < 49
    again, y = RandomErasing(1.0, generator=_gen(0))(x, torch.arange(64))
    assert torch.equal(again, out) and torch.equal(y, torch.arange(64))
    assert abs(float(out[out != 0].std()) - 1.0) < 0.1  # filled with N(0, 1) values


def test_soft_target_cross_entropy() -> None:
    logits = torch.randn(5, 4, generator=_gen(0), dtype=torch.float64)
    targets = torch.softmax(torch.randn(5, 4, generator=_gen(1), dtype=torch.float64), 1)
    hand = []
    for b in range(5):
        z = logits[b].tolist()
        lse = math.log(sum(math.exp(v) for v in z))
        hand.append(-sum(float(targets[b, k]) * (z[k] - lse) for k in range(4)))
    got = soft_target_cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(got, torch.tensor(hand, dtype=torch.float64), atol=1e-12)
    assert abs(float(soft_target_cross_entropy(logits, targets)) - sum(hand) / 5) < 1e-12
    labels = torch.tensor([0, 3, 1, 1, 2])
    oh = one_hot(labels, 4).double()
    assert torch.allclose(soft_target_cross_entropy(logits, oh), F.cross_entropy(logits, labels))
    sm = one_hot(labels, 4, 0.1).double()
    assert torch.allclose(
        soft_target_cross_entropy(logits, sm, "sum"),
        F.cross_entropy(logits, labels, label_smoothing=0.1, reduction="sum"),
    )


def test_mixup_cutmix_transform() -> None:
    x = torch.rand(8, 3, 8, 8, generator=_gen(0))
    y = torch.arange(8) % 4
    none = MixupCutmix(4, prob=0.0, label_smoothing=0.1, generator=_gen(1))
    xi, ti = none(x, y)
    assert torch.equal(xi, x) and torch.allclose(ti, one_hot(y, 4, 0.1))
    mix = MixupCutmix(4, generator=_gen(2))
    kinds = set()
    for _ in range(20):
        xm, tm = mix(x, y)
        assert tm.shape == (8, 4) and torch.allclose(tm.sum(1), torch.ones(8))
        # Mixup changes every pixel of some image; cutmix leaves pixels outside the box intact.
        kinds.add(bool(((xm - x).abs() > 0).all(dim=(1, 2, 3)).any()))
    assert kinds == {True, False}
    only_mixup = MixupCutmix(4, cutmix_alpha=0.0, label_smoothing=0.0, generator=_gen(3))
    xm, tm = only_mixup(x, y)
    assert float(tm.max()) <= 1.0 and torch.allclose(tm.sum(1), torch.ones(8))


def test_recipes_are_seedable() -> None:
    u = (torch.rand(4, 3, 32, 32, generator=_gen(0)) * 255).byte()
    y = torch.tensor([0, 1, 2, 3])
    a, ya = cifar_train_transform((0.5,) * 3, (0.25,) * 3, generator=_gen(9))(u, y)
    b, _ = cifar_train_transform((0.5,) * 3, (0.25,) * 3, generator=_gen(9))(u, y)
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    assert torch.equal(ya, y)
    e, _ = eval_transform((0.5,) * 3, (0.25,) * 3)(u, y)
    assert torch.allclose(e, (u.float() / 255 - 0.5) / 0.25)
    im = imagenet_train_transform(10, (0.5,) * 3, (0.25,) * 3, generator=_gen(1))
    c, tc = im(u, y)
    assert c.shape == u.shape and tc.shape == (4, 10)
    assert torch.allclose(tc.sum(1), torch.ones(4, dtype=tc.dtype))


def test_torchvision_policies_without_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    monkeypatch.delitem(sys.modules, "torchvision.transforms", raising=False)
    with pytest.raises(TorchvisionUnavailableError, match=r"torchvision.*not importable") as e:
        TrivialAugment()
    assert "trivialaugment" in str(e.value)
    with pytest.raises(TorchvisionUnavailableError, match="randaugment"):
        RandAugment()
    with pytest.raises(TorchvisionUnavailableError, match="trivialaugment"):
        imagenet_train_transform(10, (0.5,) * 3, (0.5,) * 3, auto_augment="trivialaugment")
    assert issubclass(TorchvisionUnavailableError, ImportError)
    with pytest.raises(ValueError, match="auto_augment"):
        imagenet_train_transform(10, (0.5,) * 3, (0.5,) * 3, auto_augment="autoaug")
