"""Building blocks shared by the solvers: shrinkage (proximal) operators, linear operators
with adjoints, and the spectral norm by power iteration."""

from engines.ops.operators import (
    Adjoint,
    BlurDownsample,
    Convolution2d,
    LinearOperator,
    MatrixOperator,
    as_operator,
)
from engines.ops.shrinkage import mixed_l12_shrinkage, soft_threshold, support_selection, svt
from engines.ops.spectral import spectral_norm

__all__ = [
    "Adjoint",
    "BlurDownsample",
    "Convolution2d",
    "LinearOperator",
    "MatrixOperator",
    "as_operator",
    "mixed_l12_shrinkage",
    "soft_threshold",
    "spectral_norm",
    "support_selection",
    "svt",
]
