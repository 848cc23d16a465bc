"""Warnings raised by skivcnf.

They subclass scikit-learn's ``ConvergenceWarning`` so that a filter a user already
has for scikit-learn's solvers also applies to ours.
"""

from sklearn.exceptions import ConvergenceWarning

__all__ = ["ConstraintWarning", "InversionWarning", "NumericalWarning", "UnreliableWeightsWarning"]


class InversionWarning(ConvergenceWarning):
    """A fixed-point inversion of the flow did not reach its tolerance for some rows.

    Examples
    --------
    >>> import warnings
    >>> import torch
    >>> from sklearn.exceptions import ConvergenceWarning
    >>> from skivcnf.exceptions import InversionWarning
    >>> from skivcnf.flows import ResidualFlow
    >>> issubclass(InversionWarning, ConvergenceWarning)
    True
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always", InversionWarning)
    ...     y = flow.inverse(x, max_iter=1)  # far too few iterations
    >>> caught[0].category.__name__
    'InversionWarning'
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", InversionWarning)  # silence it; invert() flags rows instead
    ...     y = flow.inverse(x, max_iter=1)
    >>> bool(flow.invert(x, max_iter=1).converged.any())
    False
    """


class ConstraintWarning(ConvergenceWarning):
    """No solver brought some rows' equality constraint under tolerance; they are flagged.

    Examples
    --------
    >>> import warnings
    >>> import torch
    >>> from sklearn.exceptions import ConvergenceWarning
    >>> from skivcnf.conditional import SolverOptions, solve_constraint
    >>> from skivcnf.exceptions import ConstraintWarning
    >>> from skivcnf.flows import ResidualFlow
    >>> issubclass(ConstraintWarning, ConvergenceWarning)
    True
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False]])
    >>> x_target = torch.tensor([[0.0, 0.3, 0.0]], dtype=torch.float64)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", ConstraintWarning)
    ...     solution = solve_constraint(flow, y, hidden, x_target, solver="newton",
    ...                                 options=SolverOptions(max_iter=1))
    >>> solution.converged.tolist()  # the row is flagged rather than raised
    [False]
    """


class NumericalWarning(RuntimeWarning):
    """A non-finite loss or gradient was met and handled (the step was skipped).

    Examples
    --------
    >>> import warnings
    >>> from sklearn.exceptions import ConvergenceWarning
    >>> from skivcnf.exceptions import NumericalWarning
    >>> issubclass(NumericalWarning, RuntimeWarning), issubclass(NumericalWarning, ConvergenceWarning)
    (True, False)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("ignore", NumericalWarning)
    ...     warnings.warn("1 training step was skipped", NumericalWarning)
    >>> len(caught)
    0
    """


class UnreliableWeightsWarning(NumericalWarning):
    """Some rows' importance weights stayed unreliable (Pareto ``k_hat`` above 0.7) after extra draws.

    Their imputations keep the Pareto-smoothed weights and so carry more Monte Carlo error
    (see :mod:`skivcnf.conditional.reliable`); the warning counts them, once per call.

    Examples
    --------
    >>> from skivcnf.exceptions import NumericalWarning, UnreliableWeightsWarning
    >>> issubclass(UnreliableWeightsWarning, NumericalWarning)
    True
    """
