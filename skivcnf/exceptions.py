"""Warnings raised by skivcnf.

They subclass scikit-learn's ``ConvergenceWarning`` so that a filter a user already
has for scikit-learn's solvers also applies to ours.
"""

from sklearn.exceptions import ConvergenceWarning

__all__ = ["ConstraintWarning", "InversionWarning", "NumericalWarning"]


class InversionWarning(ConvergenceWarning):
    """A fixed-point inversion of the flow did not reach its tolerance for some rows."""


class ConstraintWarning(ConvergenceWarning):
    """No solver brought some rows' equality constraint under tolerance; they are flagged."""


class NumericalWarning(RuntimeWarning):
    """A non-finite loss or gradient was met and handled (the step was skipped)."""
