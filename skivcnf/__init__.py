"""skivcnf: conditional sampling and imputation with invertible residual flows (IVCNF)."""

from .imputer import IVCNFImputer

__version__ = "0.1.0.dev0"

__all__ = ["IVCNFImputer", "__version__"]
