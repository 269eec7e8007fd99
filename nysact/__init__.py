"""nysact: scalable gradient preconditioning — NysAct and its family from verified parts."""

from nysact._version import __version__
from nysact.optim import FOOF, KFAC, ComposedOptimizer, Eva, GradientPreconditioner, NysAct, compose

__all__ = [
    "FOOF",
    "KFAC",
    "ComposedOptimizer",
    "Eva",
    "GradientPreconditioner",
    "NysAct",
    "__version__",
    "compose",
]
