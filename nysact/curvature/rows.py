r"""Activation and output-gradient statistics of ``nn.Linear`` and ``nn.Conv2d`` layers.

A layer's gradient matrix is ``Ĝ = [∇W | ∇b]`` (d_out × p, bias as the last column) and its
activation covariance is

.. math::  A = X^\top X / n,

with X the n × p *rows* matrix: one row per sample (Linear; every leading dimension of the input
is a sample dimension, so transformer tokens (B, T, d) give n = B·T rows) or per sample and output
position (Conv2d: the input patch that the kernel sees, ``X = unfold(pad(x))``, n = B·oH·oW),
with a column of ones appended when the layer has a bias. This module turns a layer's input x
(and output gradient) into the statistics the curvature estimators need:

* rows X, full covariances ``A = XᵀX/n`` (FOOF / KFAC; conv builds the patch matrix with unfold),
* sketches ``Y = AΩ = Xᵀ(XΩ)/n`` for a test matrix Ω (NysAct), computed for convolutions
  *without* any unfold: ``Z = XΩ`` is a convolution of x with the r filters stored in Ω (or, for
  a subcolumn Ω, a set of shifted strided slices of the padded input) and ``XᵀZ`` is that
  convolution's weight gradient,
* means ``ā = 1ᵀX/n`` (Eva, MAC) and coordinate second moments ``E[a_j²]`` (AdaAct),
* the output-gradient rows ``G`` (n × d_out), ``GᵀG/n`` and ``1ᵀG/n`` (KFAC's G factor, Eva's ḡ).

Grouping decision
-----------------
A grouped convolution (``groups = g``) is g independent layers: group k maps input channels
``k·C_in/g … (k+1)·C_in/g − 1`` to output channels ``k·C_out/g … (k+1)·C_out/g − 1``, so its
gradient matrix is block diagonal and each group gets **its own** covariance of size
``p = (C_in/g)·kh·kw (+1)``. Conv statistics therefore carry a leading group axis of length g
(g = 1 for an ordinary conv): rows (g, n, p), covariance (g, p, p), sketch (g, p, r), mean
(g, p). A depthwise conv (``groups = C_in``) gets one kh·kw(+1) covariance per channel. Within a
group the columns are ordered as ``weight.view(C_out, -1)`` (channel-major, then kernel row,
then kernel column), so ``Ĝ_k = [W_k.view(C_out/g, -1) | b_k]`` pairs with the group-k rows.
Linear statistics have no group axis.

For sketches, the **same** test matrix Ω (p × r) is used for every group of a layer: the group
covariances are independent problems of the same size, and one Ω per layer keeps the sketch state
(and its refresh) per layer.

Precision
---------
Statistics of float16 / bfloat16 inputs are computed and returned in float32 (AMP safety: a
half-precision covariance loses the damping and its eigen-solvers reject it); float32 / float64
inputs are computed and returned in their own dtype. Non-floating inputs raise ``TypeError``.

Normalisation and scaling of the output gradient (e.g. multiplying by the batch size when the
loss is a mean) are the caller's business: these functions divide by the number of rows n only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf
from torch.nn.grad import conv2d_weight

from nysact.sketch.test_matrices import SubcolumnTestMatrix, TestMatrix

__all__ = [
    "ConvGeometry",
    "PaddingMode",
    "conv2d_covariance",
    "conv2d_mean",
    "conv2d_output_covariance",
    "conv2d_output_mean",
    "conv2d_output_rows",
    "conv2d_rows",
    "conv2d_sketch",
    "conv2d_square_mean",
    "linear_covariance",
    "linear_mean",
    "linear_output_covariance",
    "linear_output_mean",
    "linear_output_rows",
    "linear_rows",
    "linear_sketch",
    "linear_square_mean",
]

#: The ``padding_mode`` values of ``nn.Conv2d`` that the patch extraction reproduces.
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
_PADDING_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate", "circular")
_F_PAD_MODE = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "replicate",
    "circular": "circular",
}


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _pair_of_positive(name: str, value: object) -> tuple[int, int]:
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        raise ValueError(f"Invalid {name}: {value!r}. Must be a pair of ints >= 1.")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class ConvGeometry:
    r"""The geometry of an ``nn.Conv2d``: everything needed to extract its input patches.

    Output size per spatial axis: ``o = ⌊(i + pad_lo + pad_hi − dil·(k − 1) − 1)/stride⌋ + 1``.

    Attributes
    ----------
    in_channels, out_channels : int
        C_in and C_out.
    kernel_size : tuple of int
        (kh, kw).
    stride, dilation : tuple of int
        (sh, sw), (dh, dw).
    groups : int
        g; C_in and C_out are multiples of g.
    padding : tuple of int
        Explicit (left, right, top, bottom) padding (the order of ``F.pad`` for 4-D inputs).
        String padding is resolved as PyTorch does: ``'valid'`` is no padding; ``'same'`` pads
        ``total = dil·(k − 1)`` per axis with ``lo = total // 2`` and ``hi = total − lo``.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
        How the padding is filled (``F.pad`` mode, ``'zeros'`` being ``'constant'`` 0).
    has_bias : bool
        Whether a column of ones is appended to the rows.

    Raises
    ------
    ValueError
        If a field is out of range (non-positive sizes, channels not divisible by groups,
        negative padding, unknown padding mode).
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    padding_mode: PaddingMode = "zeros"
    has_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Invalid {name}: {v!r}. Must be an int >= 1.")
        _pair_of_positive("kernel_size", self.kernel_size)
        _pair_of_positive("stride", self.stride)
        _pair_of_positive("dilation", self.dilation)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"Invalid groups: {self.groups}. in_channels={self.in_channels} and "
                f"out_channels={self.out_channels} must both be divisible by groups."
            )
        pad = self.padding
        if (
            not isinstance(pad, tuple)
            or len(pad) != 4
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in pad)
        ):
            raise ValueError(
                f"Invalid padding: {pad!r}. Must be (left, right, top, bottom) ints >= 0."
            )
        if self.padding_mode not in _PADDING_MODES:
            raise ValueError(
                f"Invalid padding_mode: {self.padding_mode!r}. Must be one of {_PADDING_MODES}."
            )
        if not isinstance(self.has_bias, bool):
            raise ValueError(f"Invalid has_bias: {self.has_bias!r}. Must be a bool.")

    @classmethod
    def from_module(cls, conv: nn.Conv2d) -> ConvGeometry:
        """Read the geometry of an ``nn.Conv2d``.

        Parameters
        ----------
        conv : nn.Conv2d
            The convolution (any subclass).

        Returns
        -------
        ConvGeometry
            Its geometry, with string padding resolved to explicit (left, right, top, bottom).

        Raises
        ------
        TypeError
            If ``conv`` is not an ``nn.Conv2d``.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        kh, kw = (int(k) for k in conv.kernel_size)
        dh, dw = (int(d) for d in conv.dilation)
        padding: tuple[int, int, int, int]
        if isinstance(conv.padding, str):
            if conv.padding == "valid":
                padding = (0, 0, 0, 0)
            elif conv.padding == "same":
                total_h, total_w = dh * (kh - 1), dw * (kw - 1)
                padding = (
                    total_w // 2,
                    total_w - total_w // 2,
                    total_h // 2,
                    total_h - total_h // 2,
                )
            else:  # pragma: no cover - nn.Conv2d rejects other strings
                raise ValueError(f"Invalid conv.padding: {conv.padding!r}")
        else:
            ph, pw = (int(p) for p in conv.padding)
            padding = (pw, pw, ph, ph)
        mode = conv.padding_mode
        if mode not in _PADDING_MODES:  # pragma: no cover - nn.Conv2d rejects other modes
            raise ValueError(f"Invalid conv.padding_mode: {mode!r}")
        sh, sw = (int(s) for s in conv.stride)
        return cls(
            in_channels=int(conv.in_channels),
            out_channels=int(conv.out_channels),
            kernel_size=(kh, kw),
            stride=(sh, sw),
            dilation=(dh, dw),
            groups=int(conv.groups),
            padding=padding,
            padding_mode=mode,
            has_bias=conv.bias is not None,
        )

    @property
    def group_in(self) -> int:
        """Input channels per group, ``C_in / g``."""
        return self.in_channels // self.groups

    @property
    def group_out(self) -> int:
        """Output channels per group, ``C_out / g``."""
        return self.out_channels // self.groups

    @property
    def patch_dim(self) -> int:
        """Weight columns per group, ``(C_in / g)·kh·kw``."""
        return self.group_in * self.kernel_size[0] * self.kernel_size[1]

    @property
    def dim(self) -> int:
        """Covariance size per group, ``p = patch_dim (+1 with a bias)``."""
        return self.patch_dim + (1 if self.has_bias else 0)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Return the output spatial size (oH, oW) for an input of size (height, width).

        Parameters
        ----------
        height, width : int
            Input spatial size (before padding).

        Returns
        -------
        tuple of int
            ``o = ⌊(i + pad_lo + pad_hi − dil·(k − 1) − 1)/stride⌋ + 1`` per axis.

        Raises
        ------
        ValueError
            If the (padded) input is smaller than the dilated kernel.
        """
        left, right, top, bottom = self.padding
        out = []
        for name, size, lo, hi, k, d, s in (
            ("height", height, top, bottom, self.kernel_size[0], self.dilation[0], self.stride[0]),
            ("width", width, left, right, self.kernel_size[1], self.dilation[1], self.stride[1]),
        ):
            span = size + lo + hi - d * (k - 1) - 1
            if span < 0:
                raise ValueError(
                    f"Invalid input {name} {size}: the padded input ({size + lo + hi}) is smaller "
                    f"than the dilated kernel ({d * (k - 1) + 1})."
                )
            out.append(span // s + 1)
        return (out[0], out[1])


# --------------------------------------------------------------------------------------------
# Validation and shared helpers
# --------------------------------------------------------------------------------------------


def _compute_dtype(name: str, x: object) -> torch.dtype:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _check_geometry(geom: object) -> ConvGeometry:
    if not isinstance(geom, ConvGeometry):
        raise TypeError(f"geom must be a ConvGeometry, got {type(geom).__name__}")
    return geom


def _check_test_matrix(test_matrix: object, dim: int) -> TestMatrix:
    if not isinstance(test_matrix, TestMatrix):
        raise TypeError(f"test_matrix must be a TestMatrix, got {type(test_matrix).__name__}")
    if test_matrix.dim != dim:
        raise ValueError(
            f"test_matrix has {test_matrix.dim} rows but the layer's covariance size is {dim}"
        )
    return test_matrix


def _flatten_linear(name: str, x: Tensor) -> Tensor:
    """(..., d) → (n, d) in the compute dtype; every leading dimension is a row dimension."""
    dtype = _compute_dtype(name, x)
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension (..., d), got a scalar")
    if x.shape[-1] < 1:
        raise ValueError(f"{name} must have a last dimension d >= 1, got shape {tuple(x.shape)}")
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    if flat.shape[0] < 1:
        raise ValueError(f"{name} must have at least one row, got shape {tuple(x.shape)}")
    return flat


def _append_ones(rows: Tensor) -> Tensor:
    ones = torch.ones(*rows.shape[:-1], 1, dtype=rows.dtype, device=rows.device)
    return torch.cat([rows, ones], dim=-1)


def _padded_conv_input(
    x: Tensor, geom: ConvGeometry, *, pad: bool = True
) -> tuple[Tensor, int, int]:
    """Validate x (B, C_in, H, W), cast it to the compute dtype and pad it explicitly.

    With ``pad=False`` the padding is left to the caller (implicit padding of the conv ops).

    Returns the padded input and the output size (oH, oW).
    """
    x, oh, ow = _checked_conv_input(x, geom)
    if pad and any(geom.padding):
        mode = _F_PAD_MODE[geom.padding_mode]
        x = nnf.pad(x, list(geom.padding), mode=mode)
    return x.contiguous(), oh, ow


def _implicit_padding(geom: ConvGeometry) -> tuple[int, int] | None:
    """(pad_h, pad_w) when the convolution ops can pad implicitly (symmetric zero padding).

    Then the sketch skips the padded copy of the input (measured: the copy and the wider
    weight-gradient input cost ≈ 30 % of a ResNet-32 statistics step on CPU).
    """
    left, right, top, bottom = geom.padding
    if geom.padding_mode != "zeros" or left != right or top != bottom:
        return None
    return top, left


def _conv_weight_grad(
    xp: Tensor,
    weight_shape: tuple[int, int, int, int],
    z: Tensor,
    geom: ConvGeometry,
    padding: tuple[int, int] = (0, 0),
) -> Tensor:
    """``∂⟨conv(xp, W), z⟩/∂W`` — the correlation ``Σ_{b,pos} patch ⊗ z``.

    ``padding`` is the implicit zero padding still to apply (0 when xp is already padded).
    """
    out: Tensor = conv2d_weight(  # type: ignore[no-untyped-call]
        xp, weight_shape, z, geom.stride, padding, geom.dilation, geom.groups
    )
    return out


# --------------------------------------------------------------------------------------------
# Linear activation statistics
# --------------------------------------------------------------------------------------------


def linear_rows(x: Tensor, *, bias: bool) -> Tensor:
    r"""Return the rows X of a Linear layer's input, ``X = [x | 1]``.

    Parameters
    ----------
    x : Tensor
        Layer input, shape (..., d_in); all leading dimensions are rows (n = their product).
    bias : bool
        Append a column of ones (the layer has a bias).

    Returns
    -------
    Tensor
        X, shape (n, d_in) or (n, d_in + 1), float32 for half inputs, else x's dtype.

    Raises
    ------
    TypeError
        If x is not a floating tensor.
    ValueError
        If x is a scalar or has no rows.
    """
    rows = _flatten_linear("x", x)
    return _append_ones(rows) if bias else rows


def linear_covariance(x: Tensor, *, bias: bool) -> Tensor:
    r"""Return ``A = XᵀX/n`` with ``X = [x | 1]`` the Linear rows (see :func:`linear_rows`).

    Parameters
    ----------
    x : Tensor
        Layer input, shape (..., d_in).
    bias : bool
        Whether the layer has a bias (ones column).

    Returns
    -------
    Tensor
        A, shape (p, p), p = d_in (+1).

    Raises
    ------
    TypeError, ValueError
        As :func:`linear_rows`.
    """
    rows = linear_rows(x, bias=bias)
    return rows.mT @ rows / rows.shape[0]


def linear_sketch(x: Tensor, test_matrix: TestMatrix, *, bias: bool) -> Tensor:
    r"""Return ``Y = AΩ = Xᵀ(XΩ)/n`` without forming ``XᵀX`` (nor the ones column).

    With ``Ω = [Ω_w; ω_b]`` (weight rows, bias row): ``Z = XΩ = x Ω_w + 1 ω_bᵀ``,
    ``Y = [xᵀZ; 1ᵀZ]/n``. A subcolumn Ω is a gather ``Z = X[:, idx]``.

    Parameters
    ----------
    x : Tensor
        Layer input, shape (..., d_in).
    test_matrix : TestMatrix
        Ω of shape (p, r), p = d_in (+1).
    bias : bool
        Whether the layer has a bias.

    Returns
    -------
    Tensor
        Y, shape (p, r).

    Raises
    ------
    TypeError
        If x is not a floating tensor or test_matrix not a TestMatrix.
    ValueError
        If ``test_matrix.dim != p`` or x has no rows.
    """
    flat = _flatten_linear("x", x)
    n, d_in = flat.shape
    tm = _check_test_matrix(test_matrix, d_in + (1 if bias else 0))
    if isinstance(tm, SubcolumnTestMatrix):
        idx = tm.indices.to(device=flat.device, dtype=torch.long)
        is_bias = idx == d_in
        z = flat.index_select(1, torch.where(is_bias, torch.zeros_like(idx), idx))
        z = torch.where(is_bias, torch.ones((), dtype=z.dtype, device=z.device), z)
    else:
        omega = tm.dense().to(dtype=flat.dtype, device=flat.device)
        z = flat @ omega[:d_in]
        if bias:
            z = z + omega[d_in]
    y = flat.mT @ z
    if bias:
        y = torch.cat([y, z.sum(0, keepdim=True)], dim=0)
    return y / n


def linear_mean(x: Tensor, *, bias: bool) -> Tensor:
    r"""Return the mean row ``ā = 1ᵀX/n = [mean(x) | 1]``.

    Parameters
    ----------
    x : Tensor
        Layer input, shape (..., d_in).
    bias : bool
        Whether the layer has a bias (last entry 1).

    Returns
    -------
    Tensor
        ā, shape (p,).

    Raises
    ------
    TypeError, ValueError
        As :func:`linear_rows`.
    """
    mean = _flatten_linear("x", x).mean(0)
    return _append_ones(mean) if bias else mean


def linear_square_mean(x: Tensor, *, bias: bool) -> Tensor:
    r"""Return the coordinate second moments ``E[a_j²] = 1ᵀ(X ⊙ X)/n`` (bias entry 1).

    Parameters
    ----------
    x : Tensor
        Layer input, shape (..., d_in).
    bias : bool
        Whether the layer has a bias.

    Returns
    -------
    Tensor
        Shape (p,).

    Raises
    ------
    TypeError, ValueError
        As :func:`linear_rows`.
    """
    flat = _flatten_linear("x", x)
    sq = (flat * flat).mean(0)
    return _append_ones(sq) if bias else sq


# --------------------------------------------------------------------------------------------
# Conv2d activation statistics
# --------------------------------------------------------------------------------------------


def conv2d_rows(x: Tensor, geom: ConvGeometry) -> Tensor:
    r"""Return the patch rows of a Conv2d input per group, ``X_k = [unfold(pad(x))_k | 1]``.

    Row ``b·oH·oW + i·oW + j`` of group k is the input patch under output position (i, j) of
    sample b, restricted to group k's input channels, flattened channel-major then kernel row then
    kernel column — the column order of ``weight.view(C_out, -1)`` — so
    ``conv(x)[b, o, i, j] = W.view(C_out, -1)[o] · X_k[row, :patch_dim] + bias[o]`` for output
    channel o of group k. Builds the n × p matrix with unfold (for full covariances and tests;
    use :func:`conv2d_sketch`, :func:`conv2d_mean` to avoid it).

    Parameters
    ----------
    x : Tensor
        Layer input, shape (B, C_in, H, W).
    geom : ConvGeometry
        The conv's geometry.

    Returns
    -------
    Tensor
        X, shape (g, n, p), n = B·oH·oW, p = geom.dim.

    Raises
    ------
    TypeError
        If x is not a floating tensor or geom not a ConvGeometry.
    ValueError
        If x is not (B ≥ 1, C_in, H, W) or is smaller than the dilated kernel.
    """
    geom = _check_geometry(geom)
    xp, oh, ow = _padded_conv_input(x, geom)
    b = xp.shape[0]
    cols = nnf.unfold(xp, geom.kernel_size, dilation=geom.dilation, padding=0, stride=geom.stride)
    g = geom.groups
    rows = (
        cols.reshape(b, g, geom.patch_dim, oh * ow)
        .permute(1, 0, 3, 2)
        .reshape(g, b * oh * ow, geom.patch_dim)
    )
    return _append_ones(rows) if geom.has_bias else rows


def conv2d_covariance(x: Tensor, geom: ConvGeometry) -> Tensor:
    r"""Return ``A_k = X_kᵀX_k/n`` per group, X_k the patch rows (see :func:`conv2d_rows`).

    Parameters
    ----------
    x : Tensor
        Layer input, shape (B, C_in, H, W).
    geom : ConvGeometry
        The conv's geometry.

    Returns
    -------
    Tensor
        A, shape (g, p, p), n = B·oH·oW.

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d_rows`.
    """
    rows = conv2d_rows(x, geom)
    return rows.mT @ rows / rows.shape[1]


def _subcolumn_z(
    x: Tensor,
    geom: ConvGeometry,
    indices: tuple[int, ...],
    oh: int,
    ow: int,
    padding: tuple[int, int, int, int],
) -> Tensor:
    """``Z = X[:, idx]`` from an input that still lacks ``padding`` (left, right, top, bottom).

    Each column is written into a zero-initialised (B, g, r, oH, oW) buffer over the output
    positions whose receptive-field entry lies inside x; the rest stay 0, which is exactly the
    zero padding. With ``padding = (0, 0, 0, 0)`` every position is inside (x already padded).
    """
    b, g, gi = x.shape[0], geom.groups, geom.group_in
    kh, kw = geom.kernel_size
    dh, dw = geom.dilation
    sh, sw = geom.stride
    left, _, top, _ = padding
    height, width = x.shape[2], x.shape[3]
    xg = x.view(b, g, gi, height, width)
    idx = indices
    z = x.new_zeros(b, g, len(idx), oh, ow)
    for col, flat_index in enumerate(idx):
        if flat_index == geom.patch_dim:
            z[:, :, col] = 1.0
            continue
        c, rest = divmod(flat_index, kh * kw)
        i, j = divmod(rest, kw)
        rows_ = _valid_range(top - i * dh, sh, height, oh)
        cols_ = _valid_range(left - j * dw, sw, width, ow)
        if rows_ is None or cols_ is None:
            continue  # this entry only ever sees padding
        (p0, p1, s0), (q0, q1, t0) = rows_, cols_
        z[:, :, col, p0:p1, q0:q1] = xg[
            :, :, c, s0 : s0 + (p1 - p0 - 1) * sh + 1 : sh, t0 : t0 + (q1 - q0 - 1) * sw + 1 : sw
        ]
    return z.view(b, g * len(idx), oh, ow)


@functools.lru_cache(maxsize=64)
def _gather_plan(
    indices: tuple[int, ...], geom: ConvGeometry, height: int, width: int, device: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Flat source index, validity mask and fill value of every entry of Z (see below).

    For column (c, i, j) and output position (p, q) the source is
    ``x[c, p·sh + i·dh − top, q·sw + j·dw − left]`` when inside x; outside it the entry is the
    padding (fill 0), and the bias column is 1 everywhere. Cached per Ω and input size (the
    window sketch keeps Ω for τ_inv steps).
    """
    kh, kw = geom.kernel_size
    dh, dw = geom.dilation
    sh, sw = geom.stride
    left, _, top, _ = geom.padding
    oh, ow = geom.output_size(height, width)
    col = torch.tensor(indices, dtype=torch.int64)
    bias = col == geom.patch_dim
    c, rest = torch.div(col, kh * kw, rounding_mode="floor"), col % (kh * kw)
    i, j = torch.div(rest, kw, rounding_mode="floor"), rest % kw
    rows_ = torch.arange(oh)[None, :, None] * sh + (i * dh - top)[:, None, None]
    cols_ = torch.arange(ow)[None, None, :] * sw + (j * dw - left)[:, None, None]
    inside = (rows_ >= 0) & (rows_ < height) & (cols_ >= 0) & (cols_ < width) & ~bias[:, None, None]
    flat = c[:, None, None] * (height * width) + rows_.clamp(0, height - 1) * width
    flat = torch.where(inside, flat + cols_.clamp(0, width - 1), 0)
    fill = bias[:, None, None].expand_as(inside).to(torch.float32)
    return flat.reshape(-1).to(device), inside.reshape(-1).to(device), fill.reshape(-1).to(device)


def _subcolumn_z_gather(
    x: Tensor, geom: ConvGeometry, indices: tuple[int, ...], oh: int, ow: int
) -> Tensor:
    """:func:`_subcolumn_z` for an unpadded input as one gather (GPU: 3 kernels, not r + 1)."""
    b, g, gi = x.shape[0], geom.groups, geom.group_in
    height, width = int(x.shape[2]), int(x.shape[3])
    key = indices
    flat, inside, fill = _gather_plan(key, geom, height, width, str(x.device))
    z = x.reshape(b, g, gi * height * width).index_select(-1, flat)
    z = torch.where(inside, z, fill.to(x.dtype))
    return z.view(b, g * len(key), oh, ow)


def _valid_range(offset: int, stride: int, size: int, out: int) -> tuple[int, int, int] | None:
    """Output positions o ∈ [o0, o1) whose source ``o·stride − offset`` lies in [0, size).

    Returns (o0, o1, source of o0), or None if there is none.
    """
    o0 = max(0, -(-offset // stride))  # ceil(offset / stride)
    o1 = min(out, (size - 1 + offset) // stride + 1)
    if o1 <= o0:
        return None
    return o0, o1, o0 * stride - offset


def conv2d_sketch(x: Tensor, geom: ConvGeometry, test_matrix: TestMatrix) -> Tensor:
    r"""Return ``Y_k = A_kΩ = X_kᵀ(X_kΩ)/n`` per group, without unfolding x.

    With ``Ω = [Ω_w; ω_b]`` (p × r): ``Z = X_kΩ`` is the convolution of the padded input's group
    k with the r filters ``Ω_wᵀ.view(r, C_in/g, kh, kw)`` plus the constant ω_b per filter (for a
    subcolumn Ω, Z is a stack of shifted strided slices of the padded input); ``X_kᵀZ`` is that
    convolution's weight gradient (``conv2d_weight``) and its bias row is Z summed over the batch
    and positions. The same Ω is used for every group (see the module docstring). Cost
    O(n·p·r) per group, memory O(n·r) — the n × p patch matrix is never built.

    Parameters
    ----------
    x : Tensor
        Layer input, shape (B, C_in, H, W).
    geom : ConvGeometry
        The conv's geometry.
    test_matrix : TestMatrix
        Ω of shape (p, r), p = geom.dim.

    Returns
    -------
    Tensor
        Y, shape (g, p, r), equal to ``conv2d_rows(x)ᵀ(conv2d_rows(x) Ω)/n``.

    Raises
    ------
    TypeError
        If x is not a floating tensor, geom not a ConvGeometry or test_matrix not a TestMatrix.
    ValueError
        If ``test_matrix.dim != geom.dim`` or x does not fit geom (see :func:`conv2d_rows`).
    """
    geom = _check_geometry(geom)
    tm = _check_test_matrix(test_matrix, geom.dim)
    implicit = _implicit_padding(geom)
    if implicit is None:
        xp, oh, ow = _padded_conv_input(x, geom)
        pad_hw, pad_z = (0, 0), (0, 0, 0, 0)
    else:  # symmetric zero padding: let the convolutions pad, never copy a padded input
        xp, oh, ow = _padded_conv_input(x, geom, pad=False)
        pad_hw, pad_z = implicit, geom.padding
    b, g, gi, r = xp.shape[0], geom.groups, geom.group_in, tm.rank
    kh, kw = geom.kernel_size
    n = b * oh * ow
    if isinstance(tm, SubcolumnTestMatrix):
        if implicit is not None and xp.device.type != "cpu":
            z = _subcolumn_z_gather(xp, geom, tm.host_indices, oh, ow)
        else:  # on the CPU r slice copies beat a gather (no index tensor to read)
            z = _subcolumn_z(xp, geom, tm.host_indices, oh, ow, pad_z)
    else:
        omega = tm.dense().to(dtype=xp.dtype, device=xp.device)
        filters = omega[: geom.patch_dim].mT.reshape(r, gi, kh, kw)
        # Same Ω for every group: fold the groups into the batch and convolve with r filters.
        z = nnf.conv2d(
            xp.view(b * g, gi, xp.shape[2], xp.shape[3]),
            filters,
            stride=geom.stride,
            padding=pad_hw,
            dilation=geom.dilation,
        )
        if geom.has_bias:
            z = z + omega[geom.patch_dim].view(1, r, 1, 1)
        z = z.reshape(b, g * r, oh, ow)
    y = _conv_weight_grad(xp, (g * r, gi, kh, kw), z, geom, pad_hw)
    y = y.reshape(g, r, geom.patch_dim).mT
    if geom.has_bias:
        bias_row = z.reshape(b, g, r, oh * ow).sum(dim=(0, 3))
        y = torch.cat([y, bias_row.unsqueeze(1)], dim=1)
    return y / n


def _axis_tap_counts(
    size: int, k: int, stride: int, dilation: int, lo: int, hi: int, mode: str
) -> tuple[tuple[int, ...], ...]:
    """``c[t][u]``: how often input index u is read by kernel tap t over all output positions.

    Along one axis, tap t of output i reads the padded index ``i·s + t·d``, i.e. the unpadded
    position ``v = i·s + t·d − lo``; padding maps v to a source index (``zeros``: none when v is
    outside ``[0, size)``; ``reflect``: ``−v`` / ``2(size−1) − v``; ``replicate``: clamp;
    ``circular``: ``v mod size``), exactly as ``F.pad`` fills the border.
    """
    out = (size + lo + hi - dilation * (k - 1) - 1) // stride + 1
    counts = [[0] * size for _ in range(k)]
    for t in range(k):
        for i in range(out):
            v = i * stride + t * dilation - lo
            if 0 <= v < size:
                u = v
            elif mode == "zeros":
                continue
            elif mode == "reflect":
                u = -v if v < 0 else 2 * (size - 1) - v
            elif mode == "replicate":
                u = min(max(v, 0), size - 1)
            else:  # circular
                u = v % size
            counts[t][u] += 1
    return tuple(tuple(row) for row in counts)


@functools.lru_cache(maxsize=256)
def _tap_count_matrix(
    geom: ConvGeometry,
    height: int,
    width: int,
    scale: float,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """Cached ``scale·(R ⊗ C)ᵀ``, (H·W, kh·kw), with R and C from :func:`_axis_tap_counts`."""
    left, right, top, bottom = geom.padding
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel_size, geom.stride, geom.dilation
    r = torch.tensor(_axis_tap_counts(height, kh, sh, dh, top, bottom, geom.padding_mode))
    c = torch.tensor(_axis_tap_counts(width, kw, sw, dw, left, right, geom.padding_mode))
    kron = torch.kron(r.to(torch.float64), c.to(torch.float64)) * scale
    return kron.mT.contiguous().to(dtype=dtype, device=device)


def _conv_tap_mean(image_sum: Tensor, geom: ConvGeometry, batch: int, oh: int, ow: int) -> Tensor:
    r"""Return ``Σ_rows X[:, :patch_dim] / n`` per group, (g, patch_dim), from the summed batch.

    Every patch coordinate (c, t_h, t_w) reads input row u and column v a fixed number of times
    R[t_h, u]·C[t_w, v] over the output positions (:func:`_axis_tap_counts`; padding is a
    separable index map for every mode), so its sum is ``Σ_{u,v} R[t_h,u] P[c,u,v] C[t_w,v]``
    for the batch-summed image P: one (C, H·W) × (H·W, kh·kw) matmul with the cached
    ``(R ⊗ C)ᵀ``, the weight gradient of a one-filter convolution against an all-ones output
    gradient without running the convolution.
    """
    height, width = int(image_sum.shape[-2]), int(image_sum.shape[-1])
    kron_t = _tap_count_matrix(
        geom, height, width, 1.0 / (batch * oh * ow), image_sum.dtype, image_sum.device
    )
    taps = torch.mm(image_sum.reshape(image_sum.shape[0], height * width), kron_t)
    return taps.reshape(geom.groups, geom.patch_dim)


def _checked_conv_input(x: Tensor, geom: ConvGeometry) -> tuple[Tensor, int, int]:
    """:func:`_padded_conv_input` without padding or a contiguous copy (for reductions)."""
    dtype = _compute_dtype("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C_in, H, W), got {x.ndim} dims {tuple(x.shape)}")
    if x.shape[1] != geom.in_channels:
        raise ValueError(f"x has {x.shape[1]} channels but geom.in_channels is {geom.in_channels}")
    if x.shape[0] < 1:
        raise ValueError(f"x must have a batch of at least one sample, got {tuple(x.shape)}")
    oh, ow = geom.output_size(int(x.shape[2]), int(x.shape[3]))
    return x.to(dtype), oh, ow


def _batch_sum(x: Tensor) -> Tensor:
    """``Σ_b x_b``, shape x.shape[1:]: one GEMV ``1ᵀX`` when x is contiguous.

    The GEMV reads x at memory bandwidth, about twice as fast as ``x.sum(0)`` on the 2-core
    CPU (ResNet-32 inputs at batch 128: 4.6 vs 9.0 ms per step of all 31 layers).
    """
    if not x.is_contiguous():
        return x.sum(dim=0)
    b = x.shape[0]
    ones = torch.ones(1, b, dtype=x.dtype, device=x.device)
    return torch.matmul(ones, x.view(b, -1)).view(x.shape[1:])


def conv2d_mean(x: Tensor, geom: ConvGeometry) -> Tensor:
    r"""Return the mean patch row ``ā_k = 1ᵀX_k/n`` per group, without unfolding x.

    ``1ᵀX_k[:, :patch_dim]`` is the weight gradient of a one-filter convolution against an
    all-ones output gradient. The ones are the same for every sample, so the batch is summed
    first, and the correlation with ones is a weighted sum of the summed image's entries (each
    input entry is read by tap (t_h, t_w) a fixed number of times): a GEMV over the batch, then
    one small matmul with a cached count matrix. The bias entry is 1.

    Parameters
    ----------
    x : Tensor
        Layer input, shape (B, C_in, H, W).
    geom : ConvGeometry
        The conv's geometry.

    Returns
    -------
    Tensor
        ā, shape (g, p).

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d_rows`.
    """
    geom = _check_geometry(geom)
    x, oh, ow = _checked_conv_input(x, geom)
    mean = _conv_tap_mean(_batch_sum(x), geom, x.shape[0], oh, ow)
    return _append_ones(mean) if geom.has_bias else mean


def conv2d_square_mean(x: Tensor, geom: ConvGeometry) -> Tensor:
    r"""Return the coordinate second moments ``E[a_j²] = 1ᵀ(X_k ⊙ X_k)/n`` per group.

    Computed without unfold as :func:`conv2d_mean` of the squared input (every padding mode
    copies entries or writes zeros, so padding commutes with squaring); the bias entry is 1.
    The pass over the batch is ``1ᵀ(X ⊙ X)``: a square and a GEMV (no faster fused reduction
    over the batch exists in eager PyTorch on CPU: ``vector_norm``, ``vecdot`` and ``einsum``
    over dim 0 were slower, measured on ResNet-32's inputs at batch 128).

    Parameters
    ----------
    x : Tensor
        Layer input, shape (B, C_in, H, W).
    geom : ConvGeometry
        The conv's geometry.

    Returns
    -------
    Tensor
        Shape (g, p).

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d_rows`.
    """
    geom = _check_geometry(geom)
    x, oh, ow = _checked_conv_input(x, geom)
    sq = _conv_tap_mean(_batch_sum(x.square()), geom, x.shape[0], oh, ow)
    return _append_ones(sq) if geom.has_bias else sq


# --------------------------------------------------------------------------------------------
# Output-gradient statistics
# --------------------------------------------------------------------------------------------


def linear_output_rows(grad_out: Tensor) -> Tensor:
    r"""Return the output-gradient rows ``G`` of a Linear layer (all leading dims are rows).

    Parameters
    ----------
    grad_out : Tensor
        ∂L/∂(layer output), shape (..., d_out).

    Returns
    -------
    Tensor
        G, shape (n, d_out).

    Raises
    ------
    TypeError
        If grad_out is not a floating tensor.
    ValueError
        If grad_out is a scalar or has no rows.
    """
    return _flatten_linear("grad_out", grad_out)


def linear_output_covariance(grad_out: Tensor) -> Tensor:
    r"""Return ``GᵀG/n`` for the Linear output-gradient rows G (KFAC's G factor).

    Parameters
    ----------
    grad_out : Tensor
        Shape (..., d_out).

    Returns
    -------
    Tensor
        Shape (d_out, d_out).

    Raises
    ------
    TypeError, ValueError
        As :func:`linear_output_rows`.
    """
    rows = linear_output_rows(grad_out)
    return rows.mT @ rows / rows.shape[0]


def linear_output_mean(grad_out: Tensor) -> Tensor:
    r"""Return the mean output-gradient row ``ḡ = 1ᵀG/n`` (Eva).

    Parameters
    ----------
    grad_out : Tensor
        Shape (..., d_out).

    Returns
    -------
    Tensor
        Shape (d_out,).

    Raises
    ------
    TypeError, ValueError
        As :func:`linear_output_rows`.
    """
    return linear_output_rows(grad_out).mean(0)


def conv2d_output_rows(grad_out: Tensor, geom: ConvGeometry) -> Tensor:
    r"""Return the output-gradient rows ``G_k`` per group: one row per (sample, position).

    Row ``b·oH·oW + i·oW + j`` of group k is ``grad_out[b, k·C_out/g : (k+1)·C_out/g, i, j]``,
    in the row order of :func:`conv2d_rows`.

    Parameters
    ----------
    grad_out : Tensor
        ∂L/∂(conv output), shape (B, C_out, oH, oW).
    geom : ConvGeometry
        The conv's geometry.

    Returns
    -------
    Tensor
        G, shape (g, n, C_out/g), n = B·oH·oW.

    Raises
    ------
    TypeError
        If grad_out is not a floating tensor or geom not a ConvGeometry.
    ValueError
        If grad_out is not (B ≥ 1, C_out, oH, oW).
    """
    geom = _check_geometry(geom)
    dtype = _compute_dtype("grad_out", grad_out)
    if grad_out.ndim != 4:
        raise ValueError(
            f"grad_out must have shape (B, C_out, oH, oW), got {grad_out.ndim} dims "
            f"{tuple(grad_out.shape)}"
        )
    b, c, oh, ow = grad_out.shape
    if c != geom.out_channels:
        raise ValueError(f"grad_out has {c} channels but geom.out_channels is {geom.out_channels}")
    if b * oh * ow < 1:
        raise ValueError(f"grad_out must have at least one row, got {tuple(grad_out.shape)}")
    g = geom.groups
    return (
        grad_out.to(dtype)
        .reshape(b, g, geom.group_out, oh * ow)
        .permute(1, 0, 3, 2)
        .reshape(g, b * oh * ow, geom.group_out)
    )


def conv2d_output_covariance(grad_out: Tensor, geom: ConvGeometry) -> Tensor:
    r"""Return ``G_kᵀG_k/n`` per group (KFAC's G factor; n = B·oH·oW).

    Parameters
    ----------
    grad_out : Tensor
        Shape (B, C_out, oH, oW).
    geom : ConvGeometry
        The conv's geometry.

    Returns
    -------
    Tensor
        Shape (g, C_out/g, C_out/g).

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d_output_rows`.
    """
    rows = conv2d_output_rows(grad_out, geom)
    return rows.mT @ rows / rows.shape[1]


def conv2d_output_mean(grad_out: Tensor, geom: ConvGeometry) -> Tensor:
    r"""Return the mean output-gradient row ``ḡ_k = 1ᵀG_k/n`` per group (Eva).

    Parameters
    ----------
    grad_out : Tensor
        Shape (B, C_out, oH, oW).
    geom : ConvGeometry
        The conv's geometry.

    Returns
    -------
    Tensor
        Shape (g, C_out/g).

    Raises
    ------
    TypeError, ValueError
        As :func:`conv2d_output_rows`.
    """
    return conv2d_output_rows(grad_out, geom).mean(1)
