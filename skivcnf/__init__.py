"""skivcnf: conditional sampling and imputation with invertible residual flows (IVCNF)."""

from ._base import ImputationDraws
from .classifier import IVCNFClassifier
from .imputer import IVCNFImputer

__version__ = "0.1.0.dev0"

__all__ = ["IVCNFClassifier", "IVCNFImputer", "ImputationDraws", "__version__"]
