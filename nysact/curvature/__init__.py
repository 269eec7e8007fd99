"""Statistics captured by module hooks (knows nothing of optimizers).

* :mod:`~nysact.curvature.rows` — pure functions: layer inputs/output gradients → statistics;
* :mod:`~nysact.curvature.estimators` — what is kept per layer and side (EMA owners);
* :mod:`~nysact.curvature.capture` — the hooks and the single accumulation point;
* :mod:`~nysact.curvature.layers` — which layers are supported, their gradient matrices.
"""

from nysact.curvature.capture import Curvature, CurvatureCapture, LayerCurvature
from nysact.curvature.estimators import (
    Covariance,
    Estimator,
    EstimatorState,
    FullCovariance,
    Mean,
    MeanVector,
    Sketch,
    SketchedCovariance,
    Statistic,
)
from nysact.curvature.layers import (
    LayerSpec,
    find_layers,
    read_gradient_matrix,
    write_gradient_matrix,
)
from nysact.curvature.rows import ConvGeometry

__all__ = [
    "ConvGeometry",
    "Covariance",
    "Curvature",
    "CurvatureCapture",
    "Estimator",
    "EstimatorState",
    "FullCovariance",
    "LayerCurvature",
    "LayerSpec",
    "Mean",
    "MeanVector",
    "Sketch",
    "SketchedCovariance",
    "Statistic",
    "find_layers",
    "read_gradient_matrix",
    "write_gradient_matrix",
]
