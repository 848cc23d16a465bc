"""skivcnf: conditional sampling and imputation with invertible residual flows (IVCNF)."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
