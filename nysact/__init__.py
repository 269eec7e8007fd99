"""nysact: scalable gradient preconditioning — NysAct and its family from verified parts."""

from nysact._version import __version__

__all__ = ["__version__"]
