"""The composer and the ready optimizers.

Build a new variant from parts with :func:`compose` (curvature estimator + sketch + solver +
update transforms), or use a ready one: :class:`NysAct`, :class:`FOOF`, :class:`KFAC`,
:class:`Eva`. :class:`GradientPreconditioner` puts the same parts in front of any
``torch.optim`` optimizer.
"""

from nysact.optim.composer import ComposedOptimizer, compose
from nysact.optim.optimizers import FOOF, KFAC, Eva, NysAct
from nysact.optim.preconditioner import GradientPreconditioner
from nysact.optim.solvers import (
    ActivationInverse,
    KroneckerEigen,
    KroneckerInverse,
    KroneckerRankOne,
    LayerOperator,
    Solver,
)
from nysact.optim.transforms import Transform, add_weight_decay, chain, trace_momentum

__all__ = [
    "FOOF",
    "KFAC",
    "ActivationInverse",
    "ComposedOptimizer",
    "Eva",
    "GradientPreconditioner",
    "KroneckerEigen",
    "KroneckerInverse",
    "KroneckerRankOne",
    "LayerOperator",
    "NysAct",
    "Solver",
    "Transform",
    "add_weight_decay",
    "chain",
    "compose",
    "trace_momentum",
]
