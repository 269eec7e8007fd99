"""Optimizers by name for the harness, with the NysAct paper's settings as defaults.

Names: ``sgd``, ``adam``, ``adamw`` (torch), ``nysact-s``, ``nysact-g``, ``foof``, ``kfac``,
``eva`` (nysact). Defaults per name are the paper's CIFAR Table VI values; any keyword given
overrides them. Unknown names or keywords are errors, never ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from nysact.optim import FOOF, KFAC, ComposedOptimizer, Eva, NysAct

__all__ = ["OPTIMIZERS", "PAPER_DEFAULTS", "build_optimizer"]

#: The paper's CIFAR settings (NysAct paper, Table VI).
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 5e-4},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05},
    "nysact-s": {
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "damping": 1.0,
        "rank": 10,
        "sketch": "subcolumn",
        "ema_decay": 0.95,
        "cov_every": 5,
        "inv_every": 50,
    },
    "nysact-g": {
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "damping": 1.0,
        "rank": 10,
        "sketch": "gaussian",
        "ema_decay": 0.95,
        "cov_every": 5,
        "inv_every": 50,
    },
    "foof": {
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "damping": 1.0,
        "ema_decay": 0.95,
        "cov_every": 5,
        "inv_every": 50,
    },
    "kfac": {
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "damping": 0.03,
        "ema_decay": 0.95,
        "cov_every": 5,
        "inv_every": 50,
    },
    "eva": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "damping": 0.03},
}

_Factory = Callable[..., torch.optim.Optimizer]


def _torch(cls: type[torch.optim.Optimizer]) -> _Factory:
    def make(model: nn.Module, params: Iterable[Any], **kw: Any) -> torch.optim.Optimizer:
        return cls(params, **kw)

    return make


def _nysact_like(cls: type[ComposedOptimizer]) -> _Factory:
    def make(model: nn.Module, params: Iterable[Any], **kw: Any) -> torch.optim.Optimizer:
        return cls(model, params, **kw)

    return make


OPTIMIZERS: dict[str, tuple[_Factory, type[torch.optim.Optimizer]]] = {
    "sgd": (_torch(torch.optim.SGD), torch.optim.SGD),
    "adam": (_torch(torch.optim.Adam), torch.optim.Adam),
    "adamw": (_torch(torch.optim.AdamW), torch.optim.AdamW),
    "nysact-s": (_nysact_like(NysAct), NysAct),
    "nysact-g": (_nysact_like(NysAct), NysAct),
    "foof": (_nysact_like(FOOF), FOOF),
    "kfac": (_nysact_like(KFAC), KFAC),
    "eva": (_nysact_like(Eva), Eva),
}


def _accepted(cls: type[torch.optim.Optimizer]) -> set[str]:
    return {
        n
        for n, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and n not in ("self", "params", "model")
    }


def build_optimizer(
    name: str,
    model: nn.Module,
    params: Iterable[Any] | None = None,
    **overrides: Any,
) -> torch.optim.Optimizer:
    """Build an optimizer by name with the paper's defaults, overridden by ``overrides``.

    Parameters
    ----------
    name : str
        One of :data:`OPTIMIZERS`.
    model : nn.Module
        The model (the nysact optimizers hook its layers).
    params : iterable, optional
        Parameters or param groups (default: ``model.parameters()``).
    **overrides
        Hyperparameters; a keyword the optimizer does not take is an error.

    Returns
    -------
    torch.optim.Optimizer
        The optimizer.

    Raises
    ------
    ValueError
        Unknown name, or a keyword the optimizer does not accept.
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer: {name!r}. Choose from {sorted(OPTIMIZERS)}.")
    factory, cls = OPTIMIZERS[key]
    kw = {**PAPER_DEFAULTS[key], **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(kw) - _accepted(cls))
    if unknown:
        raise ValueError(f"optimizer {name!r} does not take {unknown}")
    return factory(model, model.parameters() if params is None else params, **kw)
