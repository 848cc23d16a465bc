"""What the constraint solvers take and return: the solver names, their options and their result.

See :mod:`.solvers` for the algorithms. Every setting that steers a solver is a field of
:class:`SolverOptions` with a documented default; every solver returns one
:class:`ConstraintSolution`, the same shape whatever the options.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = ["SOLVERS", "SolverOptions", "ConstraintSolution", "default_constraint_tolerance"]

#: Solver names, in the order of the codes stored in ``ConstraintSolution.method``.
SOLVERS = ("newton", "newton_krylov", "fixed_point")


def default_constraint_tolerance(dtype):
    """Default tolerance on ``max |g^H(y) - x^H|``: ``eps ** 0.6`` (4e-10 in float64, 7e-5 in float32).

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import default_constraint_tolerance
    >>> f"{default_constraint_tolerance(torch.float64):.1e}", f"{default_constraint_tolerance(torch.float32):.1e}"
    ('4.1e-10', '7.0e-05')
    """
    return torch.finfo(dtype).eps ** 0.6


@dataclass(frozen=True)
class SolverOptions:
    """Settings of the constraint solvers; every field has a measured or documented default.

    Parameters
    ----------
    tol : float, optional
        A row has converged when ``max |g^H(y) - x^H| <= tol``; ``None`` uses
        :func:`default_constraint_tolerance` of the dtype.
    max_iter : int, default=30
        Newton iterations at most (both Newton variants).
    max_backtracks : int, default=8
        Step halvings per Newton iteration before the step is taken anyway.
    backtrack_factor : float, default=0.5
        Factor of each step halving (the step length is multiplied by it), in ``(0, 1)``.
    krylov_restart : int, default=20
        Krylov vectors per GMRES cycle.
    krylov_max_restarts : int, default=10
        GMRES cycles per Newton step.
    max_forcing_term : float, default=0.1
        Newton-Krylov solves each step to the relative tolerance (forcing term)
        ``min(max_forcing_term, ||F||_2)`` of its row: loose while far from the solution,
        tightening as ``||F||`` shrinks so that convergence stays fast near it (inexact
        Newton, Eisenstat and Walker 1996). In ``(0, 1)``.
    armijo_constant : float, default=1e-4
        Sufficient decrease of the Newton line search: a step of length ``t`` is accepted
        when ``||F(y - t s)|| <= (1 - armijo_constant * t) ||F(y)||``; otherwise ``t`` is
        halved. ``1e-4`` is the customary value (Nocedal and Wright, ch. 3). In ``(0, 1)``.
    backward_krylov_restart : int, default=20
        Krylov vectors per GMRES cycle in the solves with ``(G^HH)^T`` made after the
        constraint is solved: the implicit gradients
        (:func:`~.implicit.attach_implicit_gradients` with ``method="gmres"``) and the
        stochastic bounds' probes (:func:`~.bound.bound_integrand` with ``logdet="clade"``
        or ``"nlade"``).
    backward_krylov_max_restarts : int, default=20
        GMRES cycles at most in those solves.
    preconditioner : {"inverse_jacobian", None}, default="inverse_jacobian"
        Right preconditioner of the Newton-Krylov solves: ``J^HH`` by a truncated
        Neumann series, or none. Measured on trained flows (``python -m benchmarks.run
        --section solvers``): at d = 64 it cuts GMRES products 1.8-2.6x and makes
        Newton-Krylov 1.6x faster;
        at d <= 30 it costs more than it saves. Newton-Krylov is the ``"auto"`` choice
        only above ``EXACT_LOGDET_MAX_FEATURES`` features, where it pays, hence on.
    preconditioner_terms : int, default=1
        Neumann terms per block in the preconditioner (1 was fastest in the same
        benchmark: more terms cut few GMRES iterations and cost more).
    alpha, beta : float, default=0.5
        Mixing rates of Algorithm 2, in ``(0, 1]``.
    decay : float, default=1.0
        Factor applied to ``alpha`` and ``beta`` after every iteration of Algorithm 2.
        The paper's schedule is 0.95; it makes the steps sum to about ``20 * alpha`` and
        stalls far from the tolerance, hence the default of no decay.
    fixed_point_max_iter : int, default=300
        Iterations of Algorithm 2 at most.
    divergence_factor : float, default=1e3
        Algorithm 2 gives up on a row whose residual grows past this multiple of its
        initial residual (the divergence guard).
    inverse_max_iter : int, default=1000
        Iteration cap of each block's fixed-point inversion inside Algorithm 2.
    chord_max_iter : int, default=16
        Chord iterations at most of :func:`~.warm_starts.chord_start`, the warm start of the
        draws of one row: they share one hidden block of the row (one Jacobian and one LU
        factorisation per row, not per draw), so each iteration costs a forward pass. With
        ``CHORD_CENTRE_MIN_DRAWS`` draws or more (and at least ``CHORD_MIN_DRAWS``) the block
        is formed at the completion of the draws' mean, which takes as many iterations at
        most first (for one draw per row). Below ``CHORD_MIN_DRAWS`` draws per row
        (training's 2) there is no chord start: Newton alone was faster there. 0 turns the
        warm start off. Measured in docs/benchmarks.md.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.conditional import SolverOptions, default_constraint_tolerance
    >>> options = SolverOptions(tol=1e-8, max_iter=50)
    >>> options.tolerance(torch.float64), options.max_iter
    (1e-08, 50)
    >>> SolverOptions().tolerance(torch.float32) == default_constraint_tolerance(torch.float32)
    True
    >>> SolverOptions(alpha=2.0)
    Traceback (most recent call last):
        ...
    ValueError: alpha must lie in (0, 1], got 2.0.
    """

    tol: float | None = None
    max_iter: int = 30
    max_backtracks: int = 8
    backtrack_factor: float = 0.5
    krylov_restart: int = 20
    krylov_max_restarts: int = 10
    max_forcing_term: float = 0.1
    armijo_constant: float = 1e-4
    backward_krylov_restart: int = 20
    backward_krylov_max_restarts: int = 20
    preconditioner: str | None = "inverse_jacobian"
    preconditioner_terms: int = 1
    alpha: float = 0.5
    beta: float = 0.5
    decay: float = 1.0
    fixed_point_max_iter: int = 300
    divergence_factor: float = 1e3
    inverse_max_iter: int = 1000
    chord_max_iter: int = 16

    def __post_init__(self):
        if self.preconditioner not in ("inverse_jacobian", None):
            raise ValueError(f"preconditioner must be 'inverse_jacobian' or None, got {self.preconditioner!r}.")
        for name in ("alpha", "beta", "decay"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must lie in (0, 1], got {value!r}.")
        for name in ("max_forcing_term", "armijo_constant", "backtrack_factor"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name} must lie in (0, 1), got {value!r}.")
        for name in ("max_iter", "krylov_restart", "krylov_max_restarts", "backward_krylov_restart",
                     "backward_krylov_max_restarts", "fixed_point_max_iter", "inverse_max_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if self.chord_max_iter < 0:
            raise ValueError(f"chord_max_iter must be non-negative, got {self.chord_max_iter!r}.")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol must be positive, got {self.tol!r}.")

    def tolerance(self, dtype):
        """The tolerance in force for ``dtype``."""
        return self.tol if self.tol is not None else default_constraint_tolerance(dtype)


class ConstraintSolution(NamedTuple):
    """Result of solving the equality constraint for a batch of rows.

    Attributes
    ----------
    solution : Tensor (batch, d)
        Completed rows; observed entries are the input's, bit for bit.
    latent : Tensor (batch, d)
        ``g(solution)``; equals ``x^H`` on hidden entries to tolerance.
    converged : BoolTensor (batch,)
    n_iter : LongTensor (batch,)
        Iterations of the solver that finished the row (summed over the chain).
    residual : Tensor (batch,)
        ``max |g^H(y) - x^H|`` at the solution (0 for rows with nothing hidden).
    method : LongTensor (batch,)
        Index into :data:`SOLVERS` of the solver that finished the row.

    Examples
    --------
    >>> import torch
    >>> from skivcnf.flows import ResidualFlow
    >>> flow = ResidualFlow(3, n_blocks=1, hidden_features=(8,), generator=torch.Generator().manual_seed(0)).double()
    >>> y = torch.tensor([[0.5, 0.0, -1.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    >>> hidden = torch.tensor([[False, True, False], [False, False, True]])
    >>> from skivcnf.conditional import SOLVERS, solve_constraint
    >>> x_target = torch.tensor([[0.0, 0.3, 0.0], [0.0, 0.0, -0.2]], dtype=torch.float64)
    >>> solution = solve_constraint(flow, y, hidden, x_target)
    >>> solution.converged.tolist(), [SOLVERS[i] for i in solution.method.tolist()]
    ([True, True], ['newton', 'newton'])
    >>> torch.allclose(solution.latent[hidden], x_target[hidden]), bool((solution.residual < 1e-9).all())
    (True, True)
    """

    solution: torch.Tensor
    latent: torch.Tensor
    converged: torch.Tensor
    n_iter: torch.Tensor
    residual: torch.Tensor
    method: torch.Tensor
