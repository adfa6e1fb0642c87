"""skfair: scikit-learn compatible neural networks with guaranteed group-fairness constraints."""

from .constraints import (
    AffineConstraint,
    DemographicParity,
    EqualizedOdds,
    EqualOpportunity,
    MeanResidual,
)
from .layer import FairnessLayer

__version__ = "0.1.0"

__all__ = [
    "AffineConstraint",
    "DemographicParity",
    "EqualizedOdds",
    "EqualOpportunity",
    "FairnessLayer",
    "MeanResidual",
    "__version__",
]
