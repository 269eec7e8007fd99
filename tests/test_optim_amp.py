"""AMP: GradScaler-unscaled gradient statistics, skipped steps drop statistics, bf16 → float32."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nysact import KFAC, NysAct


def _mlp(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _batch(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=g, dtype=dtype), torch.randint(0, 3, (32,), generator=g)


def _gradient_factor(opt: KFAC, layer: int) -> np.ndarray:
    st = opt.preconditioner.layers[layer].sides["gradient"].state_dict()
    return (st["ema"] / st["weight"])[0].numpy()  # group 0 of a Linear


def test_grad_scaler_statistics_are_unscaled() -> None:
    """KFAC's G factor from a scaled loss equals the float64 oracle of the unscaled gradients."""
    x, y = _batch()
    model = _mlp()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    opt = KFAC(model, grad_scaler=scaler, cov_every=1, inv_every=1)
    outs: list[torch.Tensor] = []
    h = model[2].register_forward_hook(lambda m, i, o: o.retain_grad() or outs.append(o))
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    h.remove()
    scaler.step(opt)
    scaler.update()
    # oracle: unscaled output gradient (the retained one is scaled by 2^12), rows times B
    go = outs[0].grad.numpy() / 2.0**12 * x.shape[0]
    want = go.T @ go / go.shape[0]
    np.testing.assert_allclose(_gradient_factor(opt, 1), want, rtol=1e-10, atol=1e-14)


def test_step_skipped_by_scaler_drops_its_statistics() -> None:
    """An inf gradient makes GradScaler skip step(); zero_grad() then drops the captured stats."""
    x, y = _batch()
    model = _mlp()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    opt = KFAC(model, grad_scaler=scaler, cov_every=1, inv_every=1)
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    before = _gradient_factor(opt, 1).copy()
    params = [p.detach().clone() for p in model.parameters()]
    # next iteration overflows: an inf in a gradient makes the scaler skip step()
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    model[0].weight.grad[0, 0] = float("inf")
    scaler.step(opt)  # skipped: found inf
    assert opt.preconditioner.capture.has_pending()  # captured, but step() never ran
    scaler.update()
    opt.zero_grad()  # drops the pending statistics of the skipped step
    assert not opt.preconditioner.capture.has_pending()
    np.testing.assert_array_equal(_gradient_factor(opt, 1), before)
    for p, q in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, q)


def test_bf16_autocast_keeps_float32_statistics() -> None:
    """Under CPU autocast(bf16) the sketch EMA is float32 and equals a float64 oracle."""
    model = _mlp(torch.float32)
    x, y = _batch(torch.float32)
    # "fixed" keeps Ω and the EMA after the refresh, so the state holds this step's sketch
    opt = NysAct(model, rank=2, cov_every=1, inv_every=1, sketch_schedule="fixed")
    seen: list[torch.Tensor] = []
    h = model[2].register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x), y)
    h.remove()
    loss.backward()
    opt.step()
    st = opt.preconditioner.layers[0].sides["activation"].state_dict()
    assert st["ema"].dtype == torch.float32
    # oracle: the hook sees the layer's float32 input (autocast casts inside the op); a bf16
    # matmul would be off by ~3e-3 here, float32 accumulation by ~1e-6. Y = XᵀXΩ/n in float64
    xb = x.double().numpy()
    xb = np.hstack([xb, np.ones((len(xb), 1))])
    omega = np.zeros((7, 2))
    omega[st["test_matrix"].numpy(), np.arange(2)] = 1.0
    want = xb.T @ (xb @ omega) / len(xb)
    got = (st["ema"] / st["weight"])[0].double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # float32 accumulation
    # the last layer's input is a bf16 activation: its statistic is float32 all the same
    assert seen[0].dtype == torch.bfloat16
    st2 = opt.preconditioner.layers[1].sides["activation"].state_dict()
    assert st2["ema"].dtype == torch.float32
    h2 = np.hstack([seen[0].double().numpy(), np.ones((len(xb), 1))])
    omega2 = np.zeros((9, 2))
    omega2[st2["test_matrix"].numpy(), np.arange(2)] = 1.0
    want2 = h2.T @ (h2 @ omega2) / len(h2)
    got2 = (st2["ema"] / st2["weight"])[0].double().numpy()
    np.testing.assert_allclose(got2, want2, rtol=1e-5, atol=1e-6)
