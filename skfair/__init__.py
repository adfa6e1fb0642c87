"""skfair: scikit-learn compatible neural networks with guaranteed group-fairness constraints."""

from .constraints import (
    AffineConstraint,
    DemographicParity,
    DisparateImpact,
    EqualizedOdds,
    EqualOpportunity,
    ErrorRateParity,
    FalsePositiveRateParity,
    MeanResidual,
)
from .classifier import FairNeuralClassifier
from .layer import FairnessLayer
from .pipeline import partial_predict, partial_predict_proba
from .regressor import FairNeuralRegressor

__version__ = "0.1.0"

__all__ = [
    "AffineConstraint",
    "DemographicParity",
    "DisparateImpact",
    "EqualizedOdds",
    "EqualOpportunity",
    "ErrorRateParity",
    "FalsePositiveRateParity",
    "FairNeuralClassifier",
    "FairNeuralRegressor",
    "FairnessLayer",
    "MeanResidual",
    "__version__",
    "partial_predict",
    "partial_predict_proba",
]
