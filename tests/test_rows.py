"""Unit tests of nysact.curvature.rows: patch rows, sketches, means, output rows, errors.

Oracles are independent of the module: an explicit Python loop over samples, output positions,
channels and kernel offsets that reads the input through its own padding index map (zeros,
reflect, replicate, circular), in float64 NumPy; and ``torch.nn.Conv2d`` itself for the pairing
``conv(x)[b, o, i, j] = W.view(C_out, -1)[o] · row + bias[o]``.
"""

from __future__ import annotations

import functools
import itertools
import zlib
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from nysact.curvature.rows import (
    ConvGeometry,
    conv2d_covariance,
    conv2d_mean,
    conv2d_output_covariance,
    conv2d_output_mean,
    conv2d_output_rows,
    conv2d_rows,
    conv2d_sketch,
    conv2d_square_mean,
    linear_covariance,
    linear_mean,
    linear_output_covariance,
    linear_output_mean,
    linear_output_rows,
    linear_rows,
    linear_sketch,
    linear_square_mean,
)
from nysact.sketch import Gaussian, Subcolumn, SubcolumnTestMatrix, TestMatrix

pytestmark = pytest.mark.filterwarnings(
    "ignore:Using padding='same' with even kernel lengths:UserWarning"
)

B, C_IN, C_OUT, H, W = 2, 4, 8, 7, 8
TOL64 = {"rtol": 1e-10, "atol": 1e-12}
# float32 accumulation of at most a few hundred O(1) products: relative error well below 1e-5.
TOL32 = {"rtol": 1e-5, "atol": 1e-5}

# (id, nn.Conv2d padding, kernel): 'same' with odd, even and mixed kernels; non-square kernels.
PADDINGS: list[tuple[str, int | str, tuple[int, int]]] = [
    ("p0", 0, (3, 3)),
    ("p1", 1, (2, 3)),
    ("same_odd", "same", (3, 3)),
    ("same_even", "same", (2, 4)),
    ("same_mixed", "same", (3, 2)),
    ("valid", "valid", (3, 2)),
]
GROUPS = {"g1": 1, "g2": 2, "depthwise": C_IN}
MODES = ["zeros", "reflect", "circular"]


def _cases() -> list[Any]:
    out = []
    for stride, (pid, pad, kernel), dil, gid, mode, bias in itertools.product(
        (1, 2), PADDINGS, (1, 2), GROUPS, MODES, (True, False)
    ):
        if pad == "same" and stride != 1:
            continue  # nn.Conv2d rejects 'same' with stride > 1
        case = (stride, pad, kernel, dil, GROUPS[gid], mode, bias)
        ident = f"s{stride}-{pid}-d{dil}-{gid}-{mode}-{'bias' if bias else 'nobias'}"
        out.append(pytest.param(case, id=ident))
    return out


CASES = _cases()


@pytest.fixture(autouse=True)
def _single_thread() -> Any:
    """Tiny shapes: intra-op threads only add synchronisation cost (large on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _explicit_padding(pad: int | str, kernel: tuple[int, int], dil: int) -> tuple[int, ...]:
    """(left, right, top, bottom) for nn.Conv2d's padding argument."""
    if pad == "valid":
        return (0, 0, 0, 0)
    if pad == "same":
        th, tw = dil * (kernel[0] - 1), dil * (kernel[1] - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    assert isinstance(pad, int)
    return (pad, pad, pad, pad)


def _source(u: int, size: int, mode: str) -> int | None:
    """Index of the unpadded input that padded coordinate u (relative to the input) reads."""
    if 0 <= u < size:
        return u
    if mode == "zeros":
        return None
    if mode == "reflect":
        return -u if u < 0 else 2 * (size - 1) - u
    if mode == "replicate":
        return min(max(u, 0), size - 1)
    assert mode == "circular"
    return u % size


def _oracle_rows(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    padding: tuple[int, ...],
    mode: str,
    bias: bool,
) -> np.ndarray:
    """Explicit loop: rows (g, n, p), row order (b, oi, oj), column order (c, i, j) then 1."""
    b_, c_, h_, w_ = x.shape
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    left, right, top, bottom = padding
    oh = (h_ + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w_ + left + right - dw * (kw - 1) - 1) // sw + 1
    gi = c_ // groups
    out = []
    for k in range(groups):
        rows = []
        for b in range(b_):
            for oi in range(oh):
                for oj in range(ow):
                    row = []
                    for c in range(gi):
                        for i in range(kh):
                            for j in range(kw):
                                u = _source(oi * sh + i * dh - top, h_, mode)
                                v = _source(oj * sw + j * dw - left, w_, mode)
                                val = 0.0 if u is None or v is None else x[b, k * gi + c, u, v]
                                row.append(val)
                    if bias:
                        row.append(1.0)
                    rows.append(row)
        out.append(rows)
    return np.asarray(out, dtype=np.float64)


def _oracle_output_rows(grad: np.ndarray, groups: int) -> np.ndarray:
    b_, c_, oh, ow = grad.shape
    go = c_ // groups
    return np.asarray(
        [
            [
                [grad[b, k * go + o, i, j] for o in range(go)]
                for b in range(b_)
                for i in range(oh)
                for j in range(ow)
            ]
            for k in range(groups)
        ]
    )


def _make_conv(case: Any, dtype: torch.dtype = torch.float64) -> nn.Conv2d:
    stride, pad, kernel, dil, groups, mode, bias = case
    torch.manual_seed(0)
    return nn.Conv2d(
        C_IN,
        C_OUT,
        kernel,
        stride=stride,
        padding=pad,
        dilation=dil,
        groups=groups,
        bias=bias,
        padding_mode=mode,
    ).to(dtype)


def _input(case: Any, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))
    return torch.randn(B, C_IN, H, W, generator=gen, dtype=torch.float64).to(dtype)


@functools.cache
def _oracle_for(case: Any) -> np.ndarray:
    stride, pad, kernel, dil, groups, mode, bias = case
    return _oracle_rows(
        _input(case).numpy(),
        kernel,
        (stride, stride),
        (dil, dil),
        groups,
        _explicit_padding(pad, kernel, dil),
        mode,
        bias,
    )


def _test_matrices(dim: int, seed: int) -> list[TestMatrix]:
    gen = torch.Generator().manual_seed(seed)
    rank = min(3, dim)
    # Explicit subcolumns hitting the last column (the bias column when there is one) and the
    # first, plus a random draw.
    explicit = SubcolumnTestMatrix(torch.tensor([dim - 1, 0, dim // 2][:rank]), dim)
    return [
        Gaussian(rank).draw(dim, generator=gen),
        Gaussian(rank).draw(dim, generator=gen, dtype=torch.float64),
        explicit,
        Subcolumn(rank).draw(dim, generator=gen),
    ]


# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_geometry_from_module_matches_torch(case: Any) -> None:
    stride, pad, kernel, dil, groups, mode, bias = case
    conv = _make_conv(case)
    geom = ConvGeometry.from_module(conv)
    # PyTorch's own resolved (left, right, top, bottom) padding.
    assert geom.padding == tuple(conv._reversed_padding_repeated_twice)
    assert geom.padding == _explicit_padding(pad, kernel, dil)
    assert geom.kernel_size == kernel
    assert geom.stride == (stride, stride)
    assert geom.dilation == (dil, dil)
    assert (geom.groups, geom.padding_mode, geom.has_bias) == (groups, mode, bias)
    assert geom.group_in == C_IN // groups and geom.group_out == C_OUT // groups
    assert geom.patch_dim == (C_IN // groups) * kernel[0] * kernel[1]
    assert geom.dim == geom.patch_dim + int(bias)
    y = conv(_input(case))
    assert geom.output_size(H, W) == tuple(y.shape[2:])


# ------------------------------------------------------------------------------------------
# Conv rows, covariance, means against the explicit loop; pairing with nn.Conv2d
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_conv_rows_and_statistics_match_explicit_loop(case: Any) -> None:
    geom = ConvGeometry.from_module(_make_conv(case))
    x = _input(case)
    expected = _oracle_for(case)
    n = expected.shape[1]
    rows = conv2d_rows(x, geom)
    assert rows.dtype == torch.float64
    assert rows.shape == (geom.groups, n, geom.dim)
    np.testing.assert_allclose(rows.numpy(), expected, **TOL64)
    np.testing.assert_allclose(
        conv2d_covariance(x, geom).numpy(), expected.transpose(0, 2, 1) @ expected / n, **TOL64
    )
    np.testing.assert_allclose(conv2d_mean(x, geom).numpy(), expected.mean(axis=1), **TOL64)
    np.testing.assert_allclose(
        conv2d_square_mean(x, geom).numpy(), (expected**2).mean(axis=1), **TOL64
    )


@pytest.mark.parametrize("case", CASES)
def test_conv_rows_pair_with_weight_and_output_rows(case: Any) -> None:
    conv = _make_conv(case)
    geom = ConvGeometry.from_module(conv)
    x = _input(case)
    with torch.no_grad():
        y = conv(x)
    rows = conv2d_rows(x, geom)
    out_rows = conv2d_output_rows(y, geom)
    g, go = geom.groups, geom.group_out
    w = conv.weight.detach().view(C_OUT, -1)
    for k in range(g):
        g_hat = w[k * go : (k + 1) * go]
        if conv.bias is not None:
            g_hat = torch.cat([g_hat, conv.bias.detach()[k * go : (k + 1) * go, None]], dim=1)
        torch.testing.assert_close(rows[k] @ g_hat.T, out_rows[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_conv_sketch_matches_explicit_loop(case: Any) -> None:
    geom = ConvGeometry.from_module(_make_conv(case))
    x = _input(case)
    rows = _oracle_for(case)
    n = rows.shape[1]
    for tm in _test_matrices(geom.dim, seed=len(str(case))):
        omega = tm.dense(torch.float64).numpy()
        expected = rows.transpose(0, 2, 1) @ (rows @ omega) / n
        y = conv2d_sketch(x, geom, tm)
        assert y.dtype == torch.float64 and y.shape == (geom.groups, geom.dim, tm.rank)
        np.testing.assert_allclose(y.numpy(), expected, **TOL64, err_msg=type(tm).__name__)


def test_explicit_asymmetric_padding_replicate_stride2() -> None:
    geom = ConvGeometry(
        in_channels=6,
        out_channels=3,
        kernel_size=(2, 3),
        stride=(2, 1),
        dilation=(1, 2),
        groups=3,
        padding=(0, 2, 1, 0),
        padding_mode="replicate",
        has_bias=True,
    )
    x = torch.randn(3, 6, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rows = _oracle_rows(x.numpy(), (2, 3), (2, 1), (1, 2), 3, (0, 2, 1, 0), "replicate", True)
    n = rows.shape[1]
    assert geom.output_size(5, 6) == (3, 4) and n == 3 * 3 * 4
    np.testing.assert_allclose(conv2d_rows(x, geom).numpy(), rows, **TOL64)
    np.testing.assert_allclose(conv2d_mean(x, geom).numpy(), rows.mean(axis=1), **TOL64)
    for tm in _test_matrices(geom.dim, seed=5):
        omega = tm.dense(torch.float64).numpy()
        expected = rows.transpose(0, 2, 1) @ (rows @ omega) / n
        np.testing.assert_allclose(conv2d_sketch(x, geom, tm).numpy(), expected, **TOL64)


def test_conv_sketch_mean_square_mean_never_unfold(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = nn.Conv2d(C_IN, C_OUT, 3, padding="same", groups=2, padding_mode="reflect")
    geom = ConvGeometry.from_module(conv)
    x = torch.randn(B, C_IN, H, W)
    expected = [conv2d_sketch(x, geom, tm) for tm in _test_matrices(geom.dim, seed=1)]
    expected_means = (conv2d_mean(x, geom), conv2d_square_mean(x, geom))

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("unfold called")

    monkeypatch.setattr(torch.nn.functional, "unfold", boom)
    monkeypatch.setattr(torch._C._nn, "im2col", boom)
    monkeypatch.setattr(torch.Tensor, "unfold", boom)
    with pytest.raises(AssertionError, match="unfold called"):
        conv2d_rows(x, geom)  # the patch is effective
    for tm, exp in zip(_test_matrices(geom.dim, seed=1), expected, strict=True):
        torch.testing.assert_close(conv2d_sketch(x, geom, tm), exp)
    torch.testing.assert_close(conv2d_mean(x, geom), expected_means[0])
    torch.testing.assert_close(conv2d_square_mean(x, geom), expected_means[1])


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_conv_output_statistics_match_explicit_loop(groups: int) -> None:
    geom = ConvGeometry(in_channels=8, out_channels=8, kernel_size=(3, 3), groups=groups)
    grad = torch.randn(3, 8, 4, 5, dtype=torch.float64)
    rows = _oracle_output_rows(grad.numpy(), groups)
    n = 3 * 4 * 5
    assert rows.shape == (groups, n, 8 // groups)
    np.testing.assert_allclose(conv2d_output_rows(grad, geom).numpy(), rows, **TOL64)
    np.testing.assert_allclose(
        conv2d_output_covariance(grad, geom).numpy(),
        rows.transpose(0, 2, 1) @ rows / n,
        **TOL64,
    )
    np.testing.assert_allclose(conv2d_output_mean(grad, geom).numpy(), rows.mean(axis=1), **TOL64)


# ------------------------------------------------------------------------------------------
# Linear
# ------------------------------------------------------------------------------------------


def _linear_oracle(x: np.ndarray, bias: bool) -> np.ndarray:
    rows = []
    for idx in np.ndindex(*x.shape[:-1]):
        row = [float(v) for v in x[idx]]
        rows.append([*row, 1.0] if bias else row)
    return np.asarray(rows)


@pytest.mark.parametrize("shape", [(6,), (5, 6), (3, 4, 6)], ids=["1d", "2d", "3d-tokens"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_statistics_match_explicit_loop(shape: tuple[int, ...], bias: bool) -> None:
    x = torch.randn(*shape, dtype=torch.float64)
    rows = _linear_oracle(x.numpy(), bias)
    n, p = rows.shape
    assert p == 6 + int(bias)
    np.testing.assert_allclose(linear_rows(x, bias=bias).numpy(), rows, **TOL64)
    np.testing.assert_allclose(linear_covariance(x, bias=bias).numpy(), rows.T @ rows / n, **TOL64)
    np.testing.assert_allclose(linear_mean(x, bias=bias).numpy(), rows.mean(0), **TOL64)
    np.testing.assert_allclose(linear_square_mean(x, bias=bias).numpy(), (rows**2).mean(0), **TOL64)
    for tm in _test_matrices(p, seed=p):
        omega = tm.dense(torch.float64).numpy()
        y = linear_sketch(x, tm, bias=bias)
        assert y.shape == (p, tm.rank)
        np.testing.assert_allclose(y.numpy(), rows.T @ (rows @ omega) / n, **TOL64)
    grad = torch.randn(*shape[:-1], 3, dtype=torch.float64)
    g_rows = _linear_oracle(grad.numpy(), bias=False)
    np.testing.assert_allclose(linear_output_rows(grad).numpy(), g_rows, **TOL64)
    np.testing.assert_allclose(
        linear_output_covariance(grad).numpy(), g_rows.T @ g_rows / n, **TOL64
    )
    np.testing.assert_allclose(linear_output_mean(grad).numpy(), g_rows.mean(0), **TOL64)


# ------------------------------------------------------------------------------------------
# Half precision: float32 statistics
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_float32_statistics(dtype: torch.dtype) -> None:
    case = (2, 1, (3, 3), 1, 2, "circular", True)
    geom = ConvGeometry.from_module(_make_conv(case))
    x16 = _input(case, dtype)
    rows = _oracle_rows(
        x16.double().numpy(), (3, 3), (2, 2), (1, 1), 2, (1, 1, 1, 1), "circular", True
    )
    n = rows.shape[1]
    results = {
        "rows": (conv2d_rows(x16, geom), rows),
        "cov": (conv2d_covariance(x16, geom), rows.transpose(0, 2, 1) @ rows / n),
        "mean": (conv2d_mean(x16, geom), rows.mean(1)),
        "sq": (conv2d_square_mean(x16, geom), (rows**2).mean(1)),
    }
    for i, tm in enumerate(_test_matrices(geom.dim, seed=7)):
        omega = tm.dense(torch.float64).numpy()
        results[f"sketch{i}"] = (
            conv2d_sketch(x16, geom, tm),
            rows.transpose(0, 2, 1) @ (rows @ omega) / n,
        )
    grad16 = torch.randn(B, C_OUT, 4, 4).to(dtype)
    g_rows = _oracle_output_rows(grad16.double().numpy(), 2)
    results["out_rows"] = (conv2d_output_rows(grad16, geom), g_rows)
    results["out_cov"] = (
        conv2d_output_covariance(grad16, geom),
        g_rows.transpose(0, 2, 1) @ g_rows / g_rows.shape[1],
    )
    results["out_mean"] = (conv2d_output_mean(grad16, geom), g_rows.mean(1))
    xl = torch.randn(3, 5, 6).to(dtype)
    l_rows = _linear_oracle(xl.double().numpy(), True)
    results["lin_rows"] = (linear_rows(xl, bias=True), l_rows)
    results["lin_cov"] = (linear_covariance(xl, bias=True), l_rows.T @ l_rows / 15)
    results["lin_mean"] = (linear_mean(xl, bias=True), l_rows.mean(0))
    results["lin_sq"] = (linear_square_mean(xl, bias=True), (l_rows**2).mean(0))
    for i, tm in enumerate(_test_matrices(7, seed=8)):
        omega = tm.dense(torch.float64).numpy()
        results[f"lin_sketch{i}"] = (
            linear_sketch(xl, tm, bias=True),
            l_rows.T @ (l_rows @ omega) / 15,
        )
    results["lin_out"] = (linear_output_covariance(xl), l_rows[:, :6].T @ l_rows[:, :6] / 15)
    for name, (got, expected) in results.items():
        assert got.dtype == torch.float32, name
        np.testing.assert_allclose(got.double().numpy(), expected, **TOL32, err_msg=name)


def test_float32_input_stays_float32() -> None:
    geom = ConvGeometry(in_channels=2, out_channels=2, kernel_size=(2, 2))
    x = torch.randn(1, 2, 4, 4)
    assert conv2d_rows(x, geom).dtype == torch.float32
    assert conv2d_sketch(x, geom, Gaussian(2).draw(geom.dim, dtype=torch.float64)).dtype == (
        torch.float32
    )
    assert linear_covariance(x, bias=False).dtype == torch.float32


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------

GEOM = ConvGeometry(in_channels=4, out_channels=6, kernel_size=(3, 3), groups=2)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: conv2d_rows(torch.randn(2, 3, 5, 5), GEOM), ValueError, "x has 3 channels"),
        (
            lambda: conv2d_sketch(torch.randn(4, 5, 5), GEOM, Gaussian(2).draw(19)),
            ValueError,
            "x must have shape",
        ),
        (lambda: conv2d_mean(torch.randn(0, 4, 5, 5), GEOM), ValueError, "at least one"),
        (lambda: conv2d_square_mean(torch.randn(1, 4, 2, 5), GEOM), ValueError, "height"),
        (lambda: conv2d_covariance(torch.randn(1, 4, 5, 2), GEOM), ValueError, "width"),
        (
            lambda: conv2d_sketch(torch.randn(1, 4, 5, 5), GEOM, Gaussian(2).draw(37)),
            ValueError,
            "test_matrix",
        ),
        (
            lambda: conv2d_sketch(torch.randn(1, 4, 5, 5), GEOM, Subcolumn(2).draw(18)),
            ValueError,
            "test_matrix",
        ),
        (
            lambda: conv2d_sketch(torch.randn(1, 4, 5, 5), GEOM, torch.eye(19)),
            TypeError,
            "test_matrix",
        ),
        (
            lambda: conv2d_rows(torch.ones(1, 4, 5, 5, dtype=torch.int64), GEOM),
            TypeError,
            "x must have a floating",
        ),
        (lambda: conv2d_rows(np.ones((1, 4, 5, 5)), GEOM), TypeError, "x must be a torch.Tensor"),
        (lambda: conv2d_rows(torch.randn(1, 4, 5, 5), "geom"), TypeError, "geom"),
        (
            lambda: conv2d_output_rows(torch.randn(1, 4, 3, 3), GEOM),
            ValueError,
            "grad_out has 4 channels",
        ),
        (
            lambda: conv2d_output_mean(torch.randn(6, 3, 3), GEOM),
            ValueError,
            "grad_out must have shape",
        ),
        (
            lambda: conv2d_output_covariance(torch.ones(1, 6, 3, 3, dtype=torch.int32), GEOM),
            TypeError,
            "grad_out",
        ),
        (
            lambda: linear_sketch(torch.randn(3, 5), Gaussian(2).draw(5), bias=True),
            ValueError,
            "test_matrix",
        ),
        (lambda: linear_rows(torch.tensor(1.0), bias=True), ValueError, "x must have at least 1"),
        (lambda: linear_mean(torch.randn(0, 5), bias=True), ValueError, "at least one row"),
        (lambda: linear_covariance(torch.randn(3, 0), bias=True), ValueError, "last dimension"),
        (lambda: linear_output_rows(torch.ones(3, 2, dtype=torch.int64)), TypeError, "grad_out"),
        (lambda: ConvGeometry.from_module(nn.Linear(3, 3)), TypeError, "nn.Conv2d"),
        (lambda: ConvGeometry(4, 6, (3, 3), groups=4), ValueError, "groups"),
        (lambda: ConvGeometry(4, 6, (0, 3)), ValueError, "kernel_size"),
        (lambda: ConvGeometry(4, 6, (3, 3), stride=(1,)), ValueError, "stride"),  # type: ignore[arg-type]
        (lambda: ConvGeometry(4, 6, (3, 3), padding=(1, -1, 0, 0)), ValueError, "padding"),
        (lambda: ConvGeometry(4, 6, (3, 3), padding_mode="mirror"), ValueError, "padding_mode"),  # type: ignore[arg-type]
        (lambda: ConvGeometry(0, 6, (3, 3)), ValueError, "in_channels"),
    ],
)
def test_bad_inputs_raise(call: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------
# Tap counts (the no-convolution path of conv2d_mean / conv2d_square_mean)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    ("size", "k", "stride", "dilation", "lo", "hi"),
    [
        (7, 3, 1, 1, 1, 1),
        (8, 3, 2, 1, 1, 0),
        (9, 2, 3, 2, 0, 2),
        (6, 5, 1, 1, 2, 2),
        (5, 1, 2, 1, 0, 0),
    ],
)
def test_axis_tap_counts_match_padded_index_ramp(
    mode: str, size: int, k: int, stride: int, dilation: int, lo: int, hi: int
) -> None:
    """Oracle: pad an index ramp with F.pad in the same mode; count what each tap reads."""
    from nysact.curvature.rows import _axis_tap_counts

    ramp = torch.arange(size, dtype=torch.float64).view(1, 1, size) + 1.0  # 0 = a padded zero
    f_mode = {"zeros": "constant"}.get(mode, mode)
    padded = torch.nn.functional.pad(ramp, (lo, hi), mode=f_mode)[0, 0].long() - 1
    out = (size + lo + hi - dilation * (k - 1) - 1) // stride + 1
    expected = np.zeros((k, size), dtype=np.int64)
    for t in range(k):
        for i in range(out):
            src = int(padded[i * stride + t * dilation])
            if src >= 0:
                expected[t, src] += 1
    np.testing.assert_array_equal(
        np.array(_axis_tap_counts(size, k, stride, dilation, lo, hi, mode)), expected
    )
