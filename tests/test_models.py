"""The papers' models: published parameter counts, shapes, option-A shortcut, drop path, attention.

Oracles: the parameter counts published with the reference implementations (Idelbayev's CIFAR
ResNets, kuangliu's DenseNet/ResNets, torchvision, timm's DeiT-S), closed-form counts written
out here, hand computations of the shortcut, and attention written out in float64.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from nysact.train.models import (
    MODELS,
    Attention,
    Bottleneck,
    CifarResNet,
    DropPath,
    OptionAShortcut,
    ResNetBasicBlock,
    VisionTransformer,
    build_model,
    deit_small,
    deit_tiny_cifar,
    drop_path,
    resnet18,
    resnet34,
    resnet50,
)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------

# (registry name, kwargs, published count, source)
PUBLISHED_COUNTS: list[tuple[str, dict[str, Any], int]] = [
    # Idelbayev, pytorch_resnet_cifar10 (option A), 10 classes.
    ("resnet20", {"num_classes": 10}, 269_722),
    ("resnet32", {"num_classes": 10}, 464_154),
    ("resnet44", {"num_classes": 10}, 658_586),
    ("resnet56", {"num_classes": 10}, 853_018),
    ("resnet110", {"num_classes": 10}, 1_727_962),
    # kuangliu DenseNet121, 10 classes.
    ("densenet121", {"num_classes": 10}, 6_956_298),
    # torchvision, 1000 classes.
    ("resnet18", {"num_classes": 1000}, 11_689_512),
    ("resnet50", {"num_classes": 1000}, 25_557_032),
    # kuangliu ResNet18/50 (3×3 stem), 10 classes.
    ("resnet18", {"num_classes": 10, "stem": "cifar"}, 11_173_962),
    ("resnet50", {"num_classes": 10, "stem": "cifar"}, 23_520_842),
    # timm deit_small_patch16_224, 1000 classes.
    ("deit_small", {"num_classes": 1000}, 22_050_664),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    PUBLISHED_COUNTS,
    ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw, _ in PUBLISHED_COUNTS],
)
def test_published_parameter_counts(name: str, kwargs: dict[str, Any], expected: int) -> None:
    kw = dict(kwargs)
    num_classes = kw.pop("num_classes")
    assert _count(build_model(name, num_classes=num_classes, **kw)) == expected


def test_resnet34_torchvision_and_kuangliu_counts() -> None:
    assert _count(resnet34()) == 21_797_672
    assert _count(resnet34(10, stem="cifar")) == 21_282_122


def _cifar_resnet_count_by_hand(depth: int, classes: int) -> int:
    """Closed form: 3×3 convs 9·c_in·c_out, BN 2c, option-A shortcuts free, fc 65·classes."""
    n = (depth - 2) // 6
    total = 9 * 3 * 16 + 2 * 16  # stem
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += 9 * c_in * c + 9 * c * c + 2 * (2 * c)
            c_in = c
    return total + (64 + 1) * classes


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110, 1202])
def test_cifar_resnet_count_matches_closed_form(depth: int) -> None:
    for classes in (10, 100):
        model = CifarResNet(depth, classes)
        assert _count(model) == _cifar_resnet_count_by_hand(depth, classes)


def test_option_b_counts_differ_by_the_projections() -> None:
    # The 272,474 / 855,770 sometimes quoted for ResNet-20/56 are option-B counts: 1×1 convs
    # 16→32, 32→64 with their BatchNorms add 2,752 parameters to the option-A model.
    extra = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert extra == 2_752
    assert _count(build_model("resnet20", num_classes=10)) + extra == 272_474
    assert _count(build_model("resnet56", num_classes=10)) + extra == 855_770


def _vit_count_by_hand(img: int, patch: int, d: int, depth: int, classes: int, r: int = 4) -> int:
    tokens = (img // patch) ** 2 + 1
    embed = 3 * patch * patch * d + d + d + tokens * d  # conv + bias, cls token, pos embed
    block = 2 * (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * r * d + r * d) + (r * d * d + d)
    return embed + depth * block + 2 * d + d * classes + classes


def test_vit_counts_match_closed_form() -> None:
    assert _vit_count_by_hand(224, 16, 384, 12, 1000) == 22_050_664
    assert _count(build_model("deit_small_cifar", num_classes=10)) == _vit_count_by_hand(
        32, 4, 384, 12, 10
    )
    assert _count(deit_tiny_cifar(100)) == _vit_count_by_hand(32, 4, 192, 12, 100)


# (name, head in_features, base classes, extra kwargs)
HEADS: list[tuple[str, int, int, dict[str, Any]]] = [
    ("resnet20", 64, 10, {}),
    ("resnet32", 64, 10, {}),
    ("resnet44", 64, 10, {}),
    ("resnet56", 64, 10, {}),
    ("resnet110", 64, 10, {}),
    ("densenet121", 1024, 10, {}),
    ("resnet18", 512, 1000, {}),
    ("resnet50", 2048, 1000, {}),
    ("deit_small", 384, 1000, {}),
    ("deit_small_cifar", 384, 10, {}),
    ("mlp", 256, 10, {"in_features": 64}),
    ("small_cnn", 128, 10, {"image_size": 8}),
]


@pytest.mark.parametrize(
    ("name", "in_features", "base", "kwargs"), HEADS, ids=[h[0] for h in HEADS]
)
def test_count_scales_with_num_classes(
    name: str, in_features: int, base: int, kwargs: dict[str, Any]
) -> None:
    other = 100 if base == 10 else 10
    a = _count(build_model(name, num_classes=base, **kwargs))
    b = _count(build_model(name, num_classes=other, **kwargs))
    assert b - a == (in_features + 1) * (other - base)


# --------------------------------------------------------------------------------------------
# Shapes and registry
# --------------------------------------------------------------------------------------------

# (name, kwargs, input shape)
SHAPES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("resnet20", {"num_classes": 10}, (2, 3, 32, 32)),
    ("resnet32", {"num_classes": 100}, (2, 3, 32, 32)),
    ("resnet44", {"num_classes": 10}, (2, 3, 32, 32)),
    ("resnet56", {"num_classes": 10}, (2, 3, 32, 32)),
    ("resnet110", {"num_classes": 10}, (2, 3, 32, 32)),
    ("densenet121", {"num_classes": 100}, (2, 3, 32, 32)),
    ("resnet18", {"num_classes": 1000}, (2, 3, 224, 224)),
    ("resnet18", {"num_classes": 10, "stem": "cifar"}, (2, 3, 32, 32)),
    ("resnet50", {"num_classes": 1000}, (1, 3, 224, 224)),
    ("resnet50", {"num_classes": 100, "stem": "cifar"}, (2, 3, 32, 32)),
    ("deit_small", {"num_classes": 1000}, (1, 3, 224, 224)),
    ("deit_small_cifar", {"num_classes": 10}, (2, 3, 32, 32)),
    ("mlp", {"num_classes": 10, "in_features": 64}, (2, 1, 8, 8)),
    ("mlp", {"num_classes": 10, "in_features": 784, "hidden": [32, 16]}, (2, 784)),
    ("small_cnn", {"num_classes": 10, "image_size": 8}, (2, 1, 8, 8)),
    ("small_cnn", {"num_classes": 10, "image_size": 28}, (2, 1, 28, 28)),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"), SHAPES, ids=[f"{n}-{s[-1]}px" for n, _, s in SHAPES]
)
def test_output_shape(name: str, kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    kw = dict(kwargs)
    num_classes = kw.pop("num_classes")
    model = build_model(name, num_classes=num_classes, **kw).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], num_classes)
    assert torch.isfinite(out).all()


def test_training_step_backpropagates_to_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10)
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 7]))
    loss.backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_registry_names() -> None:
    assert set(MODELS) == {
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "densenet121",
        "resnet18",
        "resnet50",
        "deit_small",
        "deit_small_cifar",
        "mlp",
        "small_cnn",
    }


def test_build_model_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="Unknown model 'resnet33'") as info:
        build_model("resnet33", num_classes=10)
    for name in MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (lambda **kw: CifarResNet(**kw), {"depth": 21}),
        (lambda **kw: CifarResNet(**kw), {"depth": 20, "num_classes": 0}),
        (lambda **kw: VisionTransformer(**kw), {"img_size": 30, "patch_size": 4}),
        (lambda **kw: VisionTransformer(**kw), {"embed_dim": 10, "num_heads": 3}),
        (lambda **kw: VisionTransformer(**kw), {"drop_path_rate": 1.0}),
        (lambda **kw: build_model("small_cnn", **kw), {"num_classes": 10, "image_size": 3}),
        (lambda **kw: build_model("mlp", **kw), {"num_classes": 10, "hidden": 0}),
    ],
)
def test_invalid_arguments_raise(factory: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Invalid"):
        factory(**kwargs)


def test_models_package_imports_no_optimizer_or_curvature() -> None:
    root = Path(__file__).resolve().parents[1] / "nysact" / "train" / "models"
    files = sorted(root.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("nysact.optim", "nysact.curvature")), (path, name)


# --------------------------------------------------------------------------------------------
# Architecture details
# --------------------------------------------------------------------------------------------


def test_option_a_shortcut_by_hand() -> None:
    x = torch.arange(2 * 2 * 5 * 5, dtype=torch.float32).reshape(2, 2, 5, 5)
    out = OptionAShortcut(pad=1)(x)
    assert out.shape == (2, 4, 3, 3)
    expected = torch.zeros(2, 4, 3, 3)
    for n in range(2):
        for c in range(2):
            for i in range(3):
                for j in range(3):
                    expected[n, c + 1, i, j] = x[n, c, 2 * i, 2 * j]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_cifar_resnet_uses_option_a_at_stage_transitions() -> None:
    model = build_model("resnet32", num_classes=10)
    assert isinstance(model, CifarResNet)
    shortcuts = [m for m in model.modules() if isinstance(m, OptionAShortcut)]
    assert [s.pad for s in shortcuts] == [8, 16]  # planes/4 for 32 and 64
    assert all(not list(s.parameters()) for s in shortcuts)
    assert isinstance(model.layer2[0].shortcut, OptionAShortcut)
    assert isinstance(model.layer3[0].shortcut, OptionAShortcut)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 31 and all(c.bias is None for c in convs)
    # p = c_in·k·k (+1 for the Linear bias) as in the reference table
    p = [c.in_channels * c.kernel_size[0] * c.kernel_size[1] for c in convs]
    assert p[0] == 27 and set(p[1:11]) == {144} and p[11] == 144 and set(p[12:21]) == {288}
    assert p[21] == 288 and set(p[22:]) == {576}
    assert model.linear.in_features + 1 == 65


def test_imagenet_resnet_layout_and_zero_init_residual() -> None:
    model = resnet50(zero_init_residual=True)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    first = model.layer2[0]
    assert isinstance(first, Bottleneck)
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)  # v1.5
    assert first.downsample is not None
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    names = {n for n, _ in model.named_parameters()}
    assert {"conv1.weight", "layer1.0.downsample.0.weight", "fc.weight", "fc.bias"} <= names

    plain = resnet18()
    basic = [m for m in plain.modules() if isinstance(m, ResNetBasicBlock)]
    assert len(basic) == 8 and all(bool((b.bn2.weight == 1).all()) for b in basic)
    zero = resnet18(zero_init_residual=True)
    assert all(
        torch.count_nonzero(m.bn2.weight) == 0
        for m in zero.modules()
        if isinstance(m, ResNetBasicBlock)
    )


def test_drop_path_eval_is_identity_and_train_drops_whole_samples() -> None:
    x = torch.randn(1000, 5, 7) + 3.0
    layer = DropPath(0.3)
    layer.eval()
    assert layer(x) is x
    assert drop_path(x, 0.0, training=True) is x

    layer.train()
    torch.manual_seed(0)
    out = layer(x)
    kept = (out != 0).flatten(1).any(dim=1)
    torch.testing.assert_close(out[kept], x[kept] / 0.7)
    assert bool((out[~kept] == 0).all())
    frac = 1.0 - kept.float().mean().item()
    assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 1000)
    torch.manual_seed(0)
    torch.testing.assert_close(layer(x), out, rtol=0, atol=0)  # seeded: reproducible


def test_vit_drop_path_rates_increase_linearly() -> None:
    model = VisionTransformer(
        img_size=8, patch_size=4, embed_dim=8, depth=5, num_heads=2, drop_path_rate=0.2
    )
    layers = [m for m in model.modules() if isinstance(m, DropPath)]
    assert [m.p for m in layers] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert [a.num_heads for a in attns] == [2] * 5
    big = [m.p for m in deit_small(drop_path_rate=0.1).modules() if isinstance(m, DropPath)]
    assert big[0] == 0.0 and big[-1] == pytest.approx(0.1) and len(big) == 12


def _attention_float64(attn: Attention, x: Tensor) -> tuple[Tensor, Tensor]:
    """Written out head by head: softmax(Q_h K_hᵀ/√d_h) V_h, concatenated, then proj."""
    d, h = attn.dim, attn.num_heads
    dh = d // h
    w = attn.qkv.weight.double()
    assert attn.qkv.bias is not None
    b = attn.qkv.bias.double()
    x64 = x.double()
    q_all = x64 @ w[:d].T + b[:d]
    k_all = x64 @ w[d : 2 * d].T + b[d : 2 * d]
    v_all = x64 @ w[2 * d :].T + b[2 * d :]
    heads, probs = [], []
    for i in range(h):
        sl = slice(i * dh, (i + 1) * dh)
        scores = q_all[..., sl] @ k_all[..., sl].transpose(-2, -1) / math.sqrt(dh)
        p = torch.softmax(scores, dim=-1)
        probs.append(p)
        heads.append(p @ v_all[..., sl])
    out = torch.cat(heads, dim=-1) @ attn.proj.weight.double().T + attn.proj.bias.double()
    return out, torch.stack(probs, dim=1)


def test_attention_fused_qkv_matches_explicit_float64() -> None:
    torch.manual_seed(0)
    attn = Attention(dim=24, num_heads=4)
    assert attn.qkv.in_features == 24 and attn.qkv.out_features == 72
    for p in attn.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 7, 24)
    expected, expected_probs = _attention_float64(attn, x)

    assert attn.store_attn_probs is False
    out_sdpa = attn(x)
    assert attn.attn_probs is None
    torch.testing.assert_close(out_sdpa.double(), expected, rtol=1e-5, atol=1e-5)

    attn.store_attn_probs = True
    out_explicit = attn(x)
    torch.testing.assert_close(out_explicit.double(), expected, rtol=1e-5, atol=1e-5)
    probs = attn.attn_probs
    assert probs is not None and probs.shape == (3, 4, 7, 7) and not probs.requires_grad
    torch.testing.assert_close(probs.double(), expected_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4, 7))


def test_vit_attention_hook_switch() -> None:
    torch.manual_seed(0)
    model = build_model("deit_small_cifar", num_classes=10).eval()
    assert isinstance(model, VisionTransformer)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    attns = [blk.attn for blk in model.blocks]
    assert all(isinstance(a, Attention) and a.attn_probs is None for a in attns)
    model.set_store_attn_probs(True)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for a in attns:
        assert isinstance(a, Attention) and a.attn_probs is not None
        assert a.attn_probs.shape == (2, 6, 65, 65)
        torch.testing.assert_close(a.attn_probs.sum(-1), torch.ones(2, 6, 65))
    model.set_store_attn_probs(False)
    assert all(isinstance(a, Attention) and a.attn_probs is None for a in attns)
    names = {n for n, _ in model.named_modules()}
    assert {"patch_embed.proj", "blocks.0.attn.qkv", "blocks.11.mlp.fc2", "head"} <= names
