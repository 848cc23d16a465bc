"""The IVCNF conditional sampler: solvers, implicit gradients, the bound and the posteriors.

Torch only: it takes a flow, tensors and boolean masks (``True`` = hidden).
"""

from .linalg import GMRESResult, gmres, masked_block
from .solvers import SOLVERS, ConstraintSolution, SolverOptions, hidden_jacobian, solve_constraint

__all__ = [
    "SOLVERS",
    "ConstraintSolution",
    "GMRESResult",
    "SolverOptions",
    "gmres",
    "hidden_jacobian",
    "masked_block",
    "solve_constraint",
]
