"""Composed variants: grouped convs per group, KFAC with Nyström on both factors, NysAct-G+Nesterov.

Oracles: explicit unfold of each group's channels and ``scipy.linalg.solve`` in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from torch import nn
from torch.nn import functional as F

from nysact.curvature import Curvature, SketchedCovariance
from nysact.optim import (
    FOOF,
    ActivationInverse,
    KroneckerInverse,
    NysAct,
    add_weight_decay,
    chain,
    compose,
    trace_momentum,
)
from nysact.sketch import Gaussian, Subcolumn


def _step_delta(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> list[np.ndarray]:
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    model(x).square().sum().backward()
    opt.step()
    return [(p.detach() - b).numpy() for p, b in zip(model.parameters(), before, strict=True)]


@pytest.mark.parametrize("groups", [2, 4])
def test_foof_on_grouped_conv_preconditions_each_group(groups: int) -> None:
    """One covariance per group: ΔW_g = −lr·Ĝ_g (A_g + ρI)⁻¹ with A_g from group g's patches."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1, stride=2, groups=groups).double()
    model = nn.Sequential(conv)
    x = torch.randn(3, 4, 7, 7, dtype=torch.float64)
    rho, lr = 0.7, 0.5
    opt = FOOF(model, lr=lr, momentum=0.0, weight_decay=0.0, damping=rho)
    w0, b0 = conv.weight.detach().clone(), conv.bias.detach().clone()
    x_req = x.clone()
    out = F.conv2d(
        x_req, w0.requires_grad_(), b0.requires_grad_(), stride=2, padding=1, groups=groups
    )
    out.square().sum().backward()
    dw, db = _step_delta(model, opt, x)
    cin, cout = 4 // groups, 8 // groups
    for g in range(groups):
        xg = x[:, g * cin : (g + 1) * cin]
        cols = F.unfold(xg, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, cin * 9)
        rows = np.hstack([cols.numpy(), np.ones((cols.shape[0], 1))])
        a = rows.T @ rows / rows.shape[0]
        grad = np.hstack(
            [
                w0.grad[g * cout : (g + 1) * cout].reshape(cout, -1).numpy(),
                b0.grad[g * cout : (g + 1) * cout, None].numpy(),
            ]
        )
        want = -lr * sla.solve(a + rho * np.eye(len(a)), grad.T, assume_a="pos").T
        got = np.hstack(
            [dw[g * cout : (g + 1) * cout].reshape(cout, -1), db[g * cout : (g + 1) * cout, None]]
        )
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_kfac_with_nystrom_on_both_factors_at_full_rank_equals_dense_kronecker() -> None:
    """KroneckerInverse with sketched factors at r = dim (subcolumn, sketch path forced) equals
    (G + √ρI)⁻¹ Ĝ (A + √ρI)⁻¹ from explicit float64 factors and scipy solves."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4)).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    rho, lr = 0.3, 1.0
    both_sketched = Curvature(
        activation=SketchedCovariance(Subcolumn(6), dense_when_small=False),
        gradient=SketchedCovariance(Subcolumn(4), dense_when_small=False),
        gradient_batch_scaling=False,
    )
    opt = compose(
        model,
        curvature=both_sketched,
        solver=KroneckerInverse(),
        lr=lr,
        damping=rho,
        momentum=0.0,
        weight_decay=0.0,
        cov_every=1,
        inv_every=1,
    )
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    xa = np.hstack([x.numpy(), np.ones((16, 1))])
    out = x @ w0.T + b0
    go = (2 * out).numpy()  # d(sum out²)/d out
    grad = go.T @ xa
    a = xa.T @ xa / 16
    gf = go.T @ go / 16
    r = np.sqrt(rho)
    want = -lr * sla.solve(gf + r * np.eye(4), sla.solve(a + r * np.eye(6), grad.T).T)
    dw, db = _step_delta(model, opt, x)
    np.testing.assert_allclose(np.hstack([dw, db[:, None]]), want, rtol=1e-9, atol=1e-12)


def test_nysact_g_with_nesterov_and_decoupled_decay_in_a_few_lines() -> None:
    """A new variant from parts: NysAct-G, fixed sketch, Nesterov, decoupled weight decay; its
    first step equals the float64 hand computation (Nyström exact at r = d, Gaussian)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    opt = compose(
        model,
        curvature=Curvature(
            activation=SketchedCovariance(Gaussian(4), "fixed", dense_when_small=False)
        ),
        solver=ActivationInverse("tropp"),
        update=chain(trace_momentum(0.9, nesterov=True), add_weight_decay(0.1)),
        lr=0.2,
        damping=0.5,
        cov_every=1,
        inv_every=1,
    )
    x = torch.randn(10, 3, dtype=torch.float64)
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    xa = np.hstack([x.numpy(), np.ones((10, 1))])
    grad = (2 * (xa @ np.hstack([w0.numpy(), b0.numpy()[:, None]]).T)).T @ xa
    a = xa.T @ xa / 10
    pg = sla.solve(a + 0.5 * np.eye(4), grad.T).T
    buf = pg  # first momentum buffer
    d = pg + 0.9 * buf + 0.1 * np.hstack([w0.numpy(), b0.numpy()[:, None]])
    dw, db = _step_delta(model, opt, x)
    np.testing.assert_allclose(np.hstack([dw, db[:, None]]), -0.2 * d, rtol=1e-8, atol=1e-10)


def test_nysact_preconditions_depthwise_conv_exactly_small() -> None:
    """Depthwise conv (groups = C): each channel's 3·3+1 covariance ≤ rank → exact FOOF."""
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Conv2d(3, 3, 3, groups=3, padding=1)).double()  # noqa: E731
    m1, m2 = make(), make()
    m2.load_state_dict(m1.state_dict())
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    d1 = _step_delta(m1, NysAct(m1, rank=10, momentum=0.0, weight_decay=0.0), x)
    d2 = _step_delta(m2, FOOF(m2, momentum=0.0, weight_decay=0.0), x)
    for a, b in zip(d1, d2, strict=True):
        np.testing.assert_array_equal(a, b)
